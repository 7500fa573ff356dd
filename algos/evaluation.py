"""``treegrpo eval``: score held-out samples of the starting weights, a LoRA and/or a checkpoint with
every configured reward, print the paper's table (HPSv2.1, ImageReward, Aesthetic, CLIPScore first)
and write JSON.

Every policy is sampled from the same noise (``eval.seed``), so a row's difference from the base
row is a paired comparison: its standard error comes from per-prompt differences and is usually
far smaller than either row's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from treegrpo.config import Config
from treegrpo.envs.models import Cond
from treegrpo.envs.precision import model_precision
from treegrpo.problems import Problem

# The paper's evaluation columns, in its order, and how the table titles them.
PAPER_COLUMNS = {"hpsv2": "HPSv2.1", "imagereward": "ImageReward", "aesthetic": "Aesthetic", "clipscore": "CLIPScore"}
OTHER_TITLES = {"pickscore": "PickScore"}
DIVERSITY_PREFIX = "diversity/"  # per-prompt diversity columns, after the rewards


@dataclass
class HeldOutScores:
    """Scores of held-out samples: ``scores [L, m]`` (one column per ``names``) for prompts ``prompt_ids [L]``,
    and per-prompt ``diversity`` measures (name to ``[Q]``, prompts in ascending id)."""

    names: tuple[str, ...]
    scores: Tensor
    prompt_ids: Tensor
    samples_per_prompt: int
    seed: int
    diversity: dict[str, Tensor] = field(default_factory=dict)

    def per_prompt(self) -> Tensor:
        """``[Q, m]`` mean score of each prompt (rows in ascending prompt id)."""
        prompts, index = torch.unique(self.prompt_ids, return_inverse=True)
        sums = torch.zeros(prompts.numel(), self.scores.shape[1], dtype=self.scores.dtype)
        counts = torch.zeros(prompts.numel(), 1, dtype=self.scores.dtype)
        sums.index_add_(0, index, self.scores)
        counts.index_add_(0, index, torch.ones_like(self.scores[:, :1]))
        return sums / counts

    def columns(self) -> dict[str, Tensor]:
        """Every reported quantity per prompt: each reward's prompt mean, then ``diversity/<name>``."""
        prompts = self.per_prompt()
        out = {name: prompts[:, j] for j, name in enumerate(self.names)}
        out.update({f"{DIVERSITY_PREFIX}{name}": values.double().cpu() for name, values in self.diversity.items()})
        return out

    def means(self) -> dict[str, float]:
        """Mean of each reward over every sample, and of each diversity measure over prompts."""
        out = {name: float(self.scores[:, j].mean()) for j, name in enumerate(self.names)}
        out.update({f"{DIVERSITY_PREFIX}{name}": float(values.double().mean()) for name, values in self.diversity.items()})
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Per reward and diversity measure: the mean, the std (over samples for rewards, over prompts
        for diversity), and the standard error over prompts (``sem``)."""
        out = {}
        for name, values in self.columns().items():
            spread = self.scores[:, self.names.index(name)] if name in self.names else values
            out[name] = {"mean": float(spread.mean()), "std": float(spread.std(unbiased=False)), "sem": _sem(values)}
        return out

    def paired_difference(self, base: HeldOutScores) -> dict[str, dict[str, float]]:
        """Per column: mean of ``self - base`` over prompts and its standard error (same noise, so paired)."""
        if self.names != base.names or not torch.equal(self.prompt_ids, base.prompt_ids):
            raise ValueError("base: scores of other rewards or prompts cannot be paired")
        mine, theirs = self.columns(), base.columns()
        return {name: {"mean": float((mine[name] - theirs[name]).mean()), "sem": _sem(mine[name] - theirs[name])}
                for name in mine if name in theirs}


def held_out_prompts(problem: Problem, seed: int) -> tuple[Cond, Tensor]:
    """``problem.eval_prompts()``, or, for a problem without held-out prompts, the first training
    iteration's prompts drawn with ``seed``."""
    if problem.eval_prompts is not None:
        return problem.eval_prompts()
    return problem.prompts(0, torch.Generator().manual_seed(seed))


