"""The entry points: ``treegrpo train`` (:func:`run`) and ``treegrpo eval`` (:func:`run_eval`).

:func:`run` builds the problem ``model.kind`` names, measures the starting policy on held-out
prompts, trains, measures again, and writes grids, a reward curve, the summary table and the
trained weights. :func:`run_eval` scores the base weights, a LoRA and a checkpoint on the same
held-out noise and prints the paper's table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from treegrpo.algos.baseline import baseline_key, measure_start, read_baseline, write_baseline
from treegrpo.algos.checkpoint import CheckpointError, latest_checkpoint, weight_shapes
from treegrpo.algos.distributed import barrier
from treegrpo.algos.evaluation import (
    OTHER_TITLES,
    PAPER_COLUMNS,
    HeldOutScores,
    column_order,
    held_out_scores,
    paper_table,
)
from treegrpo.algos.run_folder import claim_run_folder
from treegrpo.algos.run_summary import diversity_kept, plot_reward_curve, summary_table, write_json
from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config
from treegrpo.devices import ranks_from_env
from treegrpo.errors import ConfigError
from treegrpo.families import FAMILIES
from treegrpo.problems import Problem, build_problem


def run(config: Config, *, problem: Problem | None = None, progress: bool = True) -> dict[str, Any]:
    """Entry point of ``treegrpo train``: train, then write grids, a reward curve and a summary.

    The run folder is claimed first, before the model loads (:func:`claim_run_folder`: a folder
    that is unwritable, in use, or holds an earlier run that is neither resumed nor overwritten is
    a one-line error). Held-out rewards of the starting policy are measured once (kept in
    ``eval_before.json`` with what they measured, so a resumed run reports them when its eval
    settings are the same and measures the starting policy again when not: :mod:`~treegrpo.algos.baseline`),
    then again after training; the
    table is printed and the numbers go to ``summary.json``. Returns the summary. Under ``torchrun``
    every rank trains and evaluates (the same held-out samples); rank 0 prints and writes.
    """
    folder = claim_run_folder(config.validate().train, main=ranks_from_env().is_main)
    try:
        problem = problem or build_problem(config)
        key = baseline_key(problem, config)
        before = None
        run_dir = Path(config.train.out_dir)
        if config.train.resume and latest_checkpoint(run_dir) is not None:
            before, why = read_baseline(run_dir / "eval_before.json", key)
            if before is None:  # measured before the checkpoint loads: the starting policy, not the resumed one
                print(f"eval_before.json: measuring the starting policy again ({'; '.join(why[:4])})", flush=True)
                before = measure_start(problem, config)
                if ranks_from_env().is_main:
                    write_baseline(run_dir / "eval_before.json", key, before)
        with Trainer(problem, config) as trainer:
            return _run(trainer, config, progress, key, before)
    finally:
        folder.release()


def _run(trainer: Trainer, config: Config, progress: bool, key: dict[str, Any],
         before: dict[str, float] | None) -> dict[str, Any]:
    run_dir, main = trainer.run_dir, trainer.ranks.is_main
    barrier()  # every rank has looked before rank 0 writes
    if trainer.iteration == 0:  # a fresh start measures its own starting policy
        before = trainer.evaluate(log=True)
        if main:
            write_baseline(run_dir / "eval_before.json", key, before)
        trainer.save_grid("before.png")
    elif before is None:
        raise ConfigError(f"train.resume: {run_dir / 'eval_before.json'} was not measured at the start of this run")
    start = time.perf_counter()
    history = trainer.fit(progress=progress)
    seconds = time.perf_counter() - start
    after = trainer.evaluate(log=True)
    trainer.save_grid("after.png")
    if not main:
        return {"before": before, "after": after}
    if trainer.problem.export is not None:
        if trainer.ranks.distributed and config.train.parallel == "fsdp":
            print(f"train.parallel=fsdp: the full trained weights are in {latest_checkpoint(run_dir)}/model.safetensors")
        else:
            exported = trainer.problem.export(run_dir / "final")
            print("trained weights: " + ", ".join(str(p) for p in exported))
    plot_reward_curve(history, run_dir / "reward_curve.png", {"before": before, "after": after},
                      title=f"{config.loss.algorithm} on {config.model.kind}")
    training = {
        "iterations": float(trainer.iteration),
        "wall_seconds_this_run": seconds,
        "images_generated": sum(h.get("images", 0.0) for h in history),
        "nfe_sampled": sum(h.get("nfe_sampled", 0.0) for h in history),
        "edges_trained": sum(h.get("edges_trained", 0.0) for h in history),
        "final_training_reward": history[-1]["reward_mean"] if history else float("nan"),
        **on_policy_summary(history),
    }
    summary = {"before": before, "after": after, "diversity_kept": diversity_kept(before, after),
               "evaluations": trainer.evaluations, "training": training, "config": config.to_dict()}
    write_json(summary, run_dir / "summary.json")
    print(summary_table(before, after, training))
    print(f"run directory: {run_dir} (samples/, reward_curve.png, summary.json, tensorboard/, checkpoints/)")
    return summary


def run_eval(config: Config, checkpoint: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Entry point of ``treegrpo eval``; returns what it writes to ``eval.out``.

    Rows, in order: ``base`` (the weights at ``model.path``, when ``eval.base``), ``+ lora`` (after
    fusing ``model.lora``), and the checkpoint (``checkpoint``, else the latest in
    ``train.out_dir``, if any), loaded as ``treegrpo train`` would resume it: LoRA fused first.
    The checkpoint's trained parameters are checked against the built model
    (:func:`check_checkpoint_fits`) before anything is sampled. ``config`` is used as given;
    ``treegrpo eval`` layers the checkpoint's own configuration under the user's (:mod:`treegrpo.cli`).
    """
    model = config.model
    run_dir = Path(config.train.out_dir)
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if checkpoint is not None and not checkpoint.exists():
        raise ConfigError(f"--checkpoint: {checkpoint} does not exist")
    problem = build_problem(config, fuse_model_lora=False)
    if model.lora and problem.apply_lora is None:
        raise ConfigError(f"model.lora: model.kind={model.kind} does not take a diffusers LoRA; "
                          "use a diffusers family's kind (treegrpo.families), or evaluate a training checkpoint")
    if checkpoint is not None:  # before any sampling: a checkpoint of another model fails here, in one line
        check_checkpoint_fits(checkpoint, problem.model, config)
    scores: dict[str, HeldOutScores] = {}

    def score(row: str) -> None:
        if progress:
            print(f"scoring {row} ...", flush=True)
        scores[row] = held_out_scores(problem, config)

    if config.eval.base or (not model.lora and checkpoint is None):
        score("base")
    if model.lora:
        problem.apply_lora(model.lora)
        score(f"+ lora {Path(model.lora).name}")
    if checkpoint is not None:  # loaded as training would resume it, reading only safetensors and JSON
        trainer = Trainer(problem, config.override(["train.resume=false"], check_used=False), read_only=True)
        trainer.resume(checkpoint, check_config=False)
        score(f"{'+ ' if model.lora else ''}checkpoint {trainer.iteration}")

    first = next(iter(scores.values()))
    rows = []
    for name, row in scores.items():
        entry: dict[str, Any] = {"policy": name, "rewards": row.summary()}
        if name != "base" and "base" in scores:
            entry["vs_base"] = row.paired_difference(scores["base"])
        rows.append(entry)
    pipeline = model.kind in FAMILIES  # the digits rewards are offline stand-ins: keep their own names
    titles = {**PAPER_COLUMNS, **OTHER_TITLES} if pipeline else {}
    names = list(first.columns())
    columns = column_order(names) if pipeline else names
    result = {
        "rows": rows, "rewards": columns, "prompts": int(torch.unique(first.prompt_ids).numel()),
        "samples_per_prompt": first.samples_per_prompt, "num_steps": config.eval.num_steps or config.sampling.num_steps,
        "seed": first.seed, "checkpoint": str(checkpoint) if checkpoint else None, "lora": model.lora or None,
        "config": config.to_dict(),
    }
    out = Path(config.eval.out) if config.eval.out else run_dir / "eval.json"
    write_json(result, out)
    print(f"held-out: {result['prompts']} prompts x {result['samples_per_prompt']} samples, "
          f"{result['num_steps']} steps, seed {result['seed']} (mean ± standard error over prompts)")
    print(paper_table(rows, columns, titles))
    print(f"wrote {out}")
    return result


