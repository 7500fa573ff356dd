"""TreeGRPO against the peers' own recipes on one problem and one budget, plus ablations.

Methods: ``treegrpo``, ``branch_grpo``, ``flow_grpo``, ``dance_grpo``, ``mix_grpo`` and ``ddpo``, each
its ``loss.algorithm`` recipe (``docs/recipes.md``) over the model kind's preset.

What is held equal, and what is not:

- Held equal (model scale): prompts per iteration, the learning rate, the number of iterations,
  and images per prompt: the trajectory methods draw as many trajectories per prompt as TreeGRPO's
  tree has leaves (``k^d`` times trees per prompt; 27 on digits). BranchGRPO keeps its own tree shape
  (2-way splits at its four split steps: 16 leaves per prompt), since its leaves are its algorithm.
  Every method takes one optimiser step per ``train.minibatch_parents`` trajectories or tree nodes:
  a trajectory method's minibatch holds all the trained SDE steps of its trajectories, as in
  Flow-GRPO's and DanceGRPO's scripts.
- Each recipe's own (algorithmic) settings are kept: sampling steps (Flow-GRPO 10, DanceGRPO 16,
  MixGRPO 25, BranchGRPO 20), schedule, SDE and noise level, steps trained, clip range and KL
  coefficient. ``ddpo`` and ``treegrpo`` have no peer defaults and keep the preset's.
- Held-out evaluation: ODE samples on the held-out prompts, each policy with its own recipe's
  sampler; the base model is scored under the same sampler, so "diversity kept" (after / before,
  per-prompt, as ``summary.json`` of ``treegrpo train`` stores it) and the reward gain compare like
  with like.

Two comparisons: at the same number of iterations (held-out rewards, the unseen judge, diversity
kept) and at the same wall-clock. The wall-clock budget is the training time of the fastest method's
whole run (mean over seeds), so every method's reward-against-time curve reaches it; each method's
training reward at that budget is the mean reward of its last (up to) three iterations finished by
then, the same smoothing as the final training reward.

Ablations (first seed): tree shape (k, d), the window parameter alpha, the backup estimator at
settings where the weights differ, and the KL coefficient for TreeGRPO and Flow-GRPO. A run whose
resolved configuration equals one already made (e.g. the KL ablation at the recipe's own
coefficient) reuses its result.

    python benchmarks/compare_methods.py --out benchmarks/results     # full: 3 seeds, all ablations
    python benchmarks/compare_methods.py --quick                      # 1 seed, 3 iterations (smoke test)
    treegrpo bench --quick                                            # the same through the CLI

Writes ``compare_methods.json``, ``compare_methods.md`` (tables rendered by
``benchmarks/results_page.py``) and PNG plots to ``--out`` (default ``./bench-results``, with
``--quick`` ``./bench-results/quick``).
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

from treegrpo.benchmarks.results_page import KEPT, kept_columns, render_tables, reward_columns

METHODS = ("treegrpo", "branch_grpo", "flow_grpo", "dance_grpo", "mix_grpo", "ddpo")
# (k, d, trees per prompt): the paper's tree-shape table (leaves 8, 16, 16, 27, 54, 64).
TREE_SHAPES = ((2, 3, 1), (2, 3, 2), (2, 4, 1), (3, 3, 1), (3, 3, 2), (4, 3, 1))
ALPHAS = (0.25, 0.5, 0.75, 1.0)
KL_METHODS = ("treegrpo", "flow_grpo")
KL_COEFS = (0.0, 0.01, 0.15, 0.5)  # Flow-GRPO's 0.01 and the digits preset's 0.15 among them
REWARD_WINDOW = 3  # iterations averaged for a training reward (final, and at the wall-clock budget)
ESTIMATOR_NOTE = (
    "Not compared: logprob_softmax at temperature 1 and leaf, which train as mean here (siblings' softmax "
    "weights depend only on their noise norms and, over mean-reduced log-probs, are uniform to within a few "
    "parts in a thousand; on a regular tree the mean of the children's means is the mean of the leaves); the "
    "rows are mean, max, and logprob_softmax at temperature 1/D, the softmax of sum-reduced log-probs over "
    "the D latent dimensions, whose weights differ.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="digits", help="model.kind of the problem (default: digits)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 iterations, small ablation grid")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to compare (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="iterations per run (default: the preset's; quick: 3)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false", help="skip the ablations")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override applied to every run, over the recipes (repeatable)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="held-out samples per prompt (default: 16; quick: 4)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: ./bench-results, or ./bench-results/quick with --quick)")
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace, scratch: Path):
    """The model kind's preset with the settings every run shares (run folders in ``scratch``, the
    iterations, the user's ``--set``)."""
    from treegrpo.config import preset_config

    config = preset_config(args.kind)
    shared = [f"train.out_dir={scratch}", "train.checkpoint_every=100000", "train.sample_every=100000",
              "train.log_every=100000"]
    if args.iterations is not None:
        shared.append(f"train.iterations={args.iterations}")
    elif args.quick:
        shared.append(f"train.iterations={min(3, config.train.iterations)}")
    return config.override([*shared, *args.set], check_used=False)


