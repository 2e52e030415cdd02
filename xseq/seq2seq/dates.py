"""Human-readable dates and their ISO form: the course's date-translation data, made with the standard library.

The Neural Machine Translation assignment translates dates as people write them
("tuesday 3 may 1979", "5/3/79", "March 5, 1979") into the machine-readable
form ("1979-05-03"). Its ``nmt_utils.load_dataset`` draws dates with Faker and
writes them with Babel; this module draws them with :mod:`random` and writes
them from its own table of English names, so that it needs no download and no
locale::

    >>> from xseq.seq2seq.dates import date_pairs
    >>> date_pairs(3, seed=0)
    [('FRI, FEB 15, 2019', '2019-02-15'), ('JUNE 18, 2025', '2025-06-18'), ('sunday, april 7, 1957', '1957-04-07')]

A source is a date written in one of :data:`FORMATS` (the course's list and a
few more: day names, short and long month names, numbers with slashes, dots or
spaces) in one of :data:`CASES`. Every source denotes one date whatever format
wrote it: numbers with slashes are month first (US), with dots or spaces day
first, and a two-digit year is the only year of the range ending in those
digits. So the formats that write a two-digit year are used only for a range
of at most 100 calendar years (the default, 1950 to 2049, is exactly 100).
The target is ``date.isoformat()``; no source is written in that form.

Held-out evaluation: :func:`date_split` draws disjoint sets of calendar dates
for training and testing, so that no test date appears in training in any
format; :func:`pairs_for_dates` writes each date of a set once.
"""

from __future__ import annotations

import datetime
import numbers
import random
import re

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
"""English month names, January first."""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
"""English day names in the order of ``datetime.date.weekday()`` (Monday is 0)."""

FORMATS = (
    # the course's (nmt_utils.FORMATS, Babel's en_US patterns; "short", "medium", "long", "full" spelled out)
    "M/d/yy",
    "MMM d, yyyy",
    "MMMM d, yyyy",
    "EEEE, MMMM d, yyyy",
    "d MMM yyyy",
    "d MMMM yyyy",
    "dd MMM yyyy",
    "d MMM, yyyy",
    "d MMMM, yyyy",
    "dd, MMM yyyy",
    "d MM yy",
    "MMMM d yyyy",
    "dd.MM.yy",
    # more of the same kinds
    "MM/dd/yy",
    "M/d/yyyy",
    "dd.MM.yyyy",
    "MMM d yyyy",
    "EEEE d MMMM yyyy",
    "EEEE, MMMM d yyyy",
    "EEE d MMM yyyy",
    "EEE, MMM d, yyyy",
)
"""The patterns that write a source, in Unicode's (CLDR) letters: ``d``/``dd`` the day (``dd`` zero-padded),
``M``/``MM`` the month's number, ``MMM``/``MMMM`` its short/full name, ``EEE``/``EEEE`` the day's short/full
name, ``yy``/``yyyy`` the year's last two digits / all four. Everything else is written as it stands."""

CASES = ("lower", "title", "upper")
"""How a source's letters are written: "tuesday 3 may 1979" (the course's, which lowercases every date),
"Tuesday 3 May 1979" (names capitalised, as the patterns write them), "TUESDAY 3 MAY 1979"."""

DEFAULT_START = datetime.date(1950, 1, 1)
"""The first date drawn by default."""

DEFAULT_END = datetime.date(2049, 12, 31)
"""The last date drawn by default: with :data:`DEFAULT_START`, 100 calendar years, so every two-digit year
denotes one year."""

_FIELD = re.compile(r"EEEE|EEE|MMMM|MMM|MM|M|dd|d|yyyy|yy")


def format_date(day, pattern, case="title"):
    """Write ``day`` in ``pattern`` (one of :data:`FORMATS`, or any pattern in their letters).

    Parameters
    ----------
    day : datetime.date
    pattern : str
        e.g. ``"EEEE d MMMM yyyy"``.
    case : {"lower", "title", "upper"}, default "title"
        See :data:`CASES`.

    Returns
    -------
    str
        e.g. ``format_date(datetime.date(1979, 5, 3), "EEEE d MMMM yyyy", "lower") == "thursday 3 may 1979"``.
    """
    _check_date("day", day)
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str such as {FORMATS[0]!r}; got {type(pattern).__name__}")
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}; got {case!r}")
    fields = {
        "d": str(day.day), "dd": f"{day.day:02d}",
        "M": str(day.month), "MM": f"{day.month:02d}",
        "MMM": MONTHS[day.month - 1][:3], "MMMM": MONTHS[day.month - 1],
        "EEE": WEEKDAYS[day.weekday()][:3], "EEEE": WEEKDAYS[day.weekday()],
        "yy": f"{day.year % 100:02d}", "yyyy": f"{day.year:04d}",
    }
    text = _FIELD.sub(lambda match: fields[match.group()], pattern)
    return {"lower": text.lower(), "title": text, "upper": text.upper()}[case]


