"""The package dependency graph: every import (module- or function-level) goes down the layers, and no
two modules import each other, directly or round a circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"treeadv": "treeadv", "treegrpo": "treegrpo", "envs": "treegrpo.envs", "algos": "treegrpo.algos",
           "embedded": "treegrpo.embedded", "rewards": "treegrpo.rewards", "benchmarks": "treegrpo.benchmarks"}

# Each package (or core module) and the packages it may import, lowest layer first.
CORE = {"treegrpo.errors", "treegrpo.formats", "treegrpo.uses", "treegrpo.recipes", "treegrpo.kinds", "treegrpo.config",
        "treegrpo.devices"}
ALLOWED: dict[str, set[str]] = {
    "treeadv": set(),
    "treegrpo.errors": set(),
    "treegrpo.formats": {"treegrpo.errors"},
    "treegrpo.uses": set(),
    # The declarations of who reads which option: the recipes, and the model kinds (filled by treegrpo.problems).
    "treegrpo.recipes": {"treegrpo.errors", "treegrpo.uses", "treeadv"},
    "treegrpo.kinds": {"treegrpo.uses", "treeadv"},
    "treegrpo.config": {"treegrpo.errors", "treegrpo.uses", "treegrpo.recipes", "treegrpo.kinds", "treeadv"},
    "treegrpo.devices": {"treegrpo.errors"},
    # The test kits for users: the loss suite trains through treegrpo.algos, which never imports them.
    "treegrpo.testing": {"treegrpo.algos", "treegrpo.envs", "treegrpo.families", "treegrpo.problems", *CORE, "treeadv"},
    "treegrpo.envs": {"treeadv", "treegrpo.errors", "treegrpo.formats"},
    "treegrpo.rewards": {"treegrpo.errors", "treegrpo.formats", "treeadv"},
    "treegrpo.embedded": {"treegrpo.envs", "treegrpo.rewards", "treegrpo.errors", "treeadv"},
    # Model families: a pipeline folder loaded as a denoiser and a transition, and prompt files.
    "treegrpo.families": {"treegrpo.envs", "treegrpo.errors", "treegrpo.formats", "treeadv"},
    "treegrpo.problems": {"treegrpo.embedded", "treegrpo.families", "treegrpo.rewards", "treegrpo.envs", *CORE,
                          "treeadv"},
    "treegrpo.algos": {"treegrpo.problems", "treegrpo.families", "treegrpo.rewards", "treegrpo.envs", *CORE,
                       "treeadv"},
    # The top: the command line and the benchmarks may use everything.
    "treegrpo.cli": {"*"},
    "treegrpo.benchmarks": {"*"},
    "treegrpo.__main__": {"treegrpo.cli"},
    "treegrpo": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    name = [FOLDERS[parts[0]], *parts[1:]]
    return ".".join(name[:-1] if name[-1] == "__init__" else name)


def unit(module: str) -> str:
    """The layer a module belongs to: its package, or itself for a core module of ``treegrpo``."""
    for name in sorted(ALLOWED, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    raise AssertionError(f"{module}: not in any layer of tests/test_layers.py")


def imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body."""
    graph = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            module = module_name(path)
            found = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                found |= {n for n in names if n.split(".")[0] in ("treegrpo", "treeadv")}
            graph[module] = found
    return graph


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in imports().items():
        here = unit(module)
        for target in targets:
            there = unit(target)
            if there != here and "*" not in ALLOWED[here] and there not in ALLOWED[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_round_a_circle():
    graph = imports()
    modules = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in ts if (r := resolve(t)) and r != m and not m.startswith(r + ".")} for m, ts in graph.items()}
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"
