"""Time `treeadv.backup` on forests of 1e3, 1e5 and 1e6 nodes, regular and irregular (k=3, d=3).

Regular forests are stored level by level, as samplers produce them. Irregular forests draw each
node's number of children uniformly from 0..6 (mean 3, so some branches stop early) and are
stored in a random node order, the slow path. Prints a table and writes JSON.

    python benchmarks/backup_speed.py [--sizes 1000 100000 1000000] [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import treeadv

BRANCHING, DEPTH = 3, 3
NODES_PER_REGULAR_TREE = sum(BRANCHING**level for level in range(DEPTH + 1))  # 40


def regular_forest(num_nodes: int, generator: torch.Generator, device: str) -> treeadv.Tree:
    num_trees = max(1, round(num_nodes / NODES_PER_REGULAR_TREE))
    n = num_trees * NODES_PER_REGULAR_TREE
    return treeadv.Tree.regular(num_trees, BRANCHING, DEPTH, log_prob=torch.randn(n, generator=generator)).to(device)


def irregular_forest(num_nodes: int, generator: torch.Generator, device: str) -> treeadv.Tree:
    num_trees = max(1, round(num_nodes / NODES_PER_REGULAR_TREE))
    parents = [torch.full((num_trees,), -1, dtype=torch.long)]
    level = torch.arange(num_trees)
    total = num_trees
    for _ in range(DEPTH):
        counts = torch.randint(0, 2 * BRANCHING + 1, (level.numel(),), generator=generator)
        children_parent = level.repeat_interleave(counts)
        parents.append(children_parent)
        level = torch.arange(total, total + children_parent.numel())
        total += children_parent.numel()
    parent = torch.cat(parents)
    tree = treeadv.Tree.from_parents(parent, torch.randn(parent.numel(), generator=generator))
    return tree.relabel(torch.randperm(tree.num_nodes, generator=generator)).to(device)


def median_ms(function, repeats: int, device: str) -> float:
    function()  # warm-up: allocator and first-call costs
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backup_speed.json")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    rows = []
    for shape, build in (("regular", regular_forest), ("irregular", irregular_forest)):
        for size in args.sizes:
            tree = build(size, generator, args.device)
            leaf_adv = torch.randn(tree.num_nodes, generator=generator).to(args.device)
            rebuild = functools.partial(treeadv.Tree.from_parents, tree.parent, tree.log_prob)
            build_ms = median_ms(rebuild, args.repeats, args.device)
            for estimator in treeadv.registered_estimators():
                backup = functools.partial(treeadv.backup, tree, leaf_adv, estimator)
                ms = median_ms(backup, args.repeats, args.device)
                rows.append(
                    {
                        "shape": shape,
                        "nodes": tree.num_nodes,
                        "estimator": estimator,
                        "backup_ms": round(ms, 3),
                        "from_parents_ms": round(build_ms, 3),
                        "mnodes_per_s": round(tree.num_nodes / ms / 1e3, 2),
                    }
                )

    header = f"{'shape':<10} {'nodes':>9} {'estimator':<16} {'backup ms':>10} {'Mnodes/s':>9} {'from_parents ms':>16}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['shape']:<10} {row['nodes']:>9} {row['estimator']:<16} {row['backup_ms']:>10.2f} "
            f"{row['mnodes_per_s']:>9.2f} {row['from_parents_ms']:>16.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "statistic": "median",
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