def formats_for(start=DEFAULT_START, end=DEFAULT_END):
    """The patterns of :data:`FORMATS` that write an unambiguous source for every date from ``start`` to ``end``.

    All of them when the range spans at most 100 calendar years; otherwise those without a two-digit year.
    """
    _check_range(start, end)
    if end.year - start.year < 100:
        return FORMATS
    return tuple(f for f in FORMATS if "yyyy" in f or "yy" not in f)


def pairs_for_dates(dates, *, seed, start=DEFAULT_START, end=DEFAULT_END):
    """Write each of ``dates`` once, in a format and a case drawn at random: ``(source, target)`` pairs.

    Parameters
    ----------
    dates : sequence of datetime.date
        Each between ``start`` and ``end``, e.g. one of the sets of :func:`date_split`.
    seed : int
        The draws come from ``random.Random(seed)``: the same seed, the same pairs.
    start, end : datetime.date
        The range the dates come from; it decides whether two-digit years may be written (:func:`formats_for`).

    Returns
    -------
    list of (str, str)
        ``(source, target)`` in the order of ``dates``; ``target`` is ``date.isoformat()``.
    """
    _check_seed(seed)
    formats = formats_for(start, end)
    if isinstance(dates, (str, bytes)) or not hasattr(dates, "__iter__"):
        raise TypeError(f"dates must be a sequence of datetime.date; got {type(dates).__name__}")
    dates = list(dates)
    for i, day in enumerate(dates):
        _check_date(f"dates[{i}]", day)
        if not start <= day <= end:
            raise ValueError(f"dates[{i}] = {day.isoformat()} is outside start..end = {start.isoformat()}.."
                             f"{end.isoformat()}")
    rng = random.Random(int(seed))
    return [(format_date(day, rng.choice(formats), rng.choice(CASES)), day.isoformat()) for day in dates]


def date_pairs(n, *, seed, start=DEFAULT_START, end=DEFAULT_END):
    """``n`` random dates from ``start`` to ``end`` (uniform, repeats possible), written as ``(source, target)``.

    Parameters
    ----------
    n : int
        Number of pairs, ``n >= 0``.
    seed : int
        The draws come from ``random.Random(seed)``: the same seed, the same pairs.
    start, end : datetime.date, default 1950-01-01 and 2049-12-31
        The first and last date that may be drawn.

    Returns
    -------
    list of (str, str)
        e.g. ``("tuesday 3 may 1983", "1983-05-03")``.
    """
    _check_count("n", n)
    _check_seed(seed)
    _check_range(start, end)
    rng = random.Random(int(seed))
    days = (end - start).days + 1
    dates = [start + datetime.timedelta(days=rng.randrange(days)) for _ in range(n)]
    return pairs_for_dates(dates, seed=rng.randrange(2**63), start=start, end=end)


def date_split(n_train, n_test, *, seed, start=DEFAULT_START, end=DEFAULT_END):
    """Two disjoint sets of distinct calendar dates, for training and for a held-out test.

    A test date never appears among the training dates, so no format of it is
    seen in training. Write each set with :func:`pairs_for_dates`.

    Parameters
    ----------
    n_train, n_test : int
        Sizes of the two sets, ``>= 0``, together at most the number of days from ``start`` to ``end``.
    seed : int
        The draw comes from ``random.Random(seed)``.
    start, end : datetime.date, default 1950-01-01 and 2049-12-31

    Returns
    -------
    train, test : list of datetime.date
        Distinct dates in random order; no date is in both.
    """
    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    _check_seed(seed)
    _check_range(start, end)
    days = (end - start).days + 1
    if n_train + n_test > days:
        raise ValueError(f"n_train + n_test = {n_train} + {n_test} = {n_train + n_test} distinct dates do not fit in "
                         f"the {days} days from {start.isoformat()} to {end.isoformat()}")
    offsets = random.Random(int(seed)).sample(range(days), n_train + n_test)
    dates = [start + datetime.timedelta(days=k) for k in offsets]
    return dates[:n_train], dates[n_train:]


def _check_date(name, value):
    # datetime.datetime is a date too; its time of day would be dropped silently
    if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
        raise TypeError(f"{name} must be a datetime.date; got {type(value).__name__} {value!r}")


def _check_range(start, end):
    _check_date("start", start)
    _check_date("end", end)
    if start > end:
        raise ValueError(f"start must not be after end; got start={start.isoformat()}, end={end.isoformat()}")


def _check_count(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")


def _check_seed(seed):
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer; got {type(seed).__name__} {seed!r}")
