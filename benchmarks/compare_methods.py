"""TreeGRPO against trajectory GRPO, MixGRPO and DDPO on one problem and one budget, plus ablations.

Every method gets the same prompts per iteration, the same NFE per trajectory, the same number of
images per prompt (``k^d``) and the same number of iterations, for each seed; trajectory methods
take their optimiser steps over whole trajectories as their reference implementations do (see
:func:`method_overrides`). For each run the
script records reward against iterations, wall-clock and images generated, the time per
iteration, the sampling/training accounting (NFE, edges, forward/backward rows), and held-out
rewards (prompts never used in training, every reward) before and after. Ablations (one seed):
tree shape (k, d), the window parameter alpha, and the backup estimator.

    python benchmarks/compare_methods.py                      # full: 3 seeds, the embedded digits default
    python benchmarks/compare_methods.py --quick              # 1 seed, a few iterations (smoke test, < 5 min)
    treegrpo bench --quick                                    # the same through the CLI

Writes ``<out>/compare_methods.json``, ``<out>/compare_methods.md`` and PNG plots in ``<out>``;
the committed full results are in ``benchmarks/results/`` and discussed in ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from treegrpo.benchmarks import RESULTS

METHODS = ("treegrpo", "grpo", "dancegrpo", "mixgrpo", "ddpo")
# grpo: Flow-GRPO (its SDE on every step); dancegrpo: the same algorithm in DanceGRPO's setting (below)
DANCEGRPO = ("sampling.transition=dance_sde", "sampling.noise_level=0.3", "sampling.schedule=dancegrpo",
             "loss.timestep_fraction=0.6", "sampling.shared_noise=true")
"""DanceGRPO's published setting: its constant-noise SDE at eta 0.3, its shifted linspace schedule, 60% of
the steps trained per iteration, and one initial noise per prompt's group (``init_same_noise``)."""
# (k, d, trees per prompt): the paper's tree-shape table (leaves 8, 16, 16, 27, 54, 64).
TREE_SHAPES = ((2, 3, 1), (2, 3, 2), (2, 4, 1), (3, 3, 1), (3, 3, 2), (4, 3, 1))
ALPHAS = (0.25, 0.5, 0.75, 1.0)
ESTIMATORS = ("logprob_softmax", "mean", "leaf")
KL_METHODS = ("treegrpo", "grpo")  # the KL ablation: no KL, and three coefficients (the preset's among them)
KL_COEFS = (0.0, 0.15, 0.5, 1.5)
DIVERSITY = "eval/diversity/"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="digits", help="model.kind of the problem (default: digits)")
    parser.add_argument("--quick", action="store_true", help="1 seed, few iterations, small ablation grid")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to compare (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per run (default: the preset's)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false", help="skip the ablations")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override applied to every run (repeatable)")
    parser.add_argument("--eval-samples", type=int, default=None, help="held-out samples per prompt")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default: {RESULTS}, or {RESULTS / 'quick'} with --quick)")
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace, scratch: Path):
    """The model kind's preset with the benchmark's shared overrides (same budget for everyone)."""
    from treegrpo.presets import preset_config

    config = preset_config(args.kind)
    shared = [f"train.out_dir={scratch}", "train.checkpoint_every=100000", "train.sample_every=100000",
              "train.log_every=100000"]
    if args.iterations is not None:
        shared.append(f"train.iterations={args.iterations}")
    elif args.quick:
        shared.append(f"train.iterations={min(3, config.train.iterations)}")
    return config.override([*shared, *args.set])


def method_overrides(name: str, config) -> list[str]:
    """``name``'s algorithm; trajectory methods take minibatches of whole trajectories.

    As in Flow-GRPO and DanceGRPO, a trajectory baseline's optimiser step covers every trained SDE
    step of its trajectories (``T`` for GRPO and DDPO, the window's ``d`` for MixGRPO), so each
    method makes one step per ``train.minibatch_parents`` sampled trajectories or tree nodes rather
    than ``T`` times as many steps on single edges.
    """
    steps = config.sampling.num_steps
    steps_per_trajectory = {"grpo": steps, "dancegrpo": round(0.6 * steps), "ddpo": steps,
                            "mixgrpo": config.sampling.depth}.get(name, 1)
    overrides = ["loss.algorithm=grpo", *DANCEGRPO] if name == "dancegrpo" else [f"loss.algorithm={name}"]
    if name != "treegrpo":  # as many trajectories per prompt as the tree has leaves
        overrides.append(f"sampling.group_size={config.sampling.branching ** config.sampling.depth}")
    if steps_per_trajectory > 1:
        overrides.append(f"train.minibatch_parents={config.train.minibatch_parents * steps_per_trajectory}")
    return overrides


