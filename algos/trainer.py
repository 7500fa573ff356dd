"""One trainer for every algorithm: sample, score, advantages, clipped updates, log, checkpoint.

:meth:`Trainer.step` is one iteration, read top to bottom: draw prompts; sample a forest (no grad)
with the current policy, which is the behaviour policy of this iteration, and score its leaves;
turn rewards into per-edge advantages; run ``inner_epochs`` passes over shuffled minibatches of
parents (one policy forward per parent serves all its child edges); report. All randomness flows
from named generators that go into checkpoints, so a resumed run continues bit for bit (on CPU
with ``train.deterministic``, and the same batch shapes: other shapes round differently).

The pieces live in their own modules: how prompts are shared over ranks and chunks
(:mod:`~treegrpo.algos.sharding`), the optimiser and the update loop (:mod:`~treegrpo.algos.update`),
metrics, tensorboard and grids (:mod:`~treegrpo.algos.reporting`), checkpoints
(:mod:`~treegrpo.algos.checkpoint`), and the ``treegrpo train`` entry point (:mod:`~treegrpo.algos.entrypoints`).
Under ``torchrun`` every rank runs this loop on its shard; trees and rewards are gathered for the
advantages, gradients are shared by DDP or FSDP2, and rank 0 alone logs and writes files.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any, Self

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from treegrpo.algos.advantages import clip_advantages
from treegrpo.algos.batch import select_steps
from treegrpo.algos.build import build_advantage, build_loss, build_sampler
from treegrpo.algos.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_dir,
    config_changes,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from treegrpo.algos.distributed import (
    Ranks,
    all_true,
    barrier,
    full_tensor,
    init_distributed,
    mean_over_ranks,
    optimizer_state_full,
    optimizer_state_sharded,
    shard_like,
    wrap_for_training,
)
from treegrpo.algos.evaluation import held_out_scores
from treegrpo.algos.interfaces import Advantage, EdgeLoss, Sampler
from treegrpo.algos.model_setup import kl_reference, prepare_model
from treegrpo.algos.pruning import prune_edges, pruned_depths, pruning_active
from treegrpo.algos.reporting import Scalars, iteration_metrics, save_grid
from treegrpo.algos.run_folder import check_space, claim_run_folder
from treegrpo.algos.scoring import sample_and_score
from treegrpo.algos.sharding import Shard, gather_forest, minibatch_rows, piece_seed, prompt_rows, shard_prompts
from treegrpo.algos.state_schema import optimizer_shape_problem
from treegrpo.algos.update import Optimisation, optimise
from treegrpo.config import Config, ConfigError
from treegrpo.envs import OnPolicyError, ParentBatch, Rollout, parent_batch
from treegrpo.envs.models import Cond
from treegrpo.envs.numerics import (
    OnPolicyStats,
    OnPolicyWarning,
    active_dropout,
    diagnose,
    edge_sensitivity,
    on_policy_stats,
    rounding_unit,
)
from treegrpo.envs.precision import model_precision
from treegrpo.errors import TreegrpoError
from treegrpo.problems import Problem


class NonFiniteTrainingError(TreegrpoError, FloatingPointError):
    """A reward, advantage, loss or gradient was NaN or inf; the last good state was saved."""


WIDTH_PRUNING = {"off": 0, "branch": 1, "extremes": 2}
"""``loss.width_pruning`` to BranchGRPO's ``width_pruning_mode``."""


