"""A griffe extension for the API reference: Sphinx roles in the docstrings shown as code.

xseq's docstrings cross-reference with Sphinx roles (``:class:`RNN```, ``:func:`~xseq.nn.optim.clip_by_value```),
which mkdocstrings does not read: they would show as ``:class:RNN``. This turns each into a code span
of its target, the way Sphinx prints it: ``~`` keeps the last component, ``!`` is dropped. The names
themselves are checked by tests/test_docs_names.py. Loaded by mkdocs.yml (``extensions:``); not a page.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`([^`]+)`")


def _code(match: re.Match) -> str:
    target = match.group(1).lstrip("!")
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite the roles of every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