def checkpoint_fit_problems(shapes: dict[str, tuple[int, ...]], model: nn.Module, lora_rank: int) -> list[str]:
    """Why a checkpoint's trained parameters (``shapes``: name to shape, :func:`weight_shapes`) do not
    fit ``model`` as the trainer would prepare it (``lora_rank``: ``train.lora_rank``), one entry per
    parameter; empty when they fit.

    Full fine-tuning (``lora_rank`` 0): the checkpoint holds exactly the model's trainable parameters,
    with their shapes. LoRA: every tensor is a peft adapter weight (``<module>.lora_A.<adapter>.weight``)
    of a module the model has, and for a linear module ``lora_A`` is ``[lora_rank, in]`` and ``lora_B``
    ``[out, lora_rank]`` (the adapters are not injected here; which modules get one is checked when
    the checkpoint loads)."""
    problems: list[str] = []
    if lora_rank == 0:
        params = dict(model.named_parameters())
        problems += [f"{name} {shape} is not a parameter of the model"
                     + (" (a LoRA weight: the run set train.lora_rank)" if ".lora_" in name else "")
                     for name, shape in shapes.items() if name not in params]
        for name, p in params.items():
            if p.requires_grad and name not in shapes:
                problems.append(f"{name} {tuple(p.shape)} is missing from the checkpoint")
            elif name in shapes and shapes[name] != tuple(p.shape):
                problems.append(f"{name} is {shapes[name]} in the checkpoint, {tuple(p.shape)} in the model")
        return problems
    for name, shape in shapes.items():
        prefix, marker, rest = name.partition(".lora_")
        if not marker:
            problems.append(f"{name} {shape} is not a LoRA weight (the checkpoint is full fine-tuning; "
                            f"train.lora_rank={lora_rank})")
            continue
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            problems.append(f"{name}: the model has no module {prefix}")
            continue
        if not isinstance(module, nn.Linear):  # peft wraps it: the base layer holds the shape
            module = getattr(module, "base_layer", module)
        if isinstance(module, nn.Linear) and rest.endswith(".weight"):
            expected = {"A": (lora_rank, module.in_features), "B": (module.out_features, lora_rank)}.get(rest[0])
            if expected is not None and shape != expected:
                problems.append(f"{name} is {shape} in the checkpoint, {expected} for train.lora_rank={lora_rank} "
                                f"on the model's {prefix}")
    return problems


