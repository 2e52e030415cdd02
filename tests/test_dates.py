"""xseq.seq2seq.dates: human-readable dates and their ISO form, reproducible, unambiguous, with held-out dates.

The sources are read back with this file's own table of ``strptime`` patterns (C locale, English names),
independent of the module's name tables: every source must denote exactly its target under every pattern
that reads it.
"""

import calendar
import datetime
import re

import pytest

from xseq.seq2seq.dates import (
    CASES,
    DEFAULT_END,
    DEFAULT_START,
    FORMATS,
    date_pairs,
    date_split,
    format_date,
    formats_for,
    pairs_for_dates,
)

#: Each of the module's patterns as ``strptime``/``strftime`` reads it (which pads ``%d``/``%m``; padding is
#: checked by test_every_format_writes_what_its_letters_say).
STRPTIME = {
    "M/d/yy": "%m/%d/%y",
    "MMM d, yyyy": "%b %d, %Y",
    "MMMM d, yyyy": "%B %d, %Y",
    "EEEE, MMMM d, yyyy": "%A, %B %d, %Y",
    "d MMM yyyy": "%d %b %Y",
    "d MMMM yyyy": "%d %B %Y",
    "dd MMM yyyy": "%d %b %Y",
    "d MMM, yyyy": "%d %b, %Y",
    "d MMMM, yyyy": "%d %B, %Y",
    "dd, MMM yyyy": "%d, %b %Y",
    "d MM yy": "%d %m %y",
    "MMMM d yyyy": "%B %d %Y",
    "dd.MM.yy": "%d.%m.%y",
    "MM/dd/yy": "%m/%d/%y",
    "M/d/yyyy": "%m/%d/%Y",
    "dd.MM.yyyy": "%d.%m.%Y",
    "MMM d yyyy": "%b %d %Y",
    "EEEE d MMMM yyyy": "%A %d %B %Y",
    "EEEE, MMMM d yyyy": "%A, %B %d %Y",
    "EEE d MMM yyyy": "%a %d %b %Y",
    "EEE, MMM d, yyyy": "%a, %b %d, %Y",
}

#: Monday 5 March 1979 (day and month below 10, so padding shows) in every pattern, written by hand.
MONDAY_5_MARCH_1979 = {
    "M/d/yy": "3/5/79",
    "MMM d, yyyy": "Mar 5, 1979",
    "MMMM d, yyyy": "March 5, 1979",
    "EEEE, MMMM d, yyyy": "Monday, March 5, 1979",
    "d MMM yyyy": "5 Mar 1979",
    "d MMMM yyyy": "5 March 1979",
    "dd MMM yyyy": "05 Mar 1979",
    "d MMM, yyyy": "5 Mar, 1979",
    "d MMMM, yyyy": "5 March, 1979",
    "dd, MMM yyyy": "05, Mar 1979",
    "d MM yy": "5 03 79",
    "MMMM d yyyy": "March 5 1979",
    "dd.MM.yy": "05.03.79",
    "MM/dd/yy": "03/05/79",
    "M/d/yyyy": "3/5/1979",
    "dd.MM.yyyy": "05.03.1979",
    "MMM d yyyy": "Mar 5 1979",
    "EEEE d MMMM yyyy": "Monday 5 March 1979",
    "EEEE, MMMM d yyyy": "Monday, March 5 1979",
    "EEE d MMM yyyy": "Mon 5 Mar 1979",
    "EEE, MMM d, yyyy": "Mon, Mar 5, 1979",
}

ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def unpadded(text):
    """Leading zeros of every number dropped and letters lowered: what strftime's padding and case cannot change."""
    return re.sub(r"\b0+(\d)", r"\1", text).lower()