def trained_steps_per_trajectory(config) -> int:
    """About how many SDE steps of one trajectory a trajectory recipe trains (1 for trees, whose
    minibatch counts nodes): the SDE steps (all, less an ODE last step; the window for a sliding
    sampler) times ``loss.timestep_fraction`` as :func:`treegrpo.algos.batch.select_steps` rounds it."""
    from treegrpo.recipes import recipe as algorithm

    recipe = algorithm(config.loss.algorithm)
    if recipe.tree:
        return 1
    sampling, loss = config.sampling, config.loss
    sde = sampling.depth if recipe.sampler == "sliding" else sampling.num_steps - (sampling.last_step == "ode")
    fraction = loss.timestep_fraction
    kept = round(fraction * sde) if loss.timestep_selection == "random" else int(sde * fraction)
    return max(1, kept)


def method_overrides(name: str, base, user: Sequence[str]) -> list[str]:
    """The assignments that make ``base`` run ``name``'s recipe at the benchmark's shared scale.

    The recipe's defaults come with ``loss.algorithm``; then the held-equal settings (images per
    prompt for trajectory recipes, the minibatch of whole trajectories), then the user's ``--set``,
    which wins over both.
    """
    from treegrpo.recipes import recipe as algorithm

    overrides = [f"loss.algorithm={name}"]
    if not algorithm(name).tree:
        sampling = base.sampling
        leaves = sampling.branching ** sampling.depth * sampling.trees_per_prompt
        overrides.append(f"sampling.group_size={leaves}")
    recipe = base.override([*overrides, *user], check_used=False)
    steps = trained_steps_per_trajectory(recipe)
    if steps > 1:
        overrides.append(f"train.minibatch_parents={base.train.minibatch_parents * steps}")
    return [*overrides, *user]