def plan(args: argparse.Namespace, config) -> list[dict[str, Any]]:
    """Every run: (group, name, seed, overrides)."""
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    runs = [{"group": "methods", "name": name, "seed": seed, "overrides": method_overrides(name, config)}
            for seed in seeds for name in args.methods]
    if not args.ablations:
        return runs
    shapes = ((2, 3, 1), (3, 3, 1)) if args.quick else TREE_SHAPES
    alphas = ALPHAS[:2] if args.quick else ALPHAS
    estimators = ESTIMATORS[1:] if args.quick else ESTIMATORS
    seed = seeds[0]
    for k, d, trees in shapes:
        runs.append({"group": "tree_shape", "name": f"k={k},d={d},trees={trees}", "seed": seed,
                     "overrides": [f"sampling.branching={k}", f"sampling.depth={d}",
                                   f"sampling.trees_per_prompt={trees}"]})
    for alpha in alphas:
        runs.append({"group": "alpha", "name": f"alpha={alpha}", "seed": seed, "overrides": [f"sampling.alpha={alpha}"]})
    for estimator in estimators:
        runs.append({"group": "estimator", "name": estimator, "seed": seed, "overrides": [f"loss.estimator={estimator}"]})
    for method in (m for m in KL_METHODS if m in args.methods):
        for coef in (KL_COEFS[:2] if args.quick else KL_COEFS):
            runs.append({"group": "kl", "name": f"{method},kl={coef:g}", "seed": seed,
                         "overrides": [*method_overrides(method, config), f"loss.kl_coef={coef}"]})
    return runs


def run_one(config, spec: dict[str, Any], eval_samples: int, before_cache: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Train one configuration from the base model; return its curves, accounting and held-out rewards."""
    from treegrpo.algos.trainer import Trainer

    from treegrpo.problems import build_problem

    out = Path(config.train.out_dir) / "runs" / f"{spec['group']}-{spec['name']}-seed{spec['seed']}".replace("=", "")
    config = config.override([*spec["overrides"], f"train.seed={spec['seed']}", f"train.out_dir={out}"])
    trainer = Trainer(build_problem(config), config)
    seed = spec["seed"]
    if seed not in before_cache:
        before_cache[seed] = trainer.evaluate(samples_per_prompt=eval_samples)
    start = time.perf_counter()
    history = trainer.fit(progress=False)
    wall = time.perf_counter() - start
    after = trainer.evaluate(samples_per_prompt=eval_samples)
    keys = ("reward_mean", "seconds", "images", "nfe_sampled", "edges_trained", "forward_rows", "backward_rows")
    per_iteration = [h["seconds"] for h in history]
    return {
        **spec,
        "config": config.to_dict(),
        "history": [{key: h.get(key, 0.0) for key in keys} for h in history],
        "wall_seconds": wall,
        "seconds_per_iteration": statistics.median(per_iteration[1:] or per_iteration),
        "before": before_cache[seed],
        "after": after,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (group, name): means and stds over seeds."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        rows.setdefault((run["group"], run["name"]), []).append(run)
    table = []
    for (group, name), members in rows.items():
        def over_seeds(values: list[float]) -> tuple[float, float]:
            return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)

        eval_keys = [k for k in members[0]["after"] if k.startswith("eval/")]
        row = {"group": group, "name": name, "seeds": len(members)}
        for key in eval_keys:
            row[key] = over_seeds([m["after"][key] for m in members])
            row[f"before_{key}"] = over_seeds([m["before"][key] for m in members])
        row["final_train_reward"] = over_seeds([statistics.fmean(h["reward_mean"] for h in m["history"][-3:])
                                                for m in members])
        row["seconds_per_iteration"] = over_seeds([m["seconds_per_iteration"] for m in members])
        row["nfe_per_iteration"] = statistics.fmean(h["nfe_sampled"] for m in members for h in m["history"])
        row["backward_rows_per_iteration"] = statistics.fmean(h["backward_rows"] for m in members for h in m["history"])
        row["images_per_iteration"] = statistics.fmean(h["images"] for m in members for h in m["history"])
        row["wall_seconds"] = over_seeds([m["wall_seconds"] for m in members])
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown tables, one per group."""
    lines = [f"# Method comparison on `{meta['kind']}`", "",
             (f"{meta['iterations']} iterations per run, seeds {meta['seeds']}, NFE {meta['num_steps']}, "
             f"{meta['prompts_per_iteration']} prompts x {meta['images_per_prompt']} images per iteration; "
             f"held-out: {meta['eval_samples']} ODE samples per held-out prompt. Command: `{meta['command']}`. "
             f"Total {meta['total_seconds']:.0f} s on {meta['device']}."), ""]
    eval_keys = table_columns({k for row in table for k in row if k.startswith("eval/")})
    reference = {row["name"]: row["seconds_per_iteration"][0] for row in table if row["group"] == "methods"}
    baselines = [name for name in ("dancegrpo", "grpo") if name in reference]  # the paper compares with DanceGRPO
    for group in dict.fromkeys(row["group"] for row in table):
        lines += [f"## {group}", ""]
        header = ["run", *[f"held-out {k[5:]}" for k in eval_keys], "train reward (last 3)", "s / iteration",
                  "NFE / iteration", "backward rows / it"]
        if group == "methods":
            header += [f"speed vs {name}" for name in baselines]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in table if r["group"] == group):
            cells = [row["name"]]
            for key in eval_keys:
                mean, std = row[key]
                base = row[f"before_{key}"][0]
                note = f"{mean / base:.0%} of base" if key.startswith(DIVERSITY) else f"base {base:.3f}"
                cells.append(f"{mean:.3f} ± {std:.3f} ({note})")
            cells.append(f"{row['final_train_reward'][0]:.3f} ± {row['final_train_reward'][1]:.3f}")
            cells.append(f"{row['seconds_per_iteration'][0]:.2f}")
            cells.append(f"{row['nfe_per_iteration']:.0f}")
            cells.append(f"{row['backward_rows_per_iteration']:.0f}")
            if group == "methods":
                cells += [f"{reference[name] / row['seconds_per_iteration'][0]:.2f}x" for name in baselines]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def table_columns(keys: set[str]) -> list[str]:
    """The held-out columns in reading order: rewards (the unseen judge after the trained ones), then
    diversity; a reward that is another's negative (JPEG incompressibility) is left out."""
    order = ["eval/classifier", "eval/judge", "eval/aesthetic_proxy", "eval/jpeg_compressibility"]
    rewards = [k for k in order if k in keys] + sorted(k for k in keys - set(order) if not k.startswith(DIVERSITY)
                                                       and k != "eval/jpeg_incompressibility")
    return rewards + sorted(k for k in keys if k.startswith(DIVERSITY))