def check_checkpoint_fits(checkpoint: str | Path, model: nn.Module, config: Config) -> None:
    """Refuse, in one line naming the checkpoint, ``model.kind`` and the first mismatch, a checkpoint whose
    trained parameters do not fit ``model`` (:func:`checkpoint_fit_problems`); reads only the weights'
    header, so it runs before any sampling or scoring."""
    shapes = weight_shapes(checkpoint)
    problems = checkpoint_fit_problems(shapes, model, config.train.lora_rank)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"checkpoint: {checkpoint} does not fit model.kind={config.model.kind} "
                              f"(train.lora_rank={config.train.lora_rank}): {problems[0]}{more}; evaluate it with "
                              "the settings it was trained with (drop the --model.* or --train.lora_* overrides)")


def on_policy_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """The run's on-policy statistics for the end-of-run table (docs/algos.md, "On-policy statistics
    on real hardware"): the worst ``|ratio - 1|`` and rounding z before any update, and the mean
    share of edges outside the clip range then; nothing when the check was off."""
    def column(name: str) -> list[float]:
        return [h[f"onpolicy_{name}"] for h in history if f"onpolicy_{name}" in h]

    out = {}
    for name, reduce, label in (("max_deviation", max, "onpolicy_max_deviation_worst"),
                                ("rounding_z", max, "onpolicy_rounding_z_worst"),
                                ("clipped_fraction", lambda v: sum(v) / len(v), "onpolicy_clipped_fraction_mean")):
        values = column(name)
        if values:
            out[label] = float(reduce(values))
    return out
