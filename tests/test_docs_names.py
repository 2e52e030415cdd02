"""Every name the documentation gives resolves: docstrings, comments, messages, README.md and docs/**/*.md.

The package was reorganised once (issue 12: ``xseq/_kernels.py`` and the other flat modules became the
layers ``xseq.backends`` ... ``xseq.lm``) and the text kept naming modules that no longer existed. These
tests read the text and resolve every name in it:

* dotted ``xseq.`` names (``xseq.lm.train.Trainer.resume``): the longest importable module prefix is
  imported and the rest looked up with ``getattr``; an attribute of a class also counts when the class's
  own code assigns it as ``self.<name>`` (instance attributes) or declares it as a field;
* repository paths (``xseq/lm/cli.py``, ``tests/test_cli.py``, ``xseq/distributed/``, globs such as
  ``tests/test_*.py``): they must exist in the checkout;
* the flat modules that are gone (``_kernels``, ``_host_kernels``, ``_pointwise``, ...): named anywhere,
  alone or dotted, they are stale;
* Sphinx roles in docstrings (``:func:`share```, ``:class:`~xseq.ops.fused.DirectSteps```): a target
  without the package prefix is looked up the way Sphinx does, in the enclosing classes, then the module,
  then as builtins or an importable module (``numpy.savez``).

Where the names are read: in the package, every string literal (docstrings, the C++ kernel sources'
comments, error messages), every comment, and the whole text of the host build's C++ files
(``xseq/ops/native/``); outside it, README.md, benchmarks/README.md and every docs/**/*.md that exists
when the tests run.

Exclusions (kept tiny; each has its reason):

* ``"xseq.checkpoint"`` in quotes, or as a whole string: the checkpoint file format's tag (``FORMAT``
  in ``xseq/lm/checkpoint.py``, written into every checkpoint), not a module;
* URLs in the Markdown files (``https://...``): a host name such as a documentation site is not a name
  in the package.

The optional libraries (CuPy, PyTorch, mpi4py, matplotlib) are imported only inside functions, so every
module imports without them (tests/test_architecture.py holds that); a name whose module does need one at
import is skipped, with the reason.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import inspect
import io
import re
import textwrap
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "xseq"

#: Libraries the package may use but must not need at import.
OPTIONAL = {"cupy", "cupyx", "torch", "mpi4py", "matplotlib"}

#: Text removed before names are looked for; see the module docstring.
EXCLUDED = [re.compile(r'(?<=")xseq\.checkpoint(?=")|^xseq\.checkpoint$')]
MARKDOWN_EXCLUDED = [re.compile(r"https?://[^\s)>\]]+")]

DOTTED = re.compile(r"(?<![\w.])xseq(?:\.[A-Za-z_]\w*)+")
#: A path has a file name with an extension, several folders, or a final slash: ``xseq/torch`` (a ratio,
#: "xseq's time over PyTorch's", in the benchmark notes) is not one.
PATH = re.compile(r"(?<![\w/.~$-])(?:xseq|tests|benchmarks|scripts|examples)/[\w.*/-]*")
PATH_SHAPE = re.compile(r"\.\w+$|/.*/|/$")
#: The flat modules of the layout before issue 12, and where their contents went.
OLD_MODULES = {
    "_backend": "xseq.backends.arrays",
    "_validate": "xseq.backends.checks",
    "_engine": "xseq.engine.sequence",
    "_kernels": "xseq.ops.kernel_source / fused / cuda / switches",
    "_host_kernels": "xseq.ops.host",
    "_numpy_ops": "xseq.ops.numpy_inplace",
    "_pointwise": "xseq.ops.pointwise / reference / select / switches",
    "_workspace": "xseq.ops.workspace",
    "_resources": "xseq.lm.resources",
}
OLD = re.compile(r"(?<![\w.])(?:xseq[./])?(" + "|".join(OLD_MODULES) + r")(?:\.py)?\b")
ROLE = re.compile(r":(?:py:)?(mod|func|class|meth|attr|data|obj|exc|const):`([^`]+)`")


class Unresolved(Exception):
    """A name that does not resolve; the message says which part failed."""


class NeedsOptional(Exception):
    """A name whose module imports an optional library at import time."""


# ------------------------------------------------------------------------------------- resolving


def _import(name):
    """The module ``name``, or None when there is no such module (not a missing dependency of it)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if name == missing or name.startswith(missing + "."):
            return None
        if missing.split(".")[0] in OPTIONAL:
            raise NeedsOptional(f"{name} imports {missing} at import time") from e
        raise