class Trainer:
    """Train ``problem.model`` with the algorithm ``config.loss.algorithm`` (or the objects given).

    ``sampler``, ``advantage`` and ``loss`` override the recipe's choices: passing
    ``loss=ReinforceLoss(model, transition)`` is the one-line swap of the objective. Under
    ``torchrun`` the process group is joined here (``ranks`` overrides the environment's) and the
    loss's ``model`` becomes the DDP wrapper of ``problem.model``. The problem's step count must be
    the config's (build it with :func:`treegrpo.problems.build_problem`).

    Examples:
        >>> import tempfile
        >>> from treegrpo.algos import Config, ReinforceLoss, Trainer
        >>> from treegrpo.problems import build_problem
        >>> config = Config().override(["model.kind=toy2d", "sampling.num_steps=8", "loss.clip_range=0.2",
        ...                             "train.iterations=2", f"train.out_dir={tempfile.mkdtemp()}"])
        >>> history = Trainer(build_problem(config), config).fit(progress=False)  # TreeGRPO, k=3, d=3
        >>> len(history), history[-1]["edges_trained"] > 0
        (2, True)
        >>> problem = build_problem(config)  # the objective swapped, the rest unchanged
        >>> trainer = Trainer(problem, config.override([f"train.out_dir={tempfile.mkdtemp()}"]),
        ...                   loss=ReinforceLoss(problem.model, problem.transition))
        >>> len(trainer.fit(progress=False))
        2
    """

    def __init__(
        self,
        problem: Problem,
        config: Config,
        *,
        sampler: Sampler | None = None,
        advantage: Advantage | None = None,
        loss: EdgeLoss | None = None,
        reference: nn.Module | str | None = None,
        ranks: Ranks | None = None,
        read_only: bool = False,
    ) -> None:
        self.problem, self.config = problem, config.validate()
        train = config.train
        if problem.transition.num_steps != config.sampling.num_steps:
            raise ConfigError(f"sampling.num_steps: {config.sampling.num_steps}, but the problem samples "
                              f"{problem.transition.num_steps} steps; build the problem from the config "
                              "(treegrpo.problems.build_problem(config)) so the two agree")
        self.ranks = ranks or init_distributed(train.dist_backend, problem.device)
        # A run claims its folder (checked, locked, tidied); ``read_only`` (treegrpo eval) only reads checkpoints.
        self.folder = None if read_only else claim_run_folder(train, main=self.ranks.is_main)
        prompts = config.sampling.prompts_per_iteration
        if prompts % self.ranks.world_size:
            raise ConfigError(f"sampling.prompts_per_iteration: {prompts} prompts do not split evenly over "
                              f"{self.ranks.world_size} ranks; use a multiple of {self.ranks.world_size}")
        if train.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(train.seed)
        self.device = torch.device(problem.device)
        self.generators = {
            name: torch.Generator(self.device if name == "sample" else "cpu").manual_seed(train.seed * 7919 + offset)
            for offset, name in enumerate(("prompts", "sample", "shuffle"))
        }
        self.model = problem.model
        if reference is None and config.loss.kl_coef > 0:
            reference = kl_reference(self.model, adapters=train.lora_rank > 0)  # adapters come with prepare_model
        self.setup = prepare_model(self.model, train)
        self.policy = wrap_for_training(self.model, train.parallel, self.device)  # what the loss calls
        self.sampler: Sampler = sampler or build_sampler(config, problem)
        self.advantage: Advantage = advantage or build_advantage(config)
        self.loss = loss or build_loss(config, problem, reference)
        if self.policy is not self.model:
            if self.loss.model is not self.model:
                raise ValueError("loss: under DDP the loss must hold problem.model as its `model` attribute "
                                 "(the trainer swaps in the DDP wrapper)")
            self.loss.model = self.policy
        self.named_params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        self.optimisation = Optimisation(self.named_params, config.optim, train.ema_decay)
        self.run_dir = Path(train.out_dir)
        self.scalars = Scalars(self.run_dir, self.ranks.is_main)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []  # held-out results logged during the run (train.eval_every)
        self._start_of_iteration: dict[str, Any] | None = None  # RNG and tracker state before this iteration
        self._saved: int | None = None  # the iteration this trainer last wrote a checkpoint of
        self._warned: set[str] = set()  # kinds of on-policy findings already printed
        if self.folder is not None and self.ranks.is_main:
            check_space(self.folder.path / "checkpoints", self.checkpoint_bytes(), train.keep_checkpoints)
        if train.resume and not self.resume():
            if self.folder is None or not self.folder.unfinished:
                raise ConfigError(f"train.resume: there is no checkpoint and no earlier run in {self.run_dir} to "
                                  "continue; check train.out_dir, or drop --train.resume to start a new run there")
            print(f"train.resume: {self.run_dir} holds a run stopped before its first checkpoint; starting it afresh")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimisation.optimizer

    def checkpoint_bytes(self) -> int:
        """About how many bytes one checkpoint takes: the trained weights, AdamW's two moments, the EMA."""
        weights = sum(p.numel() * p.element_size() for p in self.named_params.values())
        moments = 2 * sum(p.numel() * 4 for p in self.named_params.values())
        return weights + moments + (weights if self.optimisation.ema else 0) + (1 << 20)

    def close(self) -> None:
        """Flush the logs and release the run folder (the lock also goes when the process ends)."""
        self.scalars.flush()
        if self.folder is not None:
            self.folder.release()
            self.folder = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def precision_context(self):
        """The one precision context of every policy forward: sampling, the on-policy check, the loss."""
        return model_precision(self.config.train.precision, self.device)

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, float]:
        """Run one iteration and return its metrics."""
        cfg, start = self.config, time.perf_counter()
        self._begin_iteration()
        all_cond, all_prompt_ids = self.problem.prompts(self.iteration, self.generators["prompts"])
        shard = shard_prompts(int(all_prompt_ids.shape[0]), self.ranks, cfg.sampling.chunks)
        cond, prompt_ids = shard.rows(all_cond), all_prompt_ids[shard.lo:shard.hi]

        # 1. sample this rank's prompts with the behaviour policy and score the leaves
        rollout, rewards = self.sample_and_score(cond, prompt_ids, shard)
        forest, rewards, leaf_prompts, first_node = gather_forest(
            self.ranks, rollout.tree, rewards, prompt_ids[rollout.leaf_cond_index], shard.lo)
        self.guard(rewards, "reward")  # waits for the device: the sampling phase ends here
        sampled = time.perf_counter()

        # 2. per-edge advantages over every rank's groups, then this rank's parent batch
        result = self.advantage(forest, rewards, leaf_prompts)
        advantage = clip_advantages(result.advantage, cfg.loss.adv_clip)
        self.guard(advantage, "advantage")
        mine = advantage[first_node:first_node + rollout.tree.num_nodes]
        batch = select_steps(parent_batch(rollout.tree, mine, cond), cfg.loss.timestep_fraction,
                             self.generators["shuffle"], cfg.loss.timestep_selection)
        batch = self.prune(batch, rollout)
        epochs = minibatch_rows(batch, shard, cfg.train.minibatch_parents, cfg.train.inner_epochs,
                                self.generators["shuffle"])
        counters = {"nfe_sampled": float(rollout.nfe), "images": float(rollout.final.shape[0])}
        checked: dict[str, float] = {}
        if cfg.train.check_on_policy != "off" and cfg.train.rescore_on_policy:  # the full pass, when asked
            checked = self.check_on_policy(batch, epochs[0], cond, rollout)
            counters["forward_rows_check"] = float(batch.batch_size[0])
        advantaged = time.perf_counter()

        def first_minibatches(scored: list[tuple[ParentBatch, TensorDictBase]]) -> None:
            if not checked:  # the ratios of what was scored before the first step: no extra forward
                checked.update(self.judge_on_policy(self.stats_of(scored), rollout))

        # 3. clipped updates over minibatches of parents
        terms, work = optimise(self.loss, self.policy, batch, [rows for epoch in epochs for rows in epoch],
                               self.optimisation, accumulation=cfg.optim.grad_accumulation,
                               precision=self.precision_context, guard=self.guard,
                               before_update=first_minibatches if cfg.train.check_on_policy != "off" else None)
        counters.update(work)
        if self.ranks.distributed:  # loss terms averaged, counters summed over ranks
            terms = mean_over_ranks(terms, self.device)
            counters = {k: v * self.ranks.world_size for k, v in mean_over_ranks(counters, self.device).items()}

        # 4. report
        if self.sampler.schedule is not None:
            self.sampler.schedule.update(mean_reward=float(rewards.mean()))
        metrics = iteration_metrics(self.iteration, rewards, self.problem.reward_names, forest, result,
                                    [terms, checked, counters], rollout.sde_steps[0] if rollout.sde_steps else -1,
                                    (start, sampled, advantaged, time.perf_counter()),
                                    self.optimisation.scheduler.get_last_lr()[0])
        self.iteration += 1
        self.history.append({k.replace("onpolicy/", "onpolicy_"): v for k, v in metrics.items()
                             if "/" not in k or k.startswith("onpolicy/")})
        return metrics

    def prune(self, batch: ParentBatch, rollout: Rollout) -> ParentBatch:
        """BranchGRPO's depth and width pruning of this iteration's edges (``branch_grpo``; off unless
        ``loss.prune_depths`` or ``loss.width_pruning`` is set): pruned edges are sampled and scored
        for the advantages but not trained."""
        loss, sampling = self.config.loss, self.config.sampling
        if self.config.loss.recipe.sampler != "branch" or not (loss.prune_depths or loss.width_pruning != "off"):
            return batch
        if not pruning_active(self.iteration, self.config.train.iterations, loss.prune_fraction):
            return batch
        depths = pruned_depths(loss.prune_depths, self.iteration, slide=loss.prune_every > 0,
                               interval=max(loss.prune_every, 1),
                               stop_depth=None if loss.prune_stop_depth < 0 else loss.prune_stop_depth,
                               split_steps=sampling.split_steps) if loss.prune_depths else frozenset()
        return prune_edges(batch, rollout.tree, depths=depths, width_mode=WIDTH_PRUNING[loss.width_pruning],
                           width_ratio=loss.width_ratio, split_steps=sampling.split_steps)

    def _begin_iteration(self) -> None:
        """Remember the RNG and tracker state from before the iteration draws anything (the guard's last good state)."""
        self._start_of_iteration = {"rng": capture_rng(self.generators), "advantage": self._advantage_state()}
        self.optimisation.begin()

    def sample_and_score(self, cond: Cond, prompt_ids: Tensor, shard: Shard) -> tuple[Rollout, Tensor]:
        """Sample the shard's pieces (each from its own generator when there are several) in eval
        mode and score them, a piece on a worker thread while the next samples (``sampling.chunks``)."""
        seed = piece_seed(self.generators["sample"], shard.num_pieces)
        pieces = list(shard.pieces)

        def sample_piece(a: int, b: int) -> Rollout:
            generator = self.generators["sample"]
            if seed is not None:  # several pieces: each draws from its own stream
                generator = torch.Generator(self.device).manual_seed(seed + shard.first_piece + pieces.index((a, b)))
            with self.precision_context():
                return self.sampler.sample(prompt_rows(cond, a, b, shard.hi - shard.lo), epoch=self.iteration,
                                           latent_shape=self.problem.latent_shape, num_prompts=b - a,
                                           generator=generator, device=self.device)

        was_training = self.model.training
        self.model.eval()
        try:
            return sample_and_score(sample_piece, self.problem.reward, prompt_ids, chunks=pieces,
                                    background=self.config.sampling.background_scoring, device=self.device)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ state
    def state_dict(self, *, start_of_iteration: bool = False) -> dict[str, Any]:
        """Everything except the weights that a resumed run needs to continue exactly (sharded
        optimiser state is gathered whole, a collective under FSDP). ``start_of_iteration`` takes the
        RNG and tracker state from before the current iteration drew anything (the non-finite guard)."""
        window = self.sampler.schedule
        start = self._start_of_iteration if start_of_iteration and self._start_of_iteration else {}
        return {
            "iteration": self.iteration,
            "optimizer": optimizer_state_full(self.optimisation.optimizer.state_dict()),
            "scheduler": self.optimisation.scheduler.state_dict(),
            "ema": self.optimisation.ema.state_dict() if self.optimisation.ema else None,
            "rng": start.get("rng") or capture_rng(self.generators),
            "window": window.state_dict() if window else {},
            "advantage": start.get("advantage") or self._advantage_state(),
            "history": self.history,
            "evaluations": self.evaluations,
            "config": self.config.to_dict(),
        }

    def _advantage_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.advantage.state_dict())

    def save(self, *, start_of_iteration: bool = False) -> Path:
        """Write a checkpoint of the current state (atomically, once: rank 0 writes full tensors that
        any world size can resume) and return its folder; every rank must call it. Saving an
        iteration this trainer has saved already returns that checkpoint (nothing has changed)."""
        where = checkpoint_dir(self.run_dir, self.iteration)
        if self._saved == self.iteration:
            return where
        weights = {name: full_tensor(p) for name, p in self.named_params.items()}
        state = self.state_dict(start_of_iteration=start_of_iteration)
        if self.ranks.is_main:
            save_checkpoint(self.run_dir, self.iteration, weights, state, keep=self.config.train.keep_checkpoints)
        barrier()
        self._saved = self.iteration
        return where

    def resume(self, path: str | Path | None = None, *, check_config: bool = True) -> bool:
        """Load ``path`` or the run's latest checkpoint; returns ``False`` if there is none.

        With ``check_config`` the checkpoint's configuration must equal this run's except for the
        options that do not change what is trained (:data:`MAY_CHANGE_ON_RESUME`), unless
        ``train.allow_config_change``; then the new optimiser settings replace the saved ones.
        """
        path = Path(path) if path else latest_checkpoint(self.run_dir)
        if path is None:
            return False
        weights, state = load_checkpoint(path)
        changed = config_changes(state.get("config", {}), self.config) if check_config else []
        if changed and not self.config.train.allow_config_change:
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            raise ConfigError(f"train.resume: {path} was trained with other settings ({shown}); resume with its settings, "
                              "or pass --train.allow_config_change to continue with yours")
        missing = sorted(set(self.named_params) - set(weights))
        if missing:
            raise CheckpointError(f"checkpoint: {path} lacks trained parameters {missing[:3]} (another model, or "
                                  "LoRA against full fine-tuning?)")
        with torch.no_grad():
            for name, p in self.named_params.items():
                if tuple(weights[name].shape) != tuple(full_tensor(p).shape):
                    raise CheckpointError(f"checkpoint: {path} holds {name} of shape {tuple(weights[name].shape)}, "
                                          f"the model {tuple(full_tensor(p).shape)}")
                p.copy_(shard_like(weights[name], p))
        problem = optimizer_shape_problem(state["optimizer"], [tuple(full_tensor(p).shape) for p in self.named_params.values()])
        if problem is not None:
            raise CheckpointError(f"checkpoint: {path / 'state.json'} {problem}; expected a state of this model")
        try:  # a state.json that passed the schema but does not fit this run's optimiser, RNGs or tracker
            self.optimisation.optimizer.load_state_dict(optimizer_state_sharded(state["optimizer"], list(self.named_params.values())))
            self.optimisation.scheduler.load_state_dict(state["scheduler"])
            if changed:  # allowed: the user's optimiser settings win over the checkpoint's
                self.optimisation.set_options(self.config.optim)
            if self.optimisation.ema and state["ema"] is not None:
                self.optimisation.ema.load_state_dict(state["ema"])
            restore_rng(state["rng"], self.generators)
            window = self.sampler.schedule
            if window and state["window"]:
                window.load_state_dict(state["window"])
            self.advantage.load_state_dict(state["advantage"])
        except TreegrpoError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as error:
            raise CheckpointError(f"checkpoint: {path / 'state.json'} does not fit this run ({type(error).__name__} "
                                  "while restoring it); expected a state written by this run's trainer") from None
        self.iteration, self.history = state["iteration"], list(state["history"])
        self.evaluations = list(state.get("evaluations", []))
        self._saved = self.iteration if path.parent == self.run_dir / "checkpoints" else None
        return True

    def stats_of(self, scored: list[tuple[ParentBatch, TensorDictBase]]) -> OnPolicyStats | None:
        """The on-policy statistics of minibatches the loss scored with unchanged weights: their
        ``log_ratio`` against the rounding scale ``ratio_sensitivity`` of the run's arithmetic
        (``None`` when the loss reports no ``log_ratio``)."""
        if not scored or any("log_ratio" not in terms.keys() for _, terms in scored):  # noqa: SIM118 - TensorDict has no `in`
            return None
        has_scale = all("ratio_sensitivity" in terms.keys() for _, terms in scored)  # noqa: SIM118
        return on_policy_stats(
            torch.cat([terms["log_ratio"] for _, terms in scored]),
            torch.cat([minibatch.mask for minibatch, _ in scored]),
            torch.cat([terms["ratio_sensitivity"] for _, terms in scored]) if has_scale else None,
            rounding_unit(self.config.train.precision, self.device),
            self.loss.clip_bounds)

    def judge_on_policy(self, stats: OnPolicyStats | None, rollout: Rollout) -> dict[str, float]:
        """Tell rounding from a bug (:func:`~treegrpo.envs.numerics.diagnose`) and act on
        ``train.check_on_policy``: ``strict`` raises :class:`~treegrpo.envs.OnPolicyError` (on every
        rank together, before any step), ``warn`` prints one line per kind of finding, once.
        Rounding that puts edges outside the clip range is a warning in both modes. Returns the
        ``onpolicy/*`` metrics."""
        train = self.config.train
        if stats is None:
            self._warn_once("no_log_ratio", f"{type(self.loss).__name__} reports no log_ratio, so the trainer has no "
                            "on-policy statistics; set train.rescore_on_policy=true for the full check")
            return {}
        problem = diagnose(stats, precision=train.precision, sampled_precision=rollout.precision,
                           dropout=active_dropout(self.model), other_model=self._other_model())
        if not all_true(problem is None or train.check_on_policy != "strict", self.device):
            raise OnPolicyError(f"iteration {self.iteration}: importance ratio: "
                                f"{problem or 'another rank found sampling and the loss out of agreement'} "
                                "(train.check_on_policy=strict; warn continues)")
        if problem is not None:
            self._warn_once(problem.split(":")[0], f"iteration {self.iteration}: importance ratio: {problem} "
                            "(train.check_on_policy=warn: training continues; strict stops)")
        elif stats.clipped_fraction > 0:
            self._warn_once("clipped", (
                f"iteration {self.iteration}: rounding (u = {stats.unit:.2g} at train.precision={train.precision}) puts "
                f"{stats.clipped_fraction:.1%} of edges outside the clip range before any update (ratio std "
                f"{stats.ratio_std:.2g}, loss.clip_range {self._clip_low():g}); PPO clips them as if off-policy: "
                "widen loss.clip_range or compute in higher precision"))
        return stats.metrics()

    def _clip_low(self) -> float:
        """The loss's lower clip bound ``eps_low`` (0 for a loss that clips nothing)."""
        bounds = self.loss.clip_bounds
        return bounds[0] if bounds is not None else 0.0

    def _other_model(self) -> str | None:
        """How the sampler's and the loss's models differ, when they are different modules (a copy that
        one side updates and the other does not); ``None`` when they are the same."""
        sampler, loss = self.sampler.model, self.loss.model
        if _unwrapped(sampler) is _unwrapped(loss):
            return None
        return (f"the sampler samples with one {type(_unwrapped(sampler)).__name__} and the loss scores with another "
                "module; give both the same model object")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned and self.ranks.is_main:
            warnings.warn(message, OnPolicyWarning, stacklevel=3)
        self._warned.add(kind)

    @torch.no_grad()
    def check_on_policy(self, batch: ParentBatch, minibatches: list[Tensor], cond: Cond,
                        rollout: Rollout) -> dict[str, float]:
        """The full check (``train.rescore_on_policy``): before any update, re-score every row of the
        batch the way the update will (the loss's own :meth:`~treegrpo.algos.EdgeLoss.log_probs`, in
        its minibatches, under the run's precision), at the cost of one extra forward per parent,
        then judge the statistics as :meth:`judge_on_policy` does."""
        scored = []
        with self.precision_context():
            for rows in minibatches:
                minibatch = batch[rows]
                new, mean, std = self.loss.log_probs(self.loss.loss_input(minibatch))
                sensitivity = edge_sensitivity(self.problem.transition, minibatch.latent, minibatch.sample,
                                               mean, std, minibatch.step)
                scored.append((minibatch, TensorDict(
                    {"log_ratio": new - minibatch.log_prob, "ratio_sensitivity": sensitivity}, batch_size=[])))
        return self.judge_on_policy(self.stats_of(scored), rollout)

    def guard(self, value: Tensor, name: str) -> None:
        """Stop, on every rank together, when ``value`` is not finite (or false) on any rank.

        If no optimiser step has changed the weights in this iteration, the state from before the
        iteration is the last good one and is saved (with the RNG as it was then, so a resume repeats
        the iteration exactly), unless a checkpoint of this iteration exists already; otherwise
        nothing is written and the error names the last checkpoint on disk."""
        ok = bool(value.all()) if value.dtype == torch.bool else bool(torch.isfinite(value).all())
        if all_true(ok, self.device):
            return
        bad = int((~value).sum()) if value.dtype == torch.bool else int((~torch.isfinite(value)).sum())
        self.optimisation.optimizer.zero_grad(set_to_none=True)
        where = checkpoint_dir(self.run_dir, self.iteration)
        if not self.optimisation.stepped and not where.exists() and self.folder is not None:
            self.save(start_of_iteration=True)
            last = f"the state before this iteration is saved in {where}"
        else:
            latest = latest_checkpoint(self.run_dir) if self.ranks.is_main else None
            why = "the weights changed in this iteration before the failure, so it is not saved" if self.optimisation.stepped else (
                "a checkpoint of this iteration exists already")
            last = f"{why}; the last good state is {latest or 'not saved (no checkpoint yet)'}"
        raise NonFiniteTrainingError(
            f"iteration {self.iteration}: {name} is not finite ({bad} of {value.numel()} values on rank "
            f"{self.ranks.rank}); {last}"
        )

    # ------------------------------------------------------------------ the loop, evaluation, grids
    def fit(self, iterations: int | None = None, *, progress: bool = True) -> list[dict[str, float]]:
        """Run until ``train.iterations`` (or ``iterations`` more); logs, grids and checkpoints as
        configured. Every rank calls it; only rank 0 shows progress and writes."""
        from tqdm.auto import tqdm

        train = self.config.train
        stop = train.iterations if iterations is None else self.iteration + iterations
        bar = tqdm(total=stop, initial=self.iteration, disable=not (progress and self.ranks.is_main),
                   desc=self.config.loss.algorithm)
        try:
            while self.iteration < stop:
                metrics = self.step()
                if self.iteration % train.log_every == 0:
                    self.scalars.write({k: v for k, v in metrics.items() if k != "iteration"}, int(metrics["iteration"]))
                bar.update(1)
                bar.set_postfix(progress_terms(metrics))
                if self.iteration % train.sample_every == 0:
                    self.save_grid()
                if train.eval_every and self.iteration % train.eval_every == 0 and self.iteration < stop:
                    self.evaluate(log=True)
                if self.iteration % train.checkpoint_every == 0 or self.iteration == stop:
                    self.save()
        finally:
            bar.close()
            self.scalars.flush()
        return self.history

    def evaluate(self, samples_per_prompt: int | None = None, seed: int | None = None, *,
                 log: bool = False) -> dict[str, float]:
        """Every evaluation reward (mean over held-out ODE samples of the current policy) and every
        per-prompt diversity measure (mean over prompts), see
        :func:`~treegrpo.algos.evaluation.held_out_scores`, as ``{"eval/<reward>": mean,
        "eval/diversity/<name>": mean, "eval_samples": n, "iteration": i}``. With ``log`` the values
        also go to tensorboard at the current iteration and to :attr:`evaluations`."""
        scores = held_out_scores(self.problem, self.config, samples_per_prompt, seed)
        result = {f"eval/{name}": value for name, value in scores.means().items()}
        result["eval_samples"] = float(scores.scores.shape[0])
        result["iteration"] = float(self.iteration)
        if log:
            self.evaluations.append(result)
            self.scalars.write({k: v for k, v in result.items() if k.startswith("eval/")}, self.iteration)
        return result

    @torch.no_grad()
    def save_grid(self, name: str | None = None, num_prompts: int = 10) -> Path | None:
        """Save a PNG grid of ODE samples of the current policy (see :func:`~treegrpo.algos.reporting.save_grid`);
        rank 0 writes it under ``samples/`` and gets the path."""
        path = self.run_dir / "samples" / (name or f"iter-{self.iteration:06d}.png") if self.ranks.is_main else None
        return save_grid(self.problem, self.model, path, seed=self.config.train.seed,
                         max_batch=self.config.sampling.max_batch or None, precision=self.precision_context,
                         num_prompts=num_prompts)


def progress_terms(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's terms: the reward, the loss and throughput, plus the clip fraction and the
    approximate KL only when the loss reports them (REINFORCE clips nothing, so it shows no clip)."""
    terms = {"reward": f"{metrics['reward_mean']:.3f}", "loss": f"{metrics['loss']:.3g}"}
    if "clip_fraction" in metrics:
        terms["clip"] = f"{metrics['clip_fraction']:.2f}"
    if "approx_kl" in metrics:
        terms["kl"] = f"{metrics['approx_kl']:.2g}"
    terms["img_s"] = f"{metrics['images_per_second']:.1f}"
    return terms


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module under DDP's and torch.compile's wrappers (the one whose weights are trained)."""
    while isinstance(getattr(model, "module", None), nn.Module) or isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = getattr(model, "module", None) or model._orig_mod
    return model


