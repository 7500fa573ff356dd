"""Slow, independent float64 references written node by node in plain Python (tests only)."""

from __future__ import annotations

import math


def children_lists(parent: list[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parent]
    for node, p in enumerate(parent):
        if p >= 0:
            kids[p].append(node)
    return kids


def reference_backup(parent: list[int], log_prob: list[float], leaf_adv: list[float], estimator: str, temperature: float = 1.0) -> list[float]:
    """The backup by recursion over children lists, each estimator from its definition."""
    kids = children_lists(parent)
    value: dict[int, float] = {}
    leaves_below: dict[int, list[float]] = {}

    def visit(node: int) -> float:
        if not kids[node]:
            value[node] = leaf_adv[node]
            leaves_below[node] = [leaf_adv[node]]
            return value[node]
        child_values = [visit(c) for c in kids[node]]
        leaves_below[node] = [x for c in kids[node] for x in leaves_below[c]]
        if estimator == "logprob_softmax":
            top = max(log_prob[c] / temperature for c in kids[node])
            scores = [math.exp(log_prob[c] / temperature - top) for c in kids[node]]
            value[node] = sum(s * v for s, v in zip(scores, child_values)) / sum(scores)
        elif estimator == "mean":
            value[node] = sum(child_values) / len(child_values)
        elif estimator == "max":
            value[node] = max(child_values)
        elif estimator == "leaf":
            value[node] = sum(leaves_below[node]) / len(leaves_below[node])
        else:
            raise ValueError(estimator)
        return value[node]

    for node, p in enumerate(parent):
        if p < 0:
            visit(node)
    return [value[i] for i in range(len(parent))]


def reference_depths(parent: list[int]) -> list[int]:
    depth = []
    for node in range(len(parent)):
        d, cur = 0, node
        while parent[cur] >= 0:
            cur, d = parent[cur], d + 1
        depth.append(d)
    return depth