@torch.no_grad()
def held_out_scores(problem: Problem, config: Config, samples_per_prompt: int | None = None,
                    seed: int | None = None) -> HeldOutScores:
    """Every evaluation reward of ``samples_per_prompt`` ODE samples of each held-out prompt.

    Uses ``problem.eval_prompts``, ``problem.eval_reward`` and ``problem.eval_transition`` when
    the problem has them (else one iteration of training prompts, the training reward and
    transition). Defaults come from ``config.eval``. Same seed, same noise: scores of different
    policies compare them on identical starting latents.
    """
    from treegrpo.envs import sample_forest

    options = config.eval
    samples_per_prompt = samples_per_prompt or options.samples_per_prompt
    if seed is None:
        seed = options.seed if options.seed >= 0 else config.train.seed + 1
    device = torch.device(problem.device)
    generator = torch.Generator(device).manual_seed(seed)
    cond, prompt_ids = held_out_prompts(problem, config.train.seed)
    model = problem.model
    was_training = model.training
    model.eval()
    try:
        with model_precision(config.train.precision, device):  # the policy as training runs it
            rollout = sample_forest(model, problem.eval_transition or problem.transition, cond, sde_steps=(),
                                    branching=(), trees_per_prompt=samples_per_prompt, latent_shape=problem.latent_shape,
                                    num_prompts=int(prompt_ids.shape[0]), generator=generator,
                                    max_batch=config.sampling.max_batch or None, device=device)
    finally:
        model.train(was_training)
    score = problem.eval_reward or problem.reward
    names = list(problem.eval_reward_names if problem.eval_reward is not None else problem.reward_names)
    leaf_prompts = prompt_ids[rollout.leaf_cond_index]
    columns = score(rollout.final, leaf_prompts).reshape(rollout.final.shape[0], -1).double().cpu()
    names += [f"reward_{j}" for j in range(len(names), columns.shape[1])]
    measured = problem.eval_diversity is not None and samples_per_prompt > 1  # diversity needs two samples a prompt
    diversity = problem.eval_diversity(rollout.final, leaf_prompts) if measured else {}
    return HeldOutScores(tuple(names), columns, leaf_prompts.cpu(), samples_per_prompt, seed,
                         {name: values.double().cpu() for name, values in diversity.items()})


def _sem(values: Tensor) -> float:
    return float(values.std() / values.numel() ** 0.5) if values.numel() > 1 else float("nan")


def column_order(names: Sequence[str]) -> list[str]:
    """The paper's four columns first (those present), then the other rewards in their given order,
    then the diversity measures."""
    rest = [name for name in names if name not in PAPER_COLUMNS]
    return ([name for name in PAPER_COLUMNS if name in names] + [name for name in rest if not name.startswith(DIVERSITY_PREFIX)]
            + [name for name in rest if name.startswith(DIVERSITY_PREFIX)])


def paper_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], titles: Mapping[str, str]) -> str:
    """One line of ``mean ± sem`` per policy under the column titles, its paired difference from the
    base row below it. ``rows`` as :func:`run_eval` writes them (``policy``, ``rewards``, ``vs_base``)."""
    def cell(stats: Mapping[str, float], sign: str = "") -> str:
        return f"{stats['mean']:{sign}.4f} ± {stats['sem']:.4f}"

    label_width = max([len("policy"), len("  vs base")] + [len(row["policy"]) for row in rows])
    width = max([len(cell({"mean": -9.0, "sem": 0.0}, "+")) + 2] + [len(titles.get(c, c)) + 2 for c in columns])
    lines = [f"{'policy':<{label_width}}" + "".join(f"{titles.get(c, c):>{width}}" for c in columns)]
    for row in rows:
        lines.append(f"{row['policy']:<{label_width}}" + "".join(f"{cell(row['rewards'][c]):>{width}}" for c in columns))
        if "vs_base" in row:
            lines.append(f"{'  vs base':<{label_width}}" + "".join(f"{cell(row['vs_base'][c], '+'):>{width}}"
                                                                  for c in columns))
    return "\n".join(lines)