def plan(args: argparse.Namespace, base, latent_size: int) -> list[dict[str, Any]]:
    """Every run: ``{group, name, seed, overrides}``."""
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    runs = [{"group": "methods", "name": name, "seed": seed, "overrides": method_overrides(name, base, args.set)}
            for seed in seeds for name in args.methods]
    if not args.ablations:
        return runs
    seed = seeds[0]  # an ablation's own setting comes after the user's --set: it is what the group varies
    tree = method_overrides("treegrpo", base, args.set)
    shapes = ((2, 3, 1), (3, 3, 1)) if args.quick else TREE_SHAPES
    for k, d, trees in shapes:
        runs.append({"group": "tree_shape", "name": f"k={k},d={d},trees={trees}", "seed": seed,
                     "overrides": [*tree, f"sampling.branching={k}", f"sampling.depth={d}",
                                   f"sampling.trees_per_prompt={trees}"]})
    for alpha in (ALPHAS[:2] if args.quick else ALPHAS):
        runs.append({"group": "alpha", "name": f"alpha={alpha}", "seed": seed,
                     "overrides": [*tree, f"sampling.alpha={alpha}"]})
    estimators = [("mean", []), ("max", []),
                  (f"logprob_softmax,T=1/{latent_size}", ["loss.estimator=logprob_softmax",
                                                          f"loss.temperature={1 / latent_size!r}"])]
    for name, settings in (estimators[::2] if args.quick else estimators):
        runs.append({"group": "estimator", "name": name, "seed": seed,
                     "overrides": [*tree, *(settings or [f"loss.estimator={name}"])]})
    for method in (m for m in KL_METHODS if m in args.methods):
        overrides = method_overrides(method, base, args.set)
        own = base.override(overrides, check_used=False).loss.kl_coef  # the recipe's: reuses the methods run
        for coef in sorted({0.0, own} if args.quick else {*KL_COEFS, own}):
            runs.append({"group": "kl", "name": f"{method},kl={coef:g}", "seed": seed,
                         "overrides": [*overrides, f"loss.kl_coef={coef}"]})
    return runs


