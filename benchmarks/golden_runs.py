"""Golden numbers for refactors: a short ``toy2d`` run of every shipped algorithm, through the CLI.

A refactor that should not change what is trained runs this before and after and compares the two
JSON files with ``--compare``: every number the runs report (held-out rewards, diversity, training
statistics) and a hash of the final weights must be identical; timings are left out. It drives the
``treegrpo`` command in a subprocess, so it runs unchanged on code whose modules have moved.

    python benchmarks/golden_runs.py --out /tmp/golden-before.json
    python benchmarks/golden_runs.py --out /tmp/golden-after.json
    python benchmarks/golden_runs.py --compare /tmp/golden-before.json /tmp/golden-after.json
    python benchmarks/golden_runs.py --compare-summaries runs/digits/summary.json /tmp/after/summary.json

``--pipelines`` does the same for the diffusers families on tiny random-weight pipelines (SD3,
FLUX.1, SD1.5 through their shipped configs, shrunk to 16 pixels, LoRA), scored by tiny reward
models; run it from the repository root (it builds the rewards with the tests' helper).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors import safe_open

ALGORITHMS = ("treegrpo", "grpo", "mixgrpo", "ddpo", "reinforce", "flow_grpo", "dance_grpo", "mix_grpo",
              "branch_grpo")
TIMING = re.compile(r"second|wall|time|img_s|per_s|throughput|_s$|elapsed|date|out_dir|path|^prompts$|reward_dir|"
                    r"embedding_cache")


def without_timings(value: Any) -> Any:
    """``value`` with every key that holds a time, a date or a path removed (they differ run to run)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def weights_hash(path: Path) -> str:
    """sha256 over a safetensors file's tensors, by name (independent of the file's metadata)."""
    digest = hashlib.sha256()
    for name, tensor_hash in tensor_hashes(path).items():
        digest.update(name.encode())
        digest.update(tensor_hash.encode())
    return digest.hexdigest()


def tensor_hashes(path: Path) -> dict[str, str]:
    """Each tensor's sha256 in a safetensors file, by name (to say which tensor differs)."""
    with safe_open(str(path), framework="pt") as weights:
        return {name: hashlib.sha256(weights.get_tensor(name).float().numpy().tobytes()).hexdigest()[:16]
                for name in sorted(weights.keys())}


def run_one(algorithm: str, iterations: int, folder: Path) -> dict[str, Any]:
    """Train ``toy2d`` with ``algorithm`` for ``iterations`` and return its summary and weights hash."""
    command = [sys.executable, "-m", "treegrpo", "train", "--model.kind", "toy2d", "--loss.algorithm", algorithm,
               "--train.iterations", str(iterations), "--train.out_dir", str(folder)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    summary = json.loads((folder / "summary.json").read_text())
    checkpoint = max((folder / "checkpoints").glob("iter-*"))
    return {"summary": without_timings(summary), "weights": weights_hash(checkpoint / "model.safetensors")}


PIPELINE_CONFIGS = {"sd3": "configs/sd35_medium.yaml", "flux": "configs/flux_dev.yaml", "sd15": "configs/sd15.yaml"}


def run_pipeline(kind: str, iterations: int, scratch: Path) -> dict[str, Any]:
    """Train a tiny ``kind`` pipeline through its shipped config for ``iterations`` (LoRA, 16 pixels)."""
    from treegrpo.testing import pipelines as tiny

    sys.path.insert(0, str(Path.cwd()))
    from tests.rewards.tiny_rewards import save_tiny_rewards

    path = getattr(tiny, f"save_tiny_{kind}_pipeline")(scratch / "pipelines" / kind)
    rewards = scratch / "rewards"
    if not rewards.exists():
        save_tiny_rewards(rewards)
    prompts = scratch / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "train.txt").write_text("a red cat\na blue dog\ntwo small birds\na green house\n")
    (prompts / "test.txt").write_text("sunset over the sea\na bowl of fruit\n")
    out = scratch / f"run-{kind}"
    flags = [f"model.reward_dir={rewards}", f"model.path={path}", f"model.prompts={prompts}", "model.image_size=16",
             *(["model.max_sequence_length=16"] if kind in ("sd3", "flux") else []),
             f"model.embedding_cache={out / 'embeddings'}", "model.eval_count=2", "sampling.num_steps=4",
             "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2", "sampling.max_batch=0",
             f"train.iterations={iterations}", "train.device=cpu", "train.precision=fp32", f"train.out_dir={out}",
             "optim.lr=1e-3", "loss.clip_range=0.2", "train.minibatch_parents=4", "eval.diversity=false"]
    command = [sys.executable, "-m", "treegrpo", "train", "--config", PIPELINE_CONFIGS[kind]]
    for flag in flags:
        key, _, value = flag.partition("=")
        command += [f"--{key}", value]
    subprocess.run(command, check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = max((out / "checkpoints").glob("iter-*"))
    weights = sorted(checkpoint.glob("*.safetensors"))
    unseeded = numpy_rng_tensors(checkpoint / "state.json")
    tensors = {w.name: {k: v for k, v in tensor_hashes(w).items() if not (w.name == "state.safetensors" and
                                                                          k in unseeded)} for w in weights}
    return {"summary": without_timings(summary), "tensors": tensors}


def numpy_rng_tensors(state_file: Path) -> set[str]:
    """The checkpoint tensors holding numpy's global RNG, which nothing seeds: it differs run to run."""
    found: set[str] = set()

    def walk(value: Any, inside: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, inside or key == "numpy")
        elif isinstance(value, list):
            for item in value:
                walk(item, inside)
        elif inside and isinstance(value, str):
            found.add(value)

    walk(json.loads(state_file.read_text()).get("state", {}).get("rng", {}), False)
    return found


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Every path at which two JSON values differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = [f"{where}.{k}: only in {'before' if k in before else 'after'}" for k in before.keys() ^ after.keys()]
        for key in sorted(before.keys() & after.keys()):
            found += differences(before[key], after[key], f"{where}.{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the golden JSON here")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--pipelines", action="store_true", help="the tiny diffusers families instead of toy2d")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two golden JSON files")
    parser.add_argument("--compare-summaries", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="compare two runs' summary.json, timings left out")
    args = parser.parse_args(argv)
    if args.compare or args.compare_summaries:
        before_path, after_path = args.compare or args.compare_summaries
        load = (lambda p: without_timings(json.loads(Path(p).read_text()))) if args.compare_summaries else (
            lambda p: json.loads(Path(p).read_text()))
        found = differences(load(before_path), load(after_path))
        print("\n".join(found) if found else "identical")
        return 1 if found else 0
    if not args.out:
        parser.error("--out: needed unless --compare or --compare-summaries")
    golden = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in PIPELINE_CONFIGS if args.pipelines else ():
            golden[kind] = run_pipeline(kind, args.iterations, Path(scratch))
            print(f"{kind:12s} model {golden[kind]['tensors'].get('model.safetensors', {})}"[:80])
        for algorithm in () if args.pipelines else args.algorithms.split(","):
            golden[algorithm] = run_one(algorithm, args.iterations, Path(scratch) / algorithm)
            print(f"{algorithm:12s} weights {golden[algorithm]['weights'][:16]}")
    Path(args.out).write_text(json.dumps(golden, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
