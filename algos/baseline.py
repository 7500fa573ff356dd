"""The before-training baseline of ``treegrpo train``, keyed by what it measured.

A run measures its starting policy on held-out prompts once and keeps the numbers in
``eval_before.json`` so a resumed run still reports them. The ``eval`` options may change on resume,
so the file also records what it measured (:func:`baseline_key`: the eval options, the model and
sampling settings that shape a sample, the seed and a fingerprint of the held-out prompts). A resumed
run reuses the file only when the key matches; otherwise the starting policy is measured again
before the checkpoint loads, so a stale or partial baseline is never reported as the result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from treegrpo.algos.evaluation import held_out_prompts, held_out_scores
from treegrpo.algos.run_summary import write_json
from treegrpo.config import Config
from treegrpo.problems import Problem

SPEED_ONLY = frozenset({"sampling.chunks", "sampling.max_batch", "sampling.static_shapes", "sampling.background_scoring",
                        "model.embedding_cache", "model.embedding_memory", "model.precompute_embeddings",
                        "model.vae_batch"})
"""Options that change how fast a sample is made, never what it is: left out of the key."""
MAX_BASELINE_BYTES = 1 << 20


def _fingerprint(value: Any, digest: Any) -> None:
    """Feed every tensor of a condition (a tensor, a TensorDict, a mapping or a sequence) to ``digest``."""
    if isinstance(value, torch.Tensor):
        digest.update(str((value.dtype, tuple(value.shape))).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, TensorDictBase | Mapping):
        for key in sorted(value.keys()):
            digest.update(str(key).encode())
            _fingerprint(value[key], digest)
    elif isinstance(value, list | tuple):
        for item in value:
            _fingerprint(item, digest)
    else:
        digest.update(repr(value).encode())


def baseline_key(problem: Problem, config: Config) -> dict[str, Any]:
    """What a held-out measurement depends on: ``eval`` (less ``out`` and ``base``, which only
    ``treegrpo eval`` reads), ``model`` and ``sampling`` (less :data:`SPEED_ONLY`), ``train.seed``,
    ``train.precision`` and the sha256 of the held-out prompts' conditions and ids."""
    settings = config.to_dict()
    key: dict[str, Any] = {"eval": {k: v for k, v in settings["eval"].items() if k not in ("out", "base")}}
    for section in ("model", "sampling"):
        key[section] = {k: v for k, v in settings[section].items() if f"{section}.{k}" not in SPEED_ONLY}
    key["seed"], key["precision"] = config.train.seed, config.train.precision
    digest = hashlib.sha256()
    cond, prompt_ids = held_out_prompts(problem, config.train.seed)
    _fingerprint((cond, prompt_ids), digest)
    key["prompts"] = digest.hexdigest()
    return json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)


def key_changes(old: Any, new: Mapping[str, Any]) -> list[str]:
    """``name old -> new`` for each entry of the key that differs (the old key may be anything)."""
    old = old if isinstance(old, Mapping) else {}
    changes = []
    for name, value in new.items():
        before = old.get(name)
        if isinstance(value, Mapping):
            inner = before if isinstance(before, Mapping) else {}
            changes += [f"{name}.{k} {inner.get(k)!r:.40} -> {v!r:.40}" for k, v in value.items() if inner.get(k) != v]
        elif before != value:
            changes.append(name if name == "prompts" else f"{name} {before!r:.40} -> {value!r:.40}")
    return changes


def read_baseline(path: Path, key: Mapping[str, Any]) -> tuple[dict[str, float] | None, list[str]]:
    """The baseline in ``path`` if it was measured as ``key`` says, with ``[]``; else ``None`` and why
    (what changed, or that the file is missing, unreadable or of an older treegrpo)."""
    if not path.is_file() or path.is_symlink():
        return None, ["no baseline file"]
    try:
        raw = path.read_bytes()[:MAX_BASELINE_BYTES + 1]
        record = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_BASELINE_BYTES else None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("scores"), dict) and "measured_with" in record):
        return None, ["a baseline file that records no key"]
    changes = key_changes(record["measured_with"], key)
    scores = record["scores"]
    if changes or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()):
        return None, changes or ["a baseline file with non-numeric scores"]
    return {k: float(v) for k, v in scores.items()}, []


def write_baseline(path: Path, key: Mapping[str, Any], scores: Mapping[str, float]) -> None:
    """Write ``scores`` with the key they were measured under."""
    write_json({"measured_with": dict(key), "scores": dict(scores)}, path)


def measure_start(problem: Problem, config: Config) -> dict[str, float]:
    """The starting policy's held-out scores, as :meth:`Trainer.evaluate` reports them at iteration 0;
    called before a checkpoint is loaded into ``problem.model``."""
    scores = held_out_scores(problem, config)
    result = {f"eval/{name}": value for name, value in scores.means().items()}
    result["eval_samples"] = float(scores.scores.shape[0])
    result["iteration"] = 0.0
    return result


__all__ = ["baseline_key", "key_changes", "measure_start", "read_baseline", "write_baseline"]
