"""On-policy statistics under fp32, simulated TF32 and simulated bf16 numerics, and what the check costs.

For the digits default (its preset: TreeGRPO k=3, d=3, clip range 1e-2) and a one-layer SD3
transformer at SD3.5's latent size (16x64x64, clip range 1e-4 as Flow-GRPO's), trains a few
iterations with the trainer's default check (statistics read off the first minibatch) and reports,
over those iterations, the largest ``|ratio - 1|``, the ratio's std, the share of edges outside the
clip range and the largest rounding z (``|log rho| / (u S)``, docs/algos.md). ``fp32`` is this
machine's own arithmetic; ``tf32`` and ``bf16`` wrap every denoiser forward in
:func:`treegrpo.testing.simulated_gpu_numerics` (rounding ``1e-3`` and ``4e-3`` that depend on the
batch shape). ``--timing`` also measures the default digits run's seconds per iteration with the
statistics (no extra forward) and with the full re-scoring pass (``train.rescore_on_policy``,
what every iteration paid before). ``--sweep`` trains toy2d with every algorithm over several seeds
in strict mode under each numerics and counts the runs that stop. ``--real`` adds rows on this
device's own kernels, nothing simulated: TreeGRPO (k=3, d=3, NFE 10, clip 1e-4, LoRA) on the
``--real-size`` transformer of ``gpu_iteration.SIZES`` (``sd35m``: SD3.5-Medium's, random weights)
at ``train.precision`` fp32 and bf16 (benchmarks/gpu_check.sh runs it on the GPU).

    python benchmarks/onpolicy_numerics.py [--iterations 3] [--timing 15] [--sweep 5] [--out benchmarks/results/onpolicy_numerics.json]
    python benchmarks/onpolicy_numerics.py --problems --real --real-size sd35m --device cuda   # the GPU's kernels

Writes the JSON and, beside it, the Markdown table docs/algos.md includes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from treegrpo.algos import Config, Trainer
from treegrpo.benchmarks import RESULTS
from treegrpo.envs.numerics import ROUNDING_Z
from treegrpo.problems import build_problem
from treegrpo.testing.numerics import sd35_latent_problem, simulated_gpu_numerics

NUMERICS = ("fp32", "tf32", "bf16")


def numerics(name: str):
    return contextlib.nullcontext() if name == "fp32" else simulated_gpu_numerics(name)


def trainer_for(problem_name: str, out: str, extra: list[str]) -> Trainer:
    common = [f"train.out_dir={out}", "train.checkpoint_every=100000", "train.sample_every=100000", *extra]
    if problem_name == "digits":
        from treegrpo.config import preset_config  # the digits rows only

        config = preset_config("digits").override(common)
        return Trainer(build_problem(config), config)
    config = Config().override(["model.kind=toy2d", "sampling.num_steps=10", "sampling.prompts_per_iteration=2",
                                "sampling.branching=3", "sampling.depth=2", "train.minibatch_parents=4",
                                "loss.clip_range=1e-4", "optim.lr=1e-5", *common], check_used=False)
    return Trainer(sd35_latent_problem(prompts=2, num_steps=10), config)


def run_statistics(problem_name: str, numeric: str, iterations: int) -> dict[str, Any]:
    """The worst on-policy statistics over ``iterations`` and the warnings the run printed."""
    with numerics(numeric), tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = trainer_for(problem_name, out, [])
        rows = [trainer.step() for _ in range(iterations)]
        trainer.close()
    worst = {key: max(row[key] for row in rows) for key in rows[0] if key.startswith("onpolicy/")}
    return {"problem": problem_name, "numerics": numeric, "iterations": iterations,
            "clip_range": trainer.config.loss.clip_range, "unit": rows and trainer_unit(numeric),
            **{key.split("/")[1]: value for key, value in worst.items()},
            "rounding": worst["onpolicy/rounding_z"] <= ROUNDING_Z,
            "warnings": sorted({str(w.message).split(":")[1].split("(")[0].strip() for w in caught})}


REAL_PRECISIONS = ("fp32", "bf16")


def run_real(size: str, precision: str, iterations: int, device: str) -> dict[str, Any]:
    """The worst on-policy statistics of ``iterations`` TreeGRPO iterations on this device's own kernels:
    the ``size`` transformer (LoRA; bf16 weights under bf16) at ``train.precision=precision``."""
    from treegrpo.benchmarks import gpu_iteration
    from treegrpo.envs.numerics import UNIT_ROUNDOFF

    method = "treegrpo k3 d3"
    args = gpu_iteration.parse_args(["--size", size, "--device", device, "--prompts", "1", "--precision", precision,
                                     "--methods", method, "--images-per-prompt", "27"])
    spec = gpu_iteration.SIZES[size]
    args.max_batch, args.minibatch = spec["max_batch"], spec["minibatch"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transformer = gpu_iteration.build_transformer(args, dtype).to(device)
        config = gpu_iteration.config_for(args, method, "lora", Path(out))
        problem = gpu_iteration.synthetic_problem(args, transformer, torch.device(device), config.sampling)
        trainer = Trainer(problem, config)
        rows = [trainer.step() for _ in range(iterations)]
        trainer.close()
        del trainer, problem, transformer
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    worst = {key: max(row[key] for row in rows) for key in rows[0] if key.startswith("onpolicy/")}
    return {"problem": f"{size} (real kernels, {device})", "numerics": precision, "iterations": iterations,
            "clip_range": config.loss.clip_range, "unit": UNIT_ROUNDOFF.get(precision),
            **{key.split("/")[1]: value for key, value in worst.items()},
            "rounding": worst["onpolicy/rounding_z"] <= ROUNDING_Z,
            "warnings": sorted({str(w.message)[:200] for w in caught if "on-policy" in str(w.message).lower()})}


def trainer_unit(numeric: str) -> float:
    from treegrpo.envs.numerics import UNIT_ROUNDOFF
    from treegrpo.testing.numerics import LEVELS

    return UNIT_ROUNDOFF["fp32"] if numeric == "fp32" else LEVELS[numeric]


def iteration_seconds(iterations: int, rescore: bool) -> tuple[list[float], list[dict[str, float]]]:
    """Seconds of each of ``iterations`` default digits iterations (after one warm-up) and their metrics."""
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for("digits", out, [f"train.rescore_on_policy={str(rescore).lower()}"])
        trainer.step()
        seconds, rows = [], []
        for _ in range(iterations):
            start = time.perf_counter()
            rows.append(trainer.step())
            seconds.append(time.perf_counter() - start)
        trainer.close()
    return seconds, rows


def timing(iterations: int, repeats: int = 2) -> list[dict[str, Any]]:
    """The default digits run with and without the full re-scoring pass, alternated ``repeats`` times;
    both draw the same windows and prompts (the check draws nothing), so iteration ``i`` of one is
    paired with iteration ``i`` of the other and the median of the pairs is the cost."""
    runs: dict[bool, list[list[float]]] = {False: [], True: []}
    rows: dict[bool, list[dict[str, float]]] = {}
    for _ in range(repeats):
        for rescore in (False, True):
            seconds, rows[rescore] = iteration_seconds(iterations, rescore)
            runs[rescore].append(seconds)
    median = {rescore: statistics.median([min(times) for times in zip(*runs[rescore])]) for rescore in runs}
    out = []
    for rescore in (False, True):
        metrics = rows[rescore]
        out.append({"rescore_on_policy": rescore, "seconds_per_iteration": median[rescore],
                    "forward_rows_check": sum(r.get("forward_rows_check", 0.0) for r in metrics) / iterations,
                    "forward_rows": sum(r["forward_rows"] for r in metrics) / iterations,
                    "nfe_sampled": sum(r["nfe_sampled"] for r in metrics) / iterations,
                    "iterations": iterations, "repeats": repeats})
    paired = [a / b for a, b in zip(*(map(min, zip(*runs[rescore])) for rescore in (True, False)), strict=True)]
    out[1]["median_paired_ratio"] = statistics.median(paired)
    return out


SWEEP_ALGORITHMS = ("treegrpo", "grpo", "mixgrpo", "ddpo", "reinforce")


def sweep(seeds: int, numeric: str, iterations: int = 30) -> dict[str, Any]:
    """toy2d, every algorithm x ``seeds`` seeds x ``iterations``, ``train.check_on_policy=strict``
    under ``numeric``: how many runs stop (the former fixed 1e-5 tolerance stopped most on a CPU whose
    kernels vary with batch shape)."""
    from treegrpo.envs import OnPolicyError

    runs = []
    for algorithm in SWEEP_ALGORITHMS:
        for seed in range(seeds):
            extra = ["loss.kl_coef=0.04"] if algorithm == "grpo" else []  # the README's GRPO command
            with numerics(numeric), tempfile.TemporaryDirectory() as out:
                config = Config().override([
                    "model.kind=toy2d", f"loss.algorithm={algorithm}", f"train.seed={seed}", f"train.out_dir={out}",
                    f"train.iterations={iterations}", "train.check_on_policy=strict", "train.checkpoint_every=100000",
                    "train.sample_every=100000", *extra])
                trainer = Trainer(build_problem(config), config)
                try:
                    z = max(trainer.step().get("onpolicy/rounding_z", 0.0) for _ in range(iterations))
                    runs.append({"algorithm": algorithm, "seed": seed, "stopped": False, "rounding_z": z})
                except OnPolicyError as error:
                    runs.append({"algorithm": algorithm, "seed": seed, "stopped": True, "error": str(error)})
                trainer.close()
    return {"numerics": numeric, "iterations": iterations, "runs": runs,
            "stopped": sum(r["stopped"] for r in runs), "worst_rounding_z": max(r.get("rounding_z", 0.0) for r in runs)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| problem | numerics | max abs(ratio - 1) | ratio std | clipped before update | rounding z | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "rounding" if r["rounding"] else "beyond rounding"
        lines.append(f"| {r['problem']} | {r['numerics']} | {r['max_deviation']:.2e} | {r['ratio_std']:.2e} | "
                     f"{r.get('clipped_fraction', float('nan')):.1%} (clip {r['clip_range']:g}) | {r['rounding_z']:.2f} | "
                     f"{verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--problems", nargs="*", default=["digits", "sd35-latent"], choices=["digits", "sd35-latent"],
                        help="problems under simulated numerics (none: only --real)")
    parser.add_argument("--real", action="store_true",
                        help="add rows on this device's own kernels at train.precision fp32 and bf16")
    parser.add_argument("--real-size", default="sd35m", help="gpu_iteration size of the --real rows (tiny on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the --real rows")
    parser.add_argument("--timing", type=int, default=0, help="timed digits iterations per setting (0: skip)")
    parser.add_argument("--sweep", type=int, default=0,
                        help="toy2d seeds per algorithm for the strict-mode sweep under each numerics (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "onpolicy_numerics.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [run_statistics(p, n, args.iterations) for p in args.problems for n in NUMERICS]
    if args.real:
        rows += [run_real(args.real_size, precision, args.iterations, args.device) for precision in REAL_PRECISIONS]
    device = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu"
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "device": device if args.real else None, "rounding_z_limit": ROUNDING_Z, "rows": rows}
    print(table(rows))
    if args.timing:
        result["timing"] = timing(args.timing)
        for t in result["timing"]:
            print(f"digits default, rescore_on_policy={t['rescore_on_policy']}: {t['seconds_per_iteration']:.3f} s/iteration "
                  f"(median over iterations of the best of {t['repeats']} alternated runs), "
                  f"{t['forward_rows_check']:.0f} check rows + {t['forward_rows']:.0f} trained rows, "
                  f"{t['nfe_sampled']:.0f} sampled NFE")
        print(f"the full re-scoring pass costs {result['timing'][1]['median_paired_ratio'] - 1:+.1%} per iteration "
              "(median of paired iterations)")
    if args.sweep:
        result["sweep"] = [sweep(args.sweep, numeric) for numeric in NUMERICS]
        for row in result["sweep"]:
            print(f"toy2d sweep under {row['numerics']}: {row['stopped']} of {len(row['runs'])} strict runs stopped, "
                  f"worst rounding z {row['worst_rounding_z']:.2f} (limit {ROUNDING_Z:g})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(rows) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
