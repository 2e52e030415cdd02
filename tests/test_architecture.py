"""The package's architecture holds: import-linter's contracts (``pyproject.toml``), imports inside functions
only for optional libraries, and ``import xseq`` importing none of them.

The contracts are checked here, in the test suite, so that a broken one fails the README's test command and
CI; a last test plants an upward import in a copy of the package to show that the check can fail.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xseq"
PYPROJECT = ROOT / "pyproject.toml"

#: Libraries xseq uses only when they are installed and asked for; never at import time.
OPTIONAL = {"cupy", "cupyx", "cupy_backends", "torch", "mpi4py", "matplotlib", "jax"}


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def lint_imports(*, cwd, env=None):
    """Run import-linter's command line on ``cwd``'s pyproject.toml; returns the finished process."""
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    return subprocess.run([*command, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_are_kept():
    done = lint_imports(cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_a_contract(tmp_path):
    """The check is not vacuous: the ops importing the application is reported, and fails the run."""
    shutil.copytree(PACKAGE, tmp_path / "xseq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    planted = tmp_path / "xseq" / "ops" / "pointwise.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\nfrom ..lm import cli  # planted\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = lint_imports(cwd=tmp_path, env=env)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout and "xseq.ops.pointwise -> xseq.lm.cli" in done.stdout


def _imports(tree):
    """(node, module names, inside a function) for every import statement of a module's syntax tree."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.append((child, [alias.name for alias in child.names], in_function))
            elif isinstance(child, ast.ImportFrom):
                name = "." * child.level + (child.module or "")
                found.append((child, [name], in_function))
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_inside_functions_are_for_optional_libraries_only(path):
    """No import of xseq's own modules hides in a function (that is how import circles are dodged), and no
    optional library is imported at module level (``import xseq`` must work without them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node, names, in_function in _imports(tree):
        for name in names:
            top = name.lstrip(".").split(".")[0]
            own = name.startswith(".") or top == "xseq"
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if in_function:
                assert not own, f"{where} imports {name} inside a function; xseq's modules import each other at the top"
            else:
                assert top not in OPTIONAL, f"{where} imports the optional library {name} at module level"


def test_import_xseq_imports_no_optional_library():
    code = ("import sys, xseq; import xseq.lm.cli, xseq.ops.select; "
            f"print(sorted(m for m in {sorted(OPTIONAL)!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
