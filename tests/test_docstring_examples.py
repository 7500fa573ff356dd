"""The ``Examples:`` in the project's docstrings run, and every public entry point has one.

Docstrings are read from the source (a tensorclass such as :class:`treeadv.Tree` replaces its
``__doc__`` at runtime, so the runtime objects would miss them), and each docstring with ``>>>``
lines runs as one doctest in a fresh namespace.
"""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest

from treeadv.registry import registrations_undone

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("treeadv", "treegrpo", "envs", "algos", "rewards", "embedded")

ENTRY_POINTS = {
    "treeadv/tree.py": ["Tree"],
    "treeadv/leaf.py": ["leaf_advantages"],
    "treeadv/backup.py": ["backup"],
    "treeadv/estimators.py": ["register_estimator"],
    "treeadv/registry.py": ["<module>"],
    "envs/edges.py": ["parent_batch"],
    "algos/trainer.py": ["Trainer"],
    "algos/losses.py": ["register_loss"],
    "treegrpo/problems/build.py": ["build_problem"],
    "treegrpo/config.py": ["Config.override"],
    "treegrpo/families/pipelines.py": ["load_pipeline"],
}
"""File -> the public names (``<module>`` for the module docstring) whose docstring must hold a runnable example."""

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def docstrings(path: Path) -> dict[str, tuple[str, int]]:
    """``name -> (docstring, line)`` for the module and every function, class and method of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    if (text := ast.get_docstring(tree, clean=False)) is not None:
        found["<module>"] = (text, 1)

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if (text := ast.get_docstring(child, clean=False)) is not None:
                    found[name] = (text, child.lineno)
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{name}.")

    visit(tree, "")
    return found


def examples() -> list[tuple[str, str, str, int]]:
    """Every docstring with a ``>>>`` line: ``(file, name, docstring, line)``."""
    cases = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for name, (text, line) in docstrings(path).items():
                if ">>>" in text:
                    cases.append((str(path.relative_to(REPO)), name, text, line))
    return cases


@pytest.mark.parametrize(("file", "name", "text", "line"), examples(), ids=lambda v: v if isinstance(v, str) and
                         "\n" not in v else "")
def test_docstring_examples_run(file: str, name: str, text: str, line: int) -> None:
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "__doctest__"}, f"{file}:{name}", file, line)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with registrations_undone():  # an example that registers a plug-in leaves no trace in later tests
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize("file", sorted(ENTRY_POINTS))
def test_public_entry_points_have_runnable_examples(file: str) -> None:
    found = docstrings(REPO / file)
    missing = [name for name in ENTRY_POINTS[file]
               if name not in found or "Examples:" not in found[name][0] or ">>>" not in found[name][0]]
    assert not missing, f"{file}: no runnable 'Examples:' section in the docstring of {', '.join(missing)}"


def test_the_collector_finds_examples() -> None:
    assert len(examples()) >= len(ENTRY_POINTS)
