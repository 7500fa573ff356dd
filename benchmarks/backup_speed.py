"""Time `treeadv.backup` on forests of 1e3, 1e5 and 1e6 nodes, and against a minimal scatter backup.

Two parts, one run:

* The table: every registered estimator on regular and irregular forests (k=3, d=3). Regular
  forests are stored level by level, as samplers produce them. Irregular forests draw each node's
  number of children uniformly from 0..6 (mean 3, so some branches stop early) and are stored in a
  random node order, the slow path.
* The comparison: ``treeadv.backup`` with its default estimator (``logprob_softmax``) against
  :func:`minimal_backup`, the dozen lines of scatters it would take to write the same backup for
  one layout by hand, on a ~1e6-node forest of many trees that branch 2 to 4 ways at every node
  (stored level by level). The two are timed alternately, call by call, so that load from other
  processes falls on both alike; the ratio of their medians is the library's overhead, and their
  outputs are compared with ``allclose``.

Prints both tables and writes JSON (default ``benchmarks/results/backup_speed.json`` in a checkout).

    python benchmarks/backup_speed.py [--sizes 1000 100000 1000000] [--repeats 20] [--device cpu]
        [--compare-nodes 1000000] [--compare-repeats 30]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

import treeadv
from treegrpo.benchmarks import RESULTS

BRANCHING, DEPTH = 3, 3
NODES_PER_REGULAR_TREE = sum(BRANCHING**level for level in range(DEPTH + 1))  # 40
COMPARE_BRANCHING, COMPARE_DEPTH = (2, 4), 4  # children per node drawn from 2..4, 4 levels below each root


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


def branching_forest(
    num_nodes: int,
    generator: torch.Generator,
    device: str,
    branching: tuple[int, int] = COMPARE_BRANCHING,
    depth: int = COMPARE_DEPTH,
) -> treeadv.Tree:
    """About ``num_nodes`` nodes in trees whose every node above ``depth`` has ``branching[0]`` to
    ``branching[1]`` children (uniform), stored level by level as a sampler stores its trees."""
    low, high = branching
    mean = (low + high) / 2
    num_trees = max(1, round(num_nodes / sum(mean**level for level in range(depth + 1))))
    parents = [torch.full((num_trees,), -1, dtype=torch.long)]
    level = torch.arange(num_trees)
    total = num_trees
    for _ in range(depth):
        counts = torch.randint(low, high + 1, (level.numel(),), generator=generator)
        children_parent = level.repeat_interleave(counts)
        parents.append(children_parent)
        level = torch.arange(total, total + children_parent.numel())
        total += children_parent.numel()
    parent = torch.cat(parents)
    return treeadv.Tree.from_parents(parent, torch.randn(parent.numel(), generator=generator)).to(device)


def minimal_backup(parent: Tensor, depth: Tensor, log_prob: Tensor, is_leaf: Tensor, leaf_adv: Tensor) -> Tensor:
    """The ``logprob_softmax`` backup written by hand for a forest stored level by level.

    No validation, no estimator interface, no weights kept: per level, from the deepest, a
    per-parent softmax of the children's log-probs (``scatter_reduce`` amax, ``exp``, ``index_add``)
    and an ``index_add`` of weight times child advantage into the parents, which start at zero.
    """
    counts = torch.bincount(depth).tolist()
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    advantage = torch.where(is_leaf, leaf_adv, 0.0)
    for level in range(len(counts) - 1, 0, -1):
        begin, end, parent_begin, num_parents = starts[level], starts[level + 1], starts[level - 1], counts[level - 1]
        index = parent[begin:end] - parent_begin
        logits = log_prob[begin:end]
        top = logits.new_full((num_parents,), float("-inf")).scatter_reduce_(0, index, logits, reduce="amax")
        scores = (logits - top[index]).exp()
        total = logits.new_zeros(num_parents).index_add_(0, index, scores)
        advantage[parent_begin:begin].index_add_(0, index, scores / total[index] * advantage[begin:end])
    return advantage


def median_ms(function, repeats: int, device: str) -> float:
    return statistics.median(sample_ms(function, repeats=repeats, device=device))


def sample_ms(*functions, repeats: int, device: str) -> list[list[float]] | list[float]:
    """``repeats`` wall times in ms of each function, called in turn (a, b, a, b, ...) after one
    warm-up call each; a list per function, or one list for one function."""
    for function in functions:
        function()  # warm-up: allocator and first-call costs
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, out in zip(functions, times):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            function()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            out.append((time.perf_counter() - start) * 1e3)
    return times[0] if len(functions) == 1 else times


def compare(num_nodes: int, repeats: int, device: str, generator: torch.Generator) -> dict:
    """``treeadv.backup`` (default estimator) against :func:`minimal_backup` on one forest."""
    tree = branching_forest(num_nodes, generator, device)
    leaf_adv = torch.randn(tree.num_nodes, generator=generator).to(device)
    library = functools.partial(treeadv.backup, tree, leaf_adv)
    minimal = functools.partial(minimal_backup, tree.parent, tree.depth, tree.log_prob, tree.is_leaf, leaf_adv)
    got, want = library(), minimal()
    library_ms, minimal_ms = sample_ms(library, minimal, repeats=repeats, device=device)
    backup_ms, reference_ms = statistics.median(library_ms), statistics.median(minimal_ms)
    return {
        "nodes": tree.num_nodes,
        "trees": int((tree.parent < 0).sum()),
        "branching": list(COMPARE_BRANCHING),
        "depth": COMPARE_DEPTH,
        "layout": "level by level",
        "estimator": "logprob_softmax",
        "dtype": str(leaf_adv.dtype).removeprefix("torch."),
        "repeats": repeats,
        "backup_ms": round(backup_ms, 3),
        "minimal_ms": round(reference_ms, 3),
        "ratio": round(backup_ms / reference_ms, 3),
        "allclose": bool(torch.allclose(got, want, rtol=1e-5, atol=1e-6)),
        "max_abs_diff": float((got - want).abs().max()) if got.numel() else 0.0,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[1_000, 100_000, 1_000_000],
        help="forest sizes for the per-estimator table (none: skip it)",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compare-nodes", type=int, default=1_000_000, help="forest size for backup against the minimal scatter backup"
    )
    parser.add_argument("--compare-repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "backup_speed.json")
    args = parser.parse_args(argv)

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
    comparison = compare(args.compare_nodes, args.compare_repeats, args.device, generator)

    if rows:
        header = (
            f"{'shape':<10} {'nodes':>9} {'estimator':<16} {'backup ms':>10} {'Mnodes/s':>9} {'from_parents ms':>16}"
        )
        print(header)
        print("-" * len(header))
        for row in rows:
            print(
                f"{row['shape']:<10} {row['nodes']:>9} {row['estimator']:<16} {row['backup_ms']:>10.2f} "
                f"{row['mnodes_per_s']:>9.2f} {row['from_parents_ms']:>16.2f}"
            )
        print()
    header = f"{'nodes':>9} {'trees':>7} {'treeadv.backup ms':>18} {'minimal ms':>11} {'ratio':>6} {'allclose':>9}"
    print(
        f"backup vs minimal scatter (logprob_softmax, k={COMPARE_BRANCHING[0]}..{COMPARE_BRANCHING[1]}, "
        f"d={COMPARE_DEPTH}, median of {args.compare_repeats}, alternating)"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{comparison['nodes']:>9} {comparison['trees']:>7} {comparison['backup_ms']:>18.2f} "
        f"{comparison['minimal_ms']:>11.2f} {comparison['ratio']:>6.2f} {comparison['allclose']!s:>9}"
    )

    meta = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats,
        "statistic": "median",
        "command": " ".join(["python benchmarks/backup_speed.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    result = {"meta": meta, "rows": rows, "comparison": comparison, "ratio": comparison["ratio"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