def run_one(config, spec: dict[str, Any], eval_samples: int, before_cache: dict[str, dict[str, float]],
            done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Train one configuration from the base model; return its curves, accounting and held-out scores.

    ``before_cache`` holds the base model's held-out scores per (seed, evaluation sampler); ``done``
    the results per resolved configuration, so a repeated configuration is not trained twice.
    """
    from treegrpo.algos.run_summary import diversity_kept
    from treegrpo.algos.trainer import Trainer
    from treegrpo.problems import build_problem

    out = Path(config.train.out_dir) / "runs" / f"{spec['group']}-{spec['name']}-seed{spec['seed']}".replace("=", "")
    config = config.override([*spec["overrides"], f"train.seed={spec['seed']}"], check_used=False)
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key in done:
        return {**done[key], **spec, "reused": f"{done[key]['group']}/{done[key]['name']}"}
    config = config.override([f"train.out_dir={out}"], check_used=False)
    trainer = Trainer(build_problem(config), config)
    sampling = config.sampling
    sampler = json.dumps([spec["seed"], config.eval.num_steps or sampling.num_steps, sampling.schedule,
                          sampling.shift, eval_samples])
    if sampler not in before_cache:
        before_cache[sampler] = trainer.evaluate(samples_per_prompt=eval_samples)
    start = time.perf_counter()
    history = trainer.fit(progress=False)
    wall = time.perf_counter() - start
    after = trainer.evaluate(samples_per_prompt=eval_samples)
    keys = ("reward_mean", "seconds", "images", "nfe_sampled", "edges_trained", "forward_rows", "backward_rows")
    per_iteration = [h["seconds"] for h in history]
    result = {
        **spec,
        "config": config.to_dict(),
        "history": [{key: h.get(key, 0.0) for key in keys} for h in history],
        "wall_seconds": wall,
        "seconds_per_iteration": statistics.median(per_iteration[1:] or per_iteration),
        "before": before_cache[sampler],
        "after": after,
        "diversity_kept": diversity_kept(before_cache[sampler], after),
    }
    done[key] = result
    return result


def over_seeds(values: Sequence[float]) -> list[float]:
    """``[mean, population std]`` (std 0 for one value)."""
    return [statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0]


def reward_at(history: list[dict[str, float]], budget: float) -> tuple[int, float | None]:
    """Iterations finished within ``budget`` seconds of training, and the mean training reward of the
    last :data:`REWARD_WINDOW` of them (None if none finished)."""
    clock, done = 0.0, 0
    for entry in history:
        clock += entry["seconds"]
        if clock > budget * (1 + 1e-9):
            break
        done += 1
    if done == 0:
        return 0, None
    return done, statistics.fmean(h["reward_mean"] for h in history[max(0, done - REWARD_WINDOW):done])


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One row per (group, name), means and stds over seeds; and the wall-clock comparison's budget."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["group"], run["name"]), []).append(run)
    table = []
    for (group, name), members in grouped.items():
        config = members[0]["config"]
        row: dict[str, Any] = {"group": group, "name": name, "seeds": len(members),
                               "algorithm": config["loss"]["algorithm"], "num_steps": config["sampling"]["num_steps"],
                               "kl_coef": config["loss"]["kl_coef"]}
        for key in (k for k in members[0]["after"] if k.startswith("eval/")):
            row[key] = over_seeds([m["after"][key] for m in members])
            row[f"before_{key}"] = over_seeds([m["before"][key] for m in members])
        for measure in members[0]["diversity_kept"]:
            row[f"{KEPT}{measure}"] = over_seeds([m["diversity_kept"][measure] for m in members])
        row["final_train_reward"] = over_seeds(
            [statistics.fmean(h["reward_mean"] for h in m["history"][-REWARD_WINDOW:]) for m in members])
        row["seconds_per_iteration"] = over_seeds([m["seconds_per_iteration"] for m in members])
        every = [h for m in members for h in m["history"]]
        for key in ("nfe_sampled", "backward_rows", "images"):
            row[f"{key.removesuffix('_sampled')}_per_iteration"] = statistics.fmean(h[key] for h in every)
        row["images_per_prompt"] = row["images_per_iteration"] / config["sampling"]["prompts_per_iteration"]
        row["wall_seconds"] = over_seeds([m["wall_seconds"] for m in members])
        table.append(row)
    methods = [row for row in table if row["group"] == "methods"]
    if not methods:
        return table, None
    train_seconds = {(r["name"], r["seed"]): sum(h["seconds"] for h in r["history"])
                     for r in runs if r["group"] == "methods"}
    mean_seconds = {row["name"]: statistics.fmean(s for (name, _), s in train_seconds.items() if name == row["name"])
                    for row in methods}
    fastest = min(mean_seconds, key=mean_seconds.get)
    budget = mean_seconds[fastest]
    for row in methods:
        reached = [reward_at(r["history"], budget) for r in runs if r["group"] == "methods" and r["name"] == row["name"]]
        row["iterations_at_budget"] = statistics.fmean(done for done, _ in reached)
        rewards = [reward for _, reward in reached if reward is not None]
        row["train_reward_at_budget"] = over_seeds(rewards) if len(rewards) == len(reached) else None
    wallclock = {"budget_seconds": budget, "fastest": fastest,
                 "definition": (f"training time of the fastest method's whole run ({fastest}, mean over seeds); each "
                                f"method's training reward there is the mean over its last {REWARD_WINDOW} "
                                "iterations finished within the budget (training rewards: each recipe's own SDE "
                                "samples)")}
    return table, wallclock


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown: a header of the settings, then every table of
    :func:`~treegrpo.benchmarks.results_page.render_tables`."""
    meta = data["meta"]
    held = meta["held_equal"]
    lines = [f"# Method comparison on `{meta['kind']}`", "",
             (f"{meta['iterations']} iterations per run, seeds {meta['seeds']}; held equal: {held['prompts_per_iteration']} "
              f"prompts per iteration, {held['images_per_prompt']} images per prompt (branch_grpo: its own tree), "
              f"lr {held['lr']:g}; held-out: {meta['eval_samples']} ODE samples per held-out prompt, each method's "
              f"own sampler. Command: `{meta['command']}`. Total {meta['total_seconds']:.0f} s on {meta['device']}."),
             ""]
    titles = {"methods": f"Methods at the same number of iterations ({meta['iterations']})",
              "wallclock": "Methods at the same wall-clock", "kl": "KL ablation", "tree_shape": "Tree shape (TreeGRPO)",
              "alpha": "Window alpha (TreeGRPO)", "estimator": "Backup estimator (TreeGRPO)"}
    notes = {"wallclock": f"Budget: {meta['wallclock']['definition']}." if "wallclock" in meta else "",
             "estimator": meta["estimator_note"]}
    for name, text in render_tables(data).items():
        lines += [f"## {titles[name]}", ""]
        if notes.get(name):
            lines += [notes[name], ""]
        lines += [text, ""]
    return "\n".join(lines)


def plot_reward_vs_diversity(table: list[dict[str, Any]], path: Path) -> Path | None:
    """The reward-versus-diversity frontier: held-out reward (and the unseen judge) against the share of
    the base's per-prompt diversity kept; one point per method (mean ± std over seeds), the KL ablation
    as a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r["group"] in ("methods", "kl")]
    kept, rewards = kept_columns(rows), reward_columns(rows)
    if not kept or not rewards:
        return None
    diversity = kept[0]
    panels = [rewards[0], *(["eval/judge"] if "eval/judge" in rewards[1:] else [])]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), constrained_layout=True, squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        methods = [r for r in rows if r["group"] == "methods"]
        for colour, row in enumerate(methods):
            axis.errorbar([row[diversity][0]], [row[key][0]], xerr=[row[diversity][1]], yerr=[row[key][1]], fmt="o",
                          color=f"C{colour}", label=row["name"], capsize=3)
            axis.plot([1.0], [row[f"before_{key}"][0]], "*", color=f"C{colour}", markersize=9, alpha=0.5)
        colours = {row["name"]: f"C{index}" for index, row in enumerate(methods)}
        for method in dict.fromkeys(r["name"].split(",")[0] for r in rows if r["group"] == "kl"):
            ablation = sorted((r for r in rows if r["group"] == "kl" and r["name"].startswith(f"{method},")),
                              key=lambda r: r["kl_coef"])
            axis.plot([r[diversity][0] for r in ablation], [r[key][0] for r in ablation], "--", marker="s", alpha=0.7,
                      color=colours.get(method), label=f"{method}: KL ablation (seed 0)")
            for r in ablation:
                axis.annotate(f"kl {r['kl_coef']:g}", (r[diversity][0], r[key][0]), textcoords="offset points",
                              xytext=(4, 4), fontsize=7)
        axis.set(xlabel=f"per-prompt {diversity[len(KEPT):]} diversity kept (after / before)",
                 ylabel=f"held-out {key[5:]}", title=f"{key[5:]} vs diversity (stars: base model, same sampler)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot(runs: list[dict[str, Any]], table: list[dict[str, Any]], out: Path, budget: float | None) -> list[Path]:
    """Reward against wall-clock (with the budget) and against images, time per iteration, the
    ablations, and the reward-versus-diversity frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = [r for r in runs if r["group"] == "methods"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for colour, name in enumerate(dict.fromkeys(r["name"] for r in methods)):
        members = [r for r in methods if r["name"] == name]
        length = min(len(m["history"]) for m in members)
        reward = [statistics.fmean(m["history"][i]["reward_mean"] for m in members) for i in range(length)]
        clock = [statistics.fmean(sum(h["seconds"] for h in m["history"][: i + 1]) for m in members) for i in range(length)]
        images = [statistics.fmean(sum(h["images"] for h in m["history"][: i + 1]) for m in members) for i in range(length)]
        axes[0].plot(clock, reward, color=f"C{colour}", label=name)
        axes[1].plot(images, reward, color=f"C{colour}", label=name)
    if budget is not None:
        axes[0].axvline(budget, color="grey", linestyle=":", label="wall-clock budget")
    axes[0].set(xlabel="wall-clock (s)", ylabel="training reward (mean over seeds)", title="reward vs wall-clock")
    axes[1].set(xlabel="images generated", ylabel="training reward", title="reward vs images")
    rows = [row for row in table if row["group"] == "methods"]
    axes[2].bar([r["name"] for r in rows], [r["seconds_per_iteration"][0] for r in rows],
                yerr=[r["seconds_per_iteration"][1] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    axes[2].set(ylabel="seconds per iteration (median)", title="time per iteration")
    axes[2].tick_params(axis="x", labelrotation=30)
    for axis in axes[:2]:
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    paths.append(out / "compare_methods.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    groups = [g for g in ("tree_shape", "alpha", "estimator", "kl") if any(r["group"] == g for r in table)]
    rewards = reward_columns(table)
    if groups and rewards:
        key = rewards[0]
        figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), constrained_layout=True,
                                    squeeze=False)
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
    frontier = plot_reward_vs_diversity(table, out / "reward_vs_diversity.png")
    return [*paths, frontier] if frontier else paths


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, else ``bench-results`` (``bench-results/quick`` for ``--quick``) in the working
    directory: never the installed package's folder."""
    return args.out or Path.cwd() / ("bench-results/quick" if args.quick else "bench-results")


def main(argv: Sequence[str] | None = None) -> int:
    from treegrpo.problems import build_problem

    args = parse_args(argv)
    out = output_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="treegrpo-bench-"))  # run directories: checkpoints, not results
    try:
        base = base_config(args, scratch)
        latent_size = math.prod(build_problem(base).latent_shape)
        eval_samples = args.eval_samples or (4 if args.quick else 16)
        runs: list[dict[str, Any]] = []
        before_cache: dict[str, dict[str, float]] = {}
        done: dict[str, dict[str, Any]] = {}
        specs = plan(args, base, latent_size)
        start = time.perf_counter()
        for index, spec in enumerate(specs, 1):
            result = run_one(base, spec, eval_samples, before_cache, done)
            runs.append(result)
            key = next((k for k in result["after"] if k.startswith("eval/")), "iteration")
            reused = f" (same config as {result['reused']})" if "reused" in result else ""
            print(f"[{index}/{len(specs)}] {spec['group']:<10} {spec['name']:<22} seed {spec['seed']}: "
                  f"{key} {result['before'].get(key, math.nan):.3f} -> {result['after'][key]:.3f}, "
                  f"{result['seconds_per_iteration']:.2f} s/it, {result['wall_seconds']:.0f} s{reused}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table, wallclock = summarise(runs)
    meta = {
        "kind": args.kind, "quick": args.quick, "seeds": sorted({r["seed"] for r in runs}),
        "iterations": base.train.iterations, "eval_samples": eval_samples,
        "held_equal": {"prompts_per_iteration": base.sampling.prompts_per_iteration, "lr": base.optim.lr,
                       "iterations": base.train.iterations,
                       "images_per_prompt": base.sampling.branching ** base.sampling.depth
                       * base.sampling.trees_per_prompt,
                       "minibatch": f"{base.train.minibatch_parents} trajectories or tree nodes per optimiser step"},
        "not_held_equal": ("each recipe's sampling steps, schedule, SDE, steps trained, clip range and KL coefficient; "
                           "branch_grpo's images per prompt (its own tree: 2-way splits at 4 steps, 16 leaves)"),
        "estimator_note": ESTIMATOR_NOTE.replace("1/D", f"1/D = 1/{latent_size}"),
        "command": " ".join(["python benchmarks/compare_methods.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": time.perf_counter() - start, "torch": torch.__version__,
        "device": f"CPU, {torch.get_num_threads()} threads",
    }
    if wallclock is not None:
        meta["wallclock"] = wallclock
    data = {"meta": meta, "table": table, "runs": runs}
    (out / "compare_methods.json").write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    (out / "compare_methods.md").write_text(text + "\n")
    plot(runs, table, out, wallclock["budget_seconds"] if wallclock else None)
    print(text)
    print(f"wrote {out}/compare_methods.{{json,md,png}}, ablations.png, reward_vs_diversity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
