"""One trainer for every algorithm: sample, reward, advantages, clipped updates, checkpoint.

Each iteration: draw prompts; sample a forest (no grad) with the current policy, which is the
behaviour policy of this iteration; score the leaves; turn rewards into per-edge advantages; run
``inner_epochs`` passes over shuffled minibatches of parents (one policy forward per parent serves
all its child edges); log; checkpoint. All randomness flows from named generators that go into
checkpoints, so a resumed run continues bit for bit (on CPU with ``train.deterministic``).

Under ``torchrun`` every rank runs this loop on its shard of the prompts (see
:mod:`~treegrpo.algos.distributed`): trees and rewards are gathered for the advantages, gradients
are shared by DDP or FSDP2, and rank 0 alone logs and writes files.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Self

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from treegrpo.algos.advantages import clip_advantages
from treegrpo.algos.batch import count_edges, parent_batch, select_steps
from treegrpo.algos.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from treegrpo.algos.config import Config, ConfigError, check_reward_names, config_changes
from treegrpo.algos.distributed import (
    Ranks,
    all_true,
    barrier,
    full_tensor,
    gather_rows,
    gradient_sync,
    init_distributed,
    local_device,
    mean_over_ranks,
    optimizer_state_full,
    optimizer_state_sharded,
    ranks_from_env,
    shard_like,
    wrap_for_training,
)
from treegrpo.algos.evaluation import held_out_prompts, held_out_scores
from treegrpo.algos.losses import EdgeLoss, total_loss
from treegrpo.algos.model_setup import prepare_model
from treegrpo.algos.problem import Problem
from treegrpo.algos.recipes import build_advantage, build_loss, build_sampler, check_step_numbers
from treegrpo.algos.run_folder import check_space, claim_run_folder
from treegrpo.algos.scoring import chunk_bounds, sample_and_score
from treegrpo.envs import (
    OnPolicyError,
    Rollout,
    TrajectorySampler,
    TreeSampler,
    WindowSchedule,
    check_on_policy,
    gather_cond,
)
from treegrpo.envs.pipelines import LAYOUTS
from treegrpo.envs.precision import model_precision

import treeadv
from treegrpo.errors import TreegrpoError


class NonFiniteTrainingError(TreegrpoError, FloatingPointError):
    """A reward, advantage, loss or gradient was NaN or inf; the last good state was saved."""


class EMA:
    """Exponential moving average of the trained parameters (kept on their device)."""

    def __init__(self, named_params: dict[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.params = named_params
        self.shadow = {name: p.detach().clone() for name, p in named_params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        """Whole tensors (gathered from FSDP shards), so any world size can load them."""
        return {name: full_tensor(t).clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in state.items():
            self.shadow[name].copy_(shard_like(t, self.shadow[name]))


GRID_MIN_SIDE = 64  # sample grids show each image at least this many pixels wide
ON_POLICY_ATOL = 1e-5  # largest |ratio - 1| the on-policy check accepts before an update


class Trainer:
    """Train ``problem.model`` with the algorithm ``config.loss.algorithm`` (or the objects given).

    ``sampler``, ``advantage`` and ``loss`` override the recipe's choices: passing
    ``loss=ReinforceLoss(model, transition)`` is the one-line swap of the objective. Under
    ``torchrun`` the process group is joined here (``ranks`` overrides the environment's) and the
    loss's ``model`` becomes the DDP wrapper of ``problem.model``.
    """

    def __init__(
        self,
        problem: Problem,
        config: Config,
        *,
        sampler: TreeSampler | TrajectorySampler | None = None,
        advantage: Any = None,
        loss: EdgeLoss | None = None,
        reference: nn.Module | str | None = None,
        ranks: Ranks | None = None,
        read_only: bool = False,
    ) -> None:
        self.problem, self.config = problem, config.validate()
        train = config.train
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
            reference = "disable_adapter" if train.lora_rank > 0 else _frozen_copy(self.model)
        self.setup = prepare_model(self.model, train)
        self.policy = wrap_for_training(self.model, train.parallel, self.device)  # what the loss calls
        self.sampler = sampler or build_sampler(config, problem)
        self.advantage = advantage or build_advantage(config)
        self.loss = loss or build_loss(config, problem, reference)
        if self.policy is not self.model:
            if getattr(self.loss, "model", None) is not self.model:
                raise ValueError("loss: under DDP the loss must hold problem.model as its `model` attribute "
                                 "(the trainer swaps in the DDP wrapper)")
            self.loss.model = self.policy
        self.named_params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if not self.named_params:
            raise ValueError("model: has no parameters with requires_grad=True to train")
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.named_params.values(), lr=o.lr, betas=(o.beta1, o.beta2),
                                           eps=o.eps, weight_decay=o.weight_decay)
        warmup = o.warmup_iterations
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: min(1.0, (it + 1) / warmup) if warmup else 1.0)
        self.ema = EMA(self.named_params, train.ema_decay) if train.ema_decay > 0 else None
        self.run_dir = Path(train.out_dir)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []  # held-out results logged during the run (train.eval_every)
        self._writer = None
        self._start_of_iteration: dict[str, Any] | None = None  # RNG and tracker state before this iteration
        self._stepped = False  # whether an optimiser step changed the weights in this iteration
        self._saved: int | None = None  # the iteration this trainer last wrote a checkpoint of
        if self.folder is not None and self.ranks.is_main:
            check_space(self.folder.path, self.checkpoint_bytes())
        if train.resume and not self.resume():
            raise ConfigError(f"train.resume: there is no checkpoint in {self.run_dir / 'checkpoints'} to continue; "
                              "check train.out_dir, or drop --train.resume to start a new run there")

    def checkpoint_bytes(self) -> int:
        """About how many bytes one checkpoint takes: the trained weights, AdamW's two moments, the EMA."""
        weights = sum(p.numel() * p.element_size() for p in self.named_params.values())
        moments = 2 * sum(p.numel() * 4 for p in self.named_params.values())
        return weights + moments + (weights if self.ema else 0) + (1 << 20)

    def close(self) -> None:
        """Flush the logs and release the run folder (the lock also goes when the process ends)."""
        if self._writer is not None:
            self._writer.flush()
        if self.folder is not None:
            self.folder.release()
            self.folder = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def window(self) -> WindowSchedule | None:
        """The sampler's window schedule, if it has one."""
        schedule = getattr(self.sampler, "window", None) or getattr(self.sampler, "sde_steps", None)
        return schedule if isinstance(schedule, WindowSchedule) else None

    def state_dict(self, *, start_of_iteration: bool = False) -> dict[str, Any]:
        """Everything except the weights that a resumed run needs to continue exactly (sharded
        optimiser state is gathered whole, a collective under FSDP). ``start_of_iteration`` takes the
        RNG and tracker state from before the current iteration drew anything (the non-finite guard)."""
        window = self.window()
        start = self._start_of_iteration if start_of_iteration and self._start_of_iteration else {}
        return {
            "iteration": self.iteration,
            "optimizer": optimizer_state_full(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": start.get("rng") or capture_rng(self.generators),
            "window": window.state_dict() if window else {},
            "advantage": start.get("advantage") or self._advantage_state(),
            "history": self.history,
            "evaluations": self.evaluations,
            "config": self.config.to_dict(),
        }

    def _advantage_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.advantage.state_dict()) if hasattr(self.advantage, "state_dict") else {}

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
        self.optimizer.load_state_dict(optimizer_state_sharded(state["optimizer"], list(self.named_params.values())))
        self.scheduler.load_state_dict(state["scheduler"])
        if changed:  # allowed: the user's optimiser settings win over the checkpoint's
            self._apply_optimizer_config()
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng(state["rng"], self.generators)
        window = self.window()
        if window and state["window"]:
            window.load_state_dict(state["window"])
        if hasattr(self.advantage, "load_state_dict"):
            self.advantage.load_state_dict(state["advantage"])
        self.iteration, self.history = state["iteration"], list(state["history"])
        self.evaluations = list(state.get("evaluations", []))
        self._saved = self.iteration if path.parent == self.run_dir / "checkpoints" else None
        return True

    def _apply_optimizer_config(self) -> None:
        """Set the configured lr, betas, eps and weight decay on every parameter group (after a load)."""
        o = self.config.optim
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(lr=o.lr * factor, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)

    # ------------------------------------------------------------------ one iteration
    def pieces(self, num_prompts: int) -> list[list[tuple[int, int]]]:
        """Each rank's ``[lo, hi)`` ranges of the iteration's prompts: ``world_size`` equal shards,
        each cut into ``sampling.chunks`` pieces. A piece is the unit of sampling noise and of
        minibatch stratification, so ``W`` ranks with ``c`` chunks compute what one process with
        ``W c`` chunks computes."""
        shards = chunk_bounds(num_prompts, self.ranks.world_size)
        return [[(lo + a, lo + b) for a, b in chunk_bounds(hi - lo, self.config.sampling.chunks)] for lo, hi in shards]

    def step(self) -> dict[str, float]:
        """Run one iteration and return its metrics."""
        it, cfg, rank = self.iteration, self.config, self.ranks.rank
        start = time.perf_counter()
        self._start_of_iteration = {"rng": capture_rng(self.generators), "advantage": self._advantage_state()}
        self._stepped = False
        all_cond, all_prompt_ids = self.problem.prompts(it, self.generators["prompts"])
        by_rank = self.pieces(int(all_prompt_ids.shape[0]))
        mine, first_piece, num_pieces = by_rank[rank], sum(map(len, by_rank[:rank])), sum(map(len, by_rank))
        lo, hi = mine[0][0], mine[-1][1]
        cond = _prompt_rows(all_cond, lo, hi, int(all_prompt_ids.shape[0]))
        prompt_ids = all_prompt_ids[lo:hi]
        local_pieces = [(a - lo, b - lo) for a, b in mine]
        sample_seed = self._piece_seed("sample", num_pieces)
        was_training = self.model.training
        self.model.eval()

        def sample_chunk(a: int, b: int) -> Rollout:
            chunk_cond = _prompt_rows(cond, a, b, hi - lo)
            generator = self.generators["sample"]
            if sample_seed is not None:  # several pieces: each draws from its own stream
                generator = torch.Generator(self.device).manual_seed(sample_seed + first_piece + local_pieces.index((a, b)))
            with self.precision_context():
                return self.sampler.sample(chunk_cond, epoch=it, latent_shape=self.problem.latent_shape,
                                           num_prompts=b - a, generator=generator, device=self.device)

        try:
            rollout, rewards = sample_and_score(sample_chunk, self.problem.reward, prompt_ids, chunks=local_pieces,
                                                background=cfg.sampling.background_scoring, device=self.device)
        finally:
            self.model.train(was_training)
        tree = rollout.tree
        leaf_prompts = prompt_ids[rollout.leaf_cond_index]
        forest, rewards, leaf_prompts, first_node = self._gather_forest(tree, rewards, leaf_prompts, lo)
        self._guard(rewards, "reward")  # waits for the device: the sampling phase ends here
        sampled = time.perf_counter()
        result = self.advantage(forest, rewards, leaf_prompts)
        advantage = clip_advantages(result.advantage, cfg.loss.adv_clip)
        self._guard(advantage, "advantage")
        batch = select_steps(parent_batch(tree, advantage[first_node:first_node + tree.num_nodes]),
                             cfg.loss.timestep_fraction, self.generators["shuffle"])
        counters = {"nfe_sampled": float(rollout.nfe), "images": float(rollout.final.shape[0])}
        epochs = self._minibatch_rows(batch, local_pieces, first_piece, num_pieces)
        checked = {}
        if cfg.train.check_on_policy:
            checked = self.check_on_policy(batch, epochs[0], cond, rollout)
            counters["forward_rows_check"] = float(batch.batch_size[0])
        advantaged = time.perf_counter()
        terms = self._optimise(batch, [rows for epoch in epochs for rows in epoch], cond, counters)
        if self.ranks.distributed:  # loss terms averaged, counters summed over ranks
            terms = mean_over_ranks(terms, self.device)
            counters = {k: v * self.ranks.world_size for k, v in mean_over_ranks(counters, self.device).items()}
        window = self.window()
        reward_mean = float(rewards.mean())
        if window is not None:
            window.update(mean_reward=reward_mean)
        elapsed = time.perf_counter() - start
        metrics = {
            "iteration": float(it),
            "reward_mean": reward_mean,
            "reward_std": float(rewards.std(unbiased=False)),
            **self._reward_columns(rewards),
            **terms,
            **checked,
            **counters,
            **self._advantage_by_depth(forest, result),
            "window_start": float(rollout.sde_steps[0]) if rollout.sde_steps else -1.0,
            "seconds": elapsed,
            "seconds_sample": sampled - start,  # prompts, sampling, decoding and rewards
            "seconds_advantage": advantaged - sampled,  # advantages, the batch (and the on-policy check)
            "seconds_update": start + elapsed - advantaged,  # losses, backward passes, optimiser steps
            "images_per_second": counters["images"] / elapsed,
            "lr": self.scheduler.get_last_lr()[0],
        }
        self.iteration += 1
        self.history.append({k: v for k, v in metrics.items() if "/" not in k})
        return metrics

    def _piece_seed(self, stream: str, num_pieces: int) -> int | None:
        """With several pieces, one draw from the shared ``stream`` generator seeds piece ``j``'s
        generator as ``seed + j`` (the same draw on every rank); ``None`` for a single piece, which
        uses the stream itself."""
        if num_pieces == 1:
            return None
        generator = self.generators[stream]
        return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))

    def _gather_forest(self, tree: treeadv.Tree, rewards: Tensor, leaf_prompts: Tensor, first_prompt: int,
                       ) -> tuple[treeadv.Tree, Tensor, Tensor, int]:
        """Every rank's trees (structure, log-probs and steps), leaf rewards and prompt ids, joined in
        rank order, and this rank's first node in the join. One process gets its own back."""
        if not self.ranks.distributed:
            return tree, rewards, leaf_prompts, 0
        counts = gather_rows(torch.tensor([tree.num_nodes], device=tree.parent.device))
        first_node = int(counts[: self.ranks.rank].sum())
        fields = {
            "parent": gather_rows(torch.where(tree.parent >= 0, tree.parent + first_node, -1)),
            "log_prob": gather_rows(tree.log_prob),
            "depth": gather_rows(tree.depth),
            "root": gather_rows(tree.root + first_node),
            "group": gather_rows(tree.group + first_prompt),
            "is_leaf": gather_rows(tree.is_leaf.to(torch.uint8)).bool(),
        }
        size = [fields["parent"].shape[0]]
        payload = TensorDict({"step": gather_rows(tree.payload["step"])}, batch_size=size)
        forest = treeadv.Tree(**fields, payload=payload, batch_size=size)
        return forest, gather_rows(rewards), gather_rows(leaf_prompts), first_node

    def _minibatch_rows(self, batch: TensorDictBase, pieces: list[tuple[int, int]], first_piece: int,
                        num_pieces: int) -> list[Tensor]:
        """Row indices of every minibatch of every inner epoch, in order.

        One piece: a shuffle of all parents cut into ``train.minibatch_parents``. Several pieces:
        each piece's parents are shuffled by the piece's own generator and every minibatch takes
        ``ceil(minibatch_parents / pieces)`` parents from each piece, so a minibatch is the union of
        what the ranks train on together.
        """
        size, epochs, total = self.config.train.minibatch_parents, self.config.train.inner_epochs, batch.batch_size[0]
        seed = self._piece_seed("shuffle", num_pieces)
        if seed is None:  # one piece: every parent, shuffled by the run's own stream
            rows, generators = [torch.arange(total)], [self.generators["shuffle"]]
        else:
            starts = torch.tensor([a for a, _ in pieces])
            piece = torch.bucketize(batch["cond_index"].cpu(), starts, right=True) - 1
            rows = [torch.nonzero(piece == j).squeeze(-1) for j in range(len(pieces))]
            generators = [torch.Generator().manual_seed(seed + first_piece + j) for j in range(len(pieces))]
        per_piece = -(-size // num_pieces)
        out = []
        for _ in range(epochs):
            orders = [r[torch.randperm(r.numel(), generator=g)] for r, g in zip(rows, generators)]
            count = max(-(-o.numel() // per_piece) for o in orders)
            out.append([torch.cat([o[i * per_piece:(i + 1) * per_piece] for o in orders]) for i in range(count)])
        return out

    @torch.no_grad()
    def check_on_policy(self, batch: TensorDictBase, minibatches: list[Tensor], cond: Any,
                        rollout: Rollout) -> dict[str, float]:
        """Before any update, re-score every edge the way the update will: the loss's own
        ``log_probs``, in its minibatches and under the run's precision. Raises
        :class:`~treegrpo.envs.OnPolicyError` if an importance ratio is off 1 by more than
        ``ON_POLICY_ATOL`` (sampling and the loss disagree on the model, its precision or its
        inputs); returns the ratio statistics (``onpolicy/*``). A loss without ``log_probs`` is
        checked by :func:`treegrpo.envs.check_on_policy` on the rollout instead."""
        log_probs = getattr(self.loss, "log_probs", None)
        if log_probs is None:
            with self.precision_context():
                worst = check_on_policy(rollout, self.model, self.problem.transition, cond, atol=ON_POLICY_ATOL,
                                        max_batch=self.config.sampling.max_batch or None)
            return {"onpolicy/max_deviation": worst}
        log_ratios = []
        with self.precision_context():
            for rows in minibatches:
                minibatch = self._minibatch(batch, rows, cond)
                new = log_probs(minibatch)[0].double()
                log_ratios.append((new - minibatch["log_prob"].double())[minibatch["mask"]])
        deviation = (torch.cat(log_ratios).exp() - 1).abs() if log_ratios else torch.zeros(1, dtype=torch.float64)
        worst = float(deviation.max()) if deviation.numel() else 0.0
        clip = getattr(self.loss, "clip_range", None)
        stats = {"onpolicy/max_deviation": worst, "onpolicy/ratio_std": float(deviation.std(unbiased=False))
                 if deviation.numel() > 1 else 0.0}
        if clip is not None:
            stats["onpolicy/clipped_fraction"] = float((deviation > clip).double().mean())
        if not worst <= ON_POLICY_ATOL:
            raise OnPolicyError(
                f"importance ratio: max |ratio - 1| = {worst:.3g} > {ON_POLICY_ATOL:g} before any update "
                f"({stats.get('onpolicy/clipped_fraction', 0.0):.0%} of edges outside the clip range); sampling and "
                f"the loss score the edges differently (train.precision={self.config.train.precision}; a model in "
                "train mode with dropout, or inputs the loss does not see, also do this)")
        return stats

    def _optimise(self, batch: TensorDictBase, minibatches: list[Tensor], cond: Any,
                  counters: dict[str, float]) -> dict[str, float]:
        cfg = self.config
        sums: dict[str, float] = {}
        per_step: dict[int, list[Tensor]] = {}
        accumulation, updates = cfg.optim.grad_accumulation, 0
        counters.update(edges_trained=0.0, forward_rows=0.0, backward_rows=0.0, optimizer_steps=0.0)
        self.optimizer.zero_grad(set_to_none=True)
        for micro, rows in enumerate(minibatches, start=1):
            minibatch = self._minibatch(batch, rows, cond)
            steps_optimiser = micro % accumulation == 0 or micro == len(minibatches)
            with gradient_sync(self.policy, steps_optimiser):  # accumulation steps skip the all-reduce
                with self.precision_context():
                    terms = self.loss(minibatch)
                loss = total_loss(terms)
                self._guard(loss.detach(), "loss")
                (loss / accumulation).backward()
            rows_count = float(minibatch.batch_size[0])
            counters["forward_rows"] += rows_count
            counters["backward_rows"] += rows_count
            counters["edges_trained"] += float(count_edges(minibatch))
            for key, value in terms.items():
                if value.dim() == 0:
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            log_ratio = terms.get("log_ratio", None)  # [M, K], for per-timestep ratio statistics
            for step in torch.unique(minibatch["step"]).tolist() if log_ratio is not None else ():
                rows_at = minibatch["step"] == step
                per_step.setdefault(step, []).append(log_ratio[rows_at][minibatch["mask"][rows_at]])
            if steps_optimiser:
                self._apply_update()
                updates += 1
        counters["optimizer_steps"] = float(updates)
        self.scheduler.step()
        out = {key: value / max(len(minibatches), 1) for key, value in sums.items()}
        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        for step, chunks in sorted(per_step.items()):
            ratio = torch.exp(torch.cat(chunks).double())
            out[f"ratio_mean/step_{step}"] = float(ratio.mean())
            out[f"ratio_std/step_{step}"] = float(ratio.std(unbiased=False)) if ratio.numel() > 1 else 0.0
        return out

    def _apply_update(self) -> None:
        params = list(self.named_params.values())
        clip = self.config.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        self._guard(full_tensor(norm), "gradient norm")
        self.optimizer.step()
        self._stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()  # one sync per step
        self._guard(finite, "weights after the optimiser step")
        if self.ema:
            self.ema.update()

    @staticmethod
    def _minibatch(batch: TensorDictBase, rows: Tensor, cond: Any) -> TensorDictBase:
        minibatch = batch[rows]
        if cond is not None:
            minibatch = minibatch.clone(False)
            minibatch.set("cond", gather_cond(cond, minibatch["cond_index"]))
        return minibatch

    def precision_context(self):
        """The one precision context of every policy forward: sampling, the on-policy check, the loss."""
        return model_precision(self.config.train.precision, self.device)

    def _guard(self, value: Tensor, name: str) -> None:
        """Stop, on every rank together, when ``value`` is not finite (or false) on any rank.

        If no optimiser step has changed the weights in this iteration, the state from before the
        iteration is the last good one and is saved (with the RNG as it was then, so a resume repeats
        the iteration exactly), unless a checkpoint of this iteration exists already; otherwise
        nothing is written and the error names the last checkpoint on disk."""
        ok = bool(value.all()) if value.dtype == torch.bool else bool(torch.isfinite(value).all())
        if all_true(ok, self.device):
            return
        bad = int((~value).sum()) if value.dtype == torch.bool else int((~torch.isfinite(value)).sum())
        self.optimizer.zero_grad(set_to_none=True)
        where = checkpoint_dir(self.run_dir, self.iteration)
        if not self._stepped and not where.exists() and self.folder is not None:
            self.save(start_of_iteration=True)
            last = f"the state before this iteration is saved in {where}"
        else:
            latest = latest_checkpoint(self.run_dir) if self.ranks.is_main else None
            why = "the weights changed in this iteration before the failure, so it is not saved" if self._stepped else (
                "a checkpoint of this iteration exists already")
            last = f"{why}; the last good state is {latest or 'not saved (no checkpoint yet)'}"
        raise NonFiniteTrainingError(
            f"iteration {self.iteration}: {name} is not finite ({bad} of {value.numel()} values on rank "
            f"{self.ranks.rank}); {last}"
        )

    def _reward_columns(self, rewards: Tensor) -> dict[str, float]:
        if rewards.dim() == 1:
            return {}
        names = list(self.problem.reward_names) + [f"reward_{j}" for j in range(len(self.problem.reward_names), rewards.shape[1])]
        return {f"reward/{names[j]}": float(rewards[:, j].mean()) for j in range(rewards.shape[1])}

    @staticmethod
    def _advantage_by_depth(tree: treeadv.Tree, result: treeadv.BackupResult) -> dict[str, float]:
        table = treeadv.depth_diagnostics(tree, result)
        out = {}
        for depth in range(1, table.batch_size[0]):
            out[f"advantage_mean/depth_{depth}"] = float(table["advantage_mean"][depth])
            out[f"advantage_std/depth_{depth}"] = float(table["advantage_std"][depth])
            out[f"ess_mean/depth_{depth - 1}"] = float(table["ess_mean"][depth - 1])
        return out

    # ------------------------------------------------------------------ the loop
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
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:.3g}",
                                clip=f"{metrics.get('clip_fraction', 0.0):.2f}", kl=f"{metrics.get('approx_kl', 0.0):.2g}",
                                img_s=f"{metrics['images_per_second']:.1f}")
                if self.iteration % train.sample_every == 0:
                    self.save_grid()
                if train.eval_every and self.iteration % train.eval_every == 0 and self.iteration < stop:
                    self.evaluate(log=True)
                if self.iteration % train.checkpoint_every == 0 or self.iteration == stop:
                    self.save()
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        return self.history

    def _log(self, metrics: dict[str, float]) -> None:
        if self.iteration % self.config.train.log_every:
            return
        self._write_scalars({k: v for k, v in metrics.items() if k != "iteration"}, int(metrics["iteration"]))

    def _write_scalars(self, values: dict[str, float], step: int) -> None:
        """Tensorboard scalars under ``out_dir/tensorboard`` (rank 0 only)."""
        if not self.ranks.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

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
            self._write_scalars({k: v for k, v in result.items() if k.startswith("eval/")}, self.iteration)
        return result

    @torch.no_grad()
    def save_grid(self, name: str | None = None, num_prompts: int = 10) -> Path | None:
        """Save a PNG grid of ODE samples (one row per prompt, the first held-out prompts when the
        problem has them), if the problem can decode images. Same seed, same noise in every grid.
        Every rank samples (an FSDP forward needs them all); rank 0 writes and gets the path."""
        if self.problem.decode is None:
            return None
        from torchvision.utils import save_image
        from treegrpo.envs import sample_forest

        generator = torch.Generator(self.device).manual_seed(self.config.train.seed)
        cond, _ = held_out_prompts(self.problem, self.config.train.seed)
        prompts = min(num_prompts, int(cond.shape[0]))
        with self.precision_context():
            rollout = sample_forest(self.model, self.problem.transition, gather_cond(cond, torch.arange(prompts)),
                                    sde_steps=(), branching=(), trees_per_prompt=8,
                                    latent_shape=self.problem.latent_shape, num_prompts=prompts, generator=generator,
                                    device=self.device, max_batch=self.config.sampling.max_batch or None)
        images = self.problem.decode(rollout.final).clamp(0, 1)
        if images.shape[-1] < GRID_MIN_SIDE:  # tiny images (16 px digits): enlarge pixels so the grid is legible
            images = torch.nn.functional.interpolate(images, scale_factor=-(-GRID_MIN_SIDE // images.shape[-1]))
        if not self.ranks.is_main:
            return None
        path = self.run_dir / "samples" / (name or f"iter-{self.iteration:06d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, path, nrow=8)
        return path


def _prompt_rows(cond: Any, lo: int, hi: int, total: int) -> Any:
    """Rows ``lo:hi`` of a conditioning table of ``total`` rows (the table itself when that is all of it)."""
    return cond if (lo, hi) == (0, total) else gather_cond(cond, torch.arange(lo, hi))


def _frozen_copy(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def run(config: Config, *, problem: Problem | None = None, progress: bool = True) -> dict[str, Any]:
    """Entry point of ``treegrpo train``: train, then write grids, a reward curve and a summary.

    The run folder is claimed first, before the model loads (:func:`claim_run_folder`: a folder
    that is unwritable, in use, or holds an earlier run that is neither resumed nor overwritten is
    a one-line error). Held-out rewards of the starting policy are measured once (kept in
    ``eval_before.json`` so a resumed run still reports them), then again after training; the
    table is printed and the numbers go to ``summary.json``. Returns the summary. Under ``torchrun``
    every rank trains and evaluates (the same held-out samples); rank 0 prints and writes.
    """
    folder = claim_run_folder(config.validate().train, main=ranks_from_env().is_main)
    try:
        with Trainer(problem or build_problem(config), config) as trainer:
            return _run(trainer, config, progress)
    finally:
        folder.release()


def _run(trainer: Trainer, config: Config, progress: bool) -> dict[str, Any]:
    from treegrpo.algos.report import diversity_kept, plot_reward_curve, read_json, summary_table, write_json

    run_dir, main = trainer.run_dir, trainer.ranks.is_main
    before_path = run_dir / "eval_before.json"
    resumed_before = config.train.resume and before_path.is_file()  # a fresh run never reads an old file
    barrier()  # every rank has looked before rank 0 writes
    if resumed_before:
        before = read_json(before_path)
    else:
        before = trainer.evaluate(log=True)
        if main:
            write_json(before, before_path)
        trainer.save_grid("before.png")
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
    }
    summary = {"before": before, "after": after, "diversity_kept": diversity_kept(before, after),
               "evaluations": trainer.evaluations, "training": training, "config": config.to_dict()}
    write_json(summary, run_dir / "summary.json")
    print(summary_table(before, after, training))
    print(f"run directory: {run_dir} (samples/, reward_curve.png, summary.json, tensorboard/, checkpoints/)")
    return summary


def build_problem(config: Config, *, fuse_model_lora: bool = True) -> Problem:
    """The problem named by ``model.kind`` (``fuse_model_lora``: see :func:`~treegrpo.algos.t2i.build_pipeline_problem`)."""
    from treegrpo.algos.problem import toy2d_problem

    kind = config.model.kind
    check_step_numbers(config)  # before any weights load
    if kind == "digits":
        from treegrpo.embedded.problem import digits_problem
        from treegrpo.envs.transitions import FLOW_TRANSITIONS

        s = config.sampling
        if s.transition not in FLOW_TRANSITIONS:
            raise ConfigError(f"sampling.transition: the digits model is a flow model; expected one of "
                              f"{', '.join(FLOW_TRANSITIONS)}, got {s.transition!r}")
        return digits_problem(num_steps=s.num_steps, noise_level=s.noise_level, shift=s.shift,
                              transition=s.transition, prompts_per_iteration=s.prompts_per_iteration,
                              rewards=config.model.rewards, guidance_scale=s.guidance_scale,
                              weights=config.model.path or None, eval_rewards=config.eval.rewards,
                              eval_num_steps=config.eval.num_steps, eval_count=config.model.eval_count,
                              schedule=s.schedule, cps_scoring=s.cps_scoring,
                              device=local_device(config.train.device))
    if kind == "toy2d":
        from treegrpo.envs.transitions import FLOW_TRANSITIONS

        s = config.sampling
        if s.transition not in FLOW_TRANSITIONS:
            raise ConfigError(f"sampling.transition: the toy2d model is a flow model; expected one of "
                              f"{', '.join(FLOW_TRANSITIONS)}, got {s.transition!r}")
        check_reward_names(config.eval.rewards, ("target",), "eval.rewards", "the toy2d problem")
        return toy2d_problem(s.num_steps, s.noise_level, prompts_per_iteration=s.prompts_per_iteration,
                             seed=config.train.seed, eval_num_steps=config.eval.num_steps, shift=s.shift,
                             transition=s.transition, schedule=s.schedule)
    if kind in LAYOUTS:  # the diffusers pipelines
        from treegrpo.algos.t2i import build_pipeline_problem

        return build_pipeline_problem(config, fuse_model_lora=fuse_model_lora)
    raise ConfigError(f"model.kind: expected one of 'digits', 'toy2d', 'sd3', 'sd15', got {kind!r}")