def plot_reward_vs_diversity(table: list[dict[str, Any]], path: Path, reward: str = "eval/classifier",
                             judge: str = "eval/judge", diversity: str = f"{DIVERSITY}pixel") -> Path | None:
    """Held-out reward (and the unseen judge) against the share of the base's per-prompt diversity kept:
    one point per method (mean ± std over seeds), the KL ablation as a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r["group"] in ("methods", "kl") and diversity in r and reward in r]
    if not rows:
        return None
    panels = [key for key in (reward, judge) if key in rows[0]]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), constrained_layout=True, squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        base_reward = rows[0][f"before_{key}"][0]
        axis.plot([1.0], [base_reward], "k*", markersize=12, label="base model")
        for colour, row in enumerate(r for r in rows if r["group"] == "methods"):
            kept = row[diversity][0] / row[f"before_{diversity}"][0]
            axis.errorbar([kept], [row[key][0]], yerr=[row[key][1]],
                          xerr=[row[diversity][1] / row[f"before_{diversity}"][0]], fmt="o", color=f"C{colour}",
                          label=row["name"], capsize=3)
        for method in dict.fromkeys(r["name"].split(",")[0] for r in rows if r["group"] == "kl"):
            ablation = [r for r in rows if r["group"] == "kl" and r["name"].startswith(f"{method},")]
            kept = [r[diversity][0] / r[f"before_{diversity}"][0] for r in ablation]
            axis.plot(kept, [r[key][0] for r in ablation], "--", marker="s", alpha=0.7, label=f"{method}: KL ablation")
            for x, r in zip(kept, ablation, strict=True):
                axis.annotate(r["name"].split("kl=")[1], (x, r[key][0]), textcoords="offset points", xytext=(4, 4),
                              fontsize=7)
        axis.set(xlabel=f"per-prompt {diversity.removeprefix(DIVERSITY)} diversity kept (after / before)",
                 ylabel=f"held-out {key[5:]}", title=f"{key[5:]} vs diversity")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot(runs: list[dict[str, Any]], table: list[dict[str, Any]], out: Path) -> list[Path]:
    """Reward vs wall-clock and vs images (the efficiency frontier), time per iteration, ablations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = [r for r in runs if r["group"] == "methods"]
    names = list(dict.fromkeys(r["name"] for r in methods))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for colour, name in enumerate(names):
        members = [r for r in methods if r["name"] == name]
        length = min(len(m["history"]) for m in members)
        reward = [statistics.fmean(m["history"][i]["reward_mean"] for m in members) for i in range(length)]
        clock = [statistics.fmean(sum(h["seconds"] for h in m["history"][: i + 1]) for m in members) for i in range(length)]
        images = [statistics.fmean(sum(h["images"] for h in m["history"][: i + 1]) for m in members) for i in range(length)]
        axes[0].plot(clock, reward, color=f"C{colour}", label=name)
        axes[1].plot(images, reward, color=f"C{colour}", label=name)
    axes[0].set(xlabel="wall-clock (s)", ylabel="training reward (mean over seeds)", title="reward vs wall-clock")
    axes[1].set(xlabel="images generated", ylabel="training reward", title="reward vs images")
    rows = [row for row in table if row["group"] == "methods"]
    axes[2].bar([r["name"] for r in rows], [r["seconds_per_iteration"][0] for r in rows],
                yerr=[r["seconds_per_iteration"][1] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    axes[2].set(ylabel="seconds per iteration (median)", title="time per iteration")
    for axis in axes[:2]:
        axis.legend()
        axis.grid(alpha=0.3)
    paths.append(out / "compare_methods.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    groups = [g for g in ("tree_shape", "alpha", "estimator") if any(r["group"] == g for r in table)]
    if groups:
        key = next((k for k in table[0] if k.startswith("eval/")), None)
        figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), constrained_layout=True, squeeze=False)
        for axis, group in zip(axes[0], groups, strict=True):
            rows = [row for row in table if row["group"] == group]
            axis.bar([r["name"] for r in rows], [r[key][0] for r in rows], color="C0")
            axis.axhline(rows[0][f"before_{key}"][0], color="grey", linestyle="--", label="base model")
            axis.set(title=f"ablation: {group}", ylabel=f"held-out {key[5:]}")
            axis.tick_params(axis="x", labelrotation=30)
            axis.legend()
        paths.append(out / "ablations.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    columns = table_columns({k for row in table for k in row if k.startswith("eval/")})
    rewards = [k for k in columns if not k.startswith(DIVERSITY)]
    diversity = [k for k in columns if k.startswith(DIVERSITY)]
    frontier = None
    if rewards and diversity:
        frontier = plot_reward_vs_diversity(table, out / "reward_vs_diversity.png", reward=rewards[0],
                                            diversity=diversity[0])
    return [*paths, frontier] if frontier else paths


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="treegrpo-bench-"))  # run directories: checkpoints, not results
    config = base_config(args, scratch)
    eval_samples = args.eval_samples or (4 if args.quick else 16)
    runs, before_cache = [], {}
    specs = plan(args, config)
    start = time.perf_counter()
    for index, spec in enumerate(specs, 1):
        result = run_one(config, spec, eval_samples, before_cache)
        runs.append(result)
        key = next((k for k in result["after"] if k.startswith("eval/")), "iteration")
        print(f"[{index}/{len(specs)}] {spec['group']:<10} {spec['name']:<16} seed {spec['seed']}: "
              f"{key} {result['before'].get(key, math.nan):.3f} -> {result['after'][key]:.3f}, "
              f"{result['seconds_per_iteration']:.2f} s/it, {result['wall_seconds']:.0f} s", flush=True)
    table = summarise(runs)
    meta = {
        "kind": args.kind, "quick": args.quick, "seeds": sorted({r["seed"] for r in runs}),
        "iterations": config.train.iterations, "num_steps": config.sampling.num_steps,
        "prompts_per_iteration": config.sampling.prompts_per_iteration,
        "images_per_prompt": config.sampling.branching ** config.sampling.depth, "eval_samples": eval_samples,
        "command": " ".join(["python benchmarks/compare_methods.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": time.perf_counter() - start, "torch": torch.__version__,
        "device": f"CPU, {torch.get_num_threads()} threads",
    }
    (out / "compare_methods.json").write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=1) + "\n")
    text = markdown(table, meta)
    (out / "compare_methods.md").write_text(text + "\n")
    plot(runs, table, out)
    shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