def dates_read(source, start=DEFAULT_START, end=DEFAULT_END):
    """Every date that some pattern of STRPTIME reads in ``source`` and writes back the same (day names included).

    A two-digit year is taken as the one year from start to end that ends in those digits.
    """
    found = set()
    for pattern in STRPTIME.values():
        try:
            day = datetime.datetime.strptime(source, pattern).date()
        except ValueError:
            continue
        if "%y" in pattern:
            years = [y for y in range(start.year, end.year + 1) if y % 100 == day.year % 100]
            assert len(years) == 1, f"{source!r}: a two-digit year in a range of more than 100 years"
            day = day.replace(year=years[0])
        if unpadded(day.strftime(pattern)) == unpadded(source):  # strptime ignores a wrong day name; this does not
            found.add(day)
    return found


def test_the_reading_table_covers_every_format():
    assert set(STRPTIME) == set(FORMATS) == set(MONDAY_5_MARCH_1979)
    assert len(FORMATS) == len(set(FORMATS))
    assert calendar.day_name[0] == "Monday" and calendar.month_abbr[9] == "Sep", "the tests read English names"


def test_every_format_writes_what_its_letters_say():
    day = datetime.date(1979, 3, 5)
    for pattern, expected in MONDAY_5_MARCH_1979.items():
        assert format_date(day, pattern) == expected
        assert format_date(day, pattern, "lower") == expected.lower()
        assert format_date(day, pattern, "upper") == expected.upper()
    assert format_date(datetime.date(2014, 12, 25), "EEEE, dd.MM.yyyy") == "Thursday, 25.12.2014"
    assert format_date(datetime.date(2000, 2, 29), "EEE d MMM yy") == "Tue 29 Feb 00"


@pytest.mark.parametrize("start, end", [(DEFAULT_START, DEFAULT_END),
                                        (datetime.date(1970, 1, 1), datetime.date(2020, 12, 31)),
                                        (datetime.date(1800, 1, 1), datetime.date(2199, 12, 31))],
                         ids=["default", "course-like", "four-centuries"])
def test_every_source_denotes_its_target_and_no_other_date(start, end):
    pairs = date_pairs(3000, seed=1, start=start, end=end)
    assert len(pairs) == 3000
    for source, target in pairs:
        assert ISO.fullmatch(target), target
        day = datetime.date.fromisoformat(target)
        assert start <= day <= end
        assert dates_read(source, start, end) == {day}, (source, target)
        assert not ISO.search(source) and target not in source  # the source is never the ISO form


def test_a_range_over_100_years_writes_no_two_digit_year():
    start, end = datetime.date(1900, 1, 1), datetime.date(2000, 12, 31)  # 101 calendar years: "00" is ambiguous
    kept = formats_for(start, end)
    two_digit = {f for f in FORMATS if "yy" in f.replace("yyyy", "")}
    assert two_digit and set(kept) == set(FORMATS) - two_digit
    assert formats_for(DEFAULT_START, DEFAULT_END) == FORMATS
    for source, target in date_pairs(2000, seed=2, start=start, end=end):
        assert re.search(r"\d{4}", source), source


def test_formats_and_cases_are_all_used():
    pairs = date_pairs(3000, seed=3)
    used_formats, used_cases = set(), set()
    for source, target in pairs:
        day = datetime.date.fromisoformat(target)
        written = {(f, c) for f in FORMATS for c in CASES if format_date(day, f, c) == source}
        assert written, source
        used_formats |= {f for f, _ in written}
        if any(ch.isalpha() for ch in source):
            used_cases.add("lower" if source == source.lower() else "upper" if source == source.upper() else "title")
    assert used_formats == set(FORMATS)
    assert used_cases == set(CASES)
    # the targets spread over the range: every month, and many years
    days = [datetime.date.fromisoformat(t) for _, t in pairs]
    assert {d.month for d in days} == set(range(1, 13)) and len({d.year for d in days}) > 90


def test_the_same_seed_gives_the_same_pairs():
    assert date_pairs(200, seed=5) == date_pairs(200, seed=5)
    assert date_pairs(200, seed=5) != date_pairs(200, seed=6)
    assert date_split(50, 20, seed=5) == date_split(50, 20, seed=5)
    assert date_split(50, 20, seed=5) != date_split(50, 20, seed=6)
    dates = date_split(50, 0, seed=1)[0]
    assert pairs_for_dates(dates, seed=2) == pairs_for_dates(dates, seed=2)
    assert pairs_for_dates(dates, seed=2) != pairs_for_dates(dates, seed=3)
    assert date_pairs(0, seed=0) == [] and date_split(0, 0, seed=0) == ([], [])


