"""treegrpo.benchmarks: the scripts behind every performance figure, installed with the package.

Each script prints a table and writes JSON; run one with ``treegrpo bench --name <script>`` (from a
wheel too) or ``python benchmarks/<script>.py`` in a checkout. Results go to
``benchmarks/results/`` of a source checkout, else to ``./benchmark-results/``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

_CHECKOUT_RESULTS = Path(__file__).resolve().parent / "results"
RESULTS = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path.cwd() / "benchmark-results"
"""Where the scripts write their JSON and tables by default."""

SCRIPTS = ("compare_methods", "backup_speed", "backup_weights", "background_scoring", "engine_speed",
           "gpu_iteration", "precision_ratios", "predicted_floor", "reward_preprocessing")
"""The benchmark scripts (modules of this package)."""


def run_facts() -> dict[str, Any]:
    """What a result depends on besides its options: torch's thread count and the processor."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}


def write_result(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` as indented JSON to ``path`` (making its folder), say so, and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result