@functools.lru_cache(maxsize=None)
def _instance_attributes(cls):
    """Names the class's own code (or a base's in the package) assigns as ``self.<name>``, or declares."""
    names = set()
    for klass in inspect.getmro(cls):
        if not getattr(klass, "__module__", "").startswith("xseq"):
            continue
        names.update(getattr(klass, "__dataclass_fields__", {}))
        names.update(getattr(klass, "__annotations__", {}))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return names


def _lookup(obj, parts):
    """``obj.parts[0].parts[1]...``; raises Unresolved naming the first part that is missing."""
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if inspect.isclass(obj) and i == len(parts) - 1 and part in _instance_attributes(obj):
                return None
            raise Unresolved(f"no {part!r} in {getattr(obj, '__name__', obj)!r}") from None
    return obj


def resolve(name):
    """The object ``name`` (``a.b.c``) names: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = _import(".".join(parts[:i]))
        if module is not None:
            return _lookup(module, parts[i:])
    raise Unresolved(f"no module {parts[0]!r}")


def resolve_role(target, module, classes):
    """A Sphinx role's target, relative to ``module`` and its enclosing ``classes`` (outermost first)."""
    target = re.sub(r"^.*<(.*)>$", r"\1", target.strip()).lstrip("~.")
    parts = target.split(".")
    if parts[0] == "xseq":
        return resolve(target)
    scopes = [module]
    for name in classes:
        scopes.insert(0, getattr(scopes[0], name))
    for scope in [*scopes, builtins]:
        try:
            return _lookup(scope, parts)
        except Unresolved:
            pass
    if parts[0] in OPTIONAL and _import(parts[0]) is None:
        raise NeedsOptional(f"{target}: {parts[0]} is not installed")
    try:
        return resolve(target)
    except Unresolved:
        where = ".".join([module.__name__, *classes])
        raise Unresolved(f"not in {where}, its module, builtins or an importable module") from None


# ------------------------------------------------------------------------------------- reading


def problems_in(text, *, markdown=False):
    """``(offset, message)`` for every name in ``text`` that does not resolve (roles excluded)."""
    for pattern in EXCLUDED + (MARKDOWN_EXCLUDED if markdown else []):
        text = pattern.sub(lambda m: " " * len(m.group()), text)
    found = []
    for m in DOTTED.finditer(text):
        try:
            resolve(m.group())
        except Unresolved as e:
            found.append((m.start(), f"{m.group()} ({e})"))
    for m in PATH.finditer(text):
        path = m.group().rstrip(".")
        if not PATH_SHAPE.search(path):
            continue
        exists = any(ROOT.glob(path.rstrip("/"))) if "*" in path else (ROOT / path).exists()
        if not exists:
            found.append((m.start(), f"{path} (no such path in the repository)"))
    for m in OLD.finditer(text):
        found.append((m.start(), f"{m.group()} (a module gone since issue 12; now {OLD_MODULES[m.group(1)]})"))
    return found


def role_problems_in(text, module, classes):
    """``(offset, message)`` for every Sphinx role target in a docstring that does not resolve."""
    found = []
    for m in ROLE.finditer(text):
        try:
            resolve_role(m.group(2), module, classes)
        except Unresolved as e:
            found.append((m.start(), f"{m.group()} ({e})"))
    return found


def _line(text, offset, first_line):
    return first_line + text.count("\n", 0, offset)


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _docstring_scopes(tree):
    """``{id(docstring node): [enclosing class names]}`` for every module, class and function docstring."""
    scopes = {}

    def visit(node, classes):
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            scopes[id(body[0].value)] = classes
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, [*classes, child.name])
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, classes)

    visit(tree, [])
    return scopes