def test_held_out_dates_never_appear_in_training():
    train, test = date_split(10_000, 1_000, seed=7)
    assert len(train) == 10_000 and len(test) == 1_000
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert all(DEFAULT_START <= d <= DEFAULT_END for d in train + test)
    train_pairs, test_pairs = pairs_for_dates(train, seed=8), pairs_for_dates(test, seed=9)
    assert [t for _, t in train_pairs] == [d.isoformat() for d in train]  # each date once, in order
    assert [t for _, t in test_pairs] == [d.isoformat() for d in test]
    assert not {t for _, t in train_pairs} & {t for _, t in test_pairs}
    # a narrow range can be used up exactly
    start, end = datetime.date(2020, 2, 1), datetime.date(2020, 3, 1)  # 30 days, leap year
    train, test = date_split(20, 10, seed=0, start=start, end=end)
    assert sorted(train + test) == [start + datetime.timedelta(days=k) for k in range(30)]


@pytest.mark.parametrize("call, exception, pattern", [
    (lambda: date_pairs(-1, seed=0), ValueError, "n must be a non-negative integer; got -1"),
    (lambda: date_pairs(2.5, seed=0), ValueError, "n must be a non-negative integer; got 2.5"),
    (lambda: date_pairs(True, seed=0), ValueError, "n must be a non-negative integer; got True"),
    (lambda: date_pairs(3, seed="a"), TypeError, "seed must be an integer; got str 'a'"),
    (lambda: date_pairs(3, seed=None), TypeError, "seed must be an integer; got NoneType"),
    (lambda: date_pairs(3, seed=1.5), TypeError, "seed must be an integer; got float"),
    (lambda: date_pairs(3), TypeError, "seed"),
    (lambda: date_pairs(3, seed=0, start=datetime.date(2000, 1, 2), end=datetime.date(2000, 1, 1)), ValueError,
     "start must not be after end; got start=2000-01-02, end=2000-01-01"),
    (lambda: date_pairs(3, seed=0, start="1950-01-01"), TypeError, "start must be a datetime.date; got str"),
    (lambda: date_pairs(3, seed=0, end=datetime.datetime(2000, 1, 1, 12)), TypeError,
     "end must be a datetime.date; got datetime"),
    (lambda: date_split(20, 11, seed=0, start=datetime.date(2020, 2, 1), end=datetime.date(2020, 3, 1)), ValueError,
     r"n_train \+ n_test = 20 \+ 11 = 31 distinct dates do not fit in the 30 days"),
    (lambda: date_split(-3, 1, seed=0), ValueError, "n_train must be a non-negative integer; got -3"),
    (lambda: date_split(3, "1", seed=0), ValueError, "n_test must be a non-negative integer; got '1'"),
    (lambda: pairs_for_dates([datetime.date(1949, 12, 31)], seed=0), ValueError,
     r"dates\[0\] = 1949-12-31 is outside start..end = 1950-01-01..2049-12-31"),
    (lambda: pairs_for_dates([DEFAULT_START, "2000-01-01"], seed=0), TypeError,
     r"dates\[1\] must be a datetime.date; got str"),
    (lambda: pairs_for_dates("2000-01-01", seed=0), TypeError, "dates must be a sequence of datetime.date; got str"),
    (lambda: format_date(DEFAULT_START, "d MMM yyyy", case="Upper"), ValueError, "case must be one of"),
    (lambda: format_date(DEFAULT_START, 3), TypeError, "pattern must be a str"),
    (lambda: format_date("1950-01-01", "d MMM yyyy"), TypeError, "day must be a datetime.date; got str"),
])
def test_bad_arguments_are_refused(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()