def package_problems(path):
    """Every unresolved name in one source file, as ``file:line: message``."""
    source = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT)
    tree = ast.parse(source)
    scopes = _docstring_scopes(tree)
    found = []
    try:
        module = importlib.import_module(_module_name(path))
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{_module_name(path)} imports {e.name} at import time")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            problems = problems_in(node.value)
            if id(node) in scopes:
                problems += role_problems_in(node.value, module, scopes[id(node)])
            found += [f"{where}:{_line(node.value, o, node.lineno)}: {msg}" for o, msg in problems]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found += [f"{where}:{token.start[0]}: {msg}" for _, msg in problems_in(token.string)]
    return found


def native_problems(path):
    """Every unresolved name in a C++ file of the host build (its comments name Python's side), as ``file:line: msg``."""
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT)
    return [f"{where}:{_line(text, o, 1)}: {msg}" for o, msg in problems_in(text)]


def markdown_problems(path):
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT)
    return [f"{where}:{_line(text, o, 1)}: {msg}" for o, msg in problems_in(text, markdown=True)]


SOURCES = sorted(PACKAGE.rglob("*.py"))
NATIVE = sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".h", ".hpp", ".cpp", ".cc", ".inc"))
MARKDOWN = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# ------------------------------------------------------------------------------------- tests


def _check(found):
    try:
        problems = found()
    except NeedsOptional as e:
        pytest.skip(str(e))
    assert not problems, "names that do not resolve:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_package_text_names_resolve(path):
    _check(lambda: package_problems(path))


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: str(p.relative_to(ROOT)))
def test_native_source_names_resolve(path):
    _check(lambda: native_problems(path))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_names_resolve(path):
    _check(lambda: markdown_problems(path))


@pytest.mark.parametrize("text, expected", [
    ("see ``xseq._host_kernels.HostFusedOps``", ["xseq._host_kernels.HostFusedOps", "xseq._host_kernels"]),
    ("(``_kernels.KERNELS``)", ["_kernels"]),
    ("the buffers (``_workspace``)", ["_workspace"]),
    ("# see xseq/_workspace.py", ["xseq/_workspace.py", "xseq/_workspace.py"]),
    (":mod:`xseq.cli`", ["xseq.cli"]),
    ("xseq.lm.train.Trainer.no_such_method", ["xseq.lm.train.Trainer.no_such_method"]),
    ("xseq.ops.host.status.nothing", ["xseq.ops.host.status.nothing"]),
    ("tests/test_no_such_file.py and tests/test_zz_*.py", ["tests/test_no_such_file.py", "tests/test_zz_*.py"]),
])
def test_stale_names_are_reported(text, expected):
    reported = [msg.split(" (")[0] for _, msg in problems_in(text)]
    assert sorted(reported) == sorted(expected)


@pytest.mark.parametrize("text", [
    "xseq.lm.train.Trainer.resume and xseq.TrainConfig.",      # a method; a sentence's full stop
    "xseq.LSTM.dropout_rng",                                   # an instance attribute (self.dropout_rng)
    "xseq.lm.stream_train.StreamConfig.hidden_size",           # a dataclass field
    "xseq/lm/cli.py, xseq/distributed/ and tests/test_*.py.",  # a file, a folder, a glob
    '{"format": "xseq.checkpoint"}',                           # the format tag
    "LSTM xseq/torch 1.21x",                                   # a ratio, not a path
    "self._kernels and ``gru_pointwise_forward``",             # not the old modules
])
def test_live_names_are_not_reported(text):
    assert problems_in(text) == []


def test_roles_resolve_like_sphinx():
    from xseq.lm import train
    from xseq.ops import fused

    assert role_problems_in(":meth:`resume` :attr:`history` :func:`share`", train, ["Trainer"]) == []
    assert role_problems_in(":func:`numpy.savez` :class:`RuntimeWarning`", train, []) == []
    stale = role_problems_in(":data:`KERNELS` :class:`CupyDevice` :class:`FusedSteps`", fused, ["DirectSteps"])
    assert [msg.split(" (")[0] for _, msg in stale] == [":data:`KERNELS`", ":class:`CupyDevice`"]
