"""Time full training iterations of TreeGRPO and the trajectory baselines on an SD3.5-Medium- or
FLUX.1-dev-shaped transformer, and compare each with its floor (the same model passes at the same
batch shapes).

``--size sd35m`` has SD3.5-Medium's configuration (24 MMDiT layers, 24 heads of 64, dual attention
in layers 0-12, 2.24 B parameters), ``--size flux-dev`` FLUX.1-dev's (``FluxTransformer2DModel``: 19
double-stream and 38 single-stream blocks, 24 heads of 128, guidance embedding, 11.9 B parameters),
with random weights, or the weights of ``--weights`` (a diffusers ``transformer/`` folder); the
prompts are random text embeddings of the model's shapes (SD3: 333 tokens x 4096 and pooled 2048;
FLUX.1: 512 T5 tokens x 4096 and pooled 768). FLUX samples on FluxPipeline's resolution-shifted
schedule with distilled guidance 3.5 (one forward per row), through :class:`FluxDenoiser`. The reward is a cheap function of the final latents (or of the images when
``--vae`` names a diffusers VAE folder), so the timing isolates the RL machinery: sample, reward,
advantages, update. Every method samples the same prompts per iteration and the same images per
prompt (``k^d``) at NFE ``--steps``.

For each method the script prints one table and writes JSON: NFE sampled, forward+backward rows,
seconds per iteration (median after warm-up), images/s, model FLOP utilisation (with
``--peak-tflops``), peak memory, and the ratio of the measured time to the floor
``NFE x t_forward + backward rows x t_forward_backward``, both per image and measured here at the
iteration's batch shapes. Besides TreeGRPO's shapes and the hand-set baselines, ``--methods`` takes the
peer recipes ``flow_grpo``, ``dance_grpo``, ``mix_grpo`` and ``branch_grpo`` (docs/recipes.md). A
method that runs out of CUDA memory retries with half the prompts (its row says at which it ran); one
that cannot run at all becomes a row with an ``error`` and the others still run. The JSON is rewritten
after every row (``complete`` is false until the last), so a run cut short keeps what it finished;
``benchmarks/gpu_check.sh`` runs this script for the GPU check.

    python benchmarks/gpu_iteration.py                       # SD3.5-M shapes, bf16, LoRA (GPU)
    python benchmarks/gpu_iteration.py --compile --modes lora full
    python benchmarks/gpu_iteration.py --size tiny --device cpu --iterations 2   # CPU smoke run
    python benchmarks/gpu_iteration.py --size flux-dev --peak-tflops 763        # FLUX.1-dev shapes (GPU)
    treegrpo bench --gpu -- --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from treegrpo.benchmarks import RESULTS

# SD3.5-Medium's transformer (diffusers SD3Transformer2DModel) and FLUX.1-dev's (FluxTransformer2DModel)
# at 512 px (latent 64 x 64; FLUX packs it into 32 x 32 = 1024 tokens), and tiny ones of each for CPU runs.
SIZES: dict[str, dict[str, Any]] = {
    "sd35m": {"family": "sd3", "transformer": {"sample_size": 64, "patch_size": 2, "in_channels": 16, "num_layers": 24,
                              "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
                              "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
                              "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)),
                              "qk_norm": "rms_norm"},
              "tokens": 333, "latent": (16, 64, 64), "prompts": 32, "max_batch": 32, "minibatch": 16},
    "tiny": {"family": "sd3", "transformer": {"sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 2,
                             "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32,
                             "caption_projection_dim": 16, "pooled_projection_dim": 24, "out_channels": 4,
                             "pos_embed_max_size": 16, "dual_attention_layers": [0], "qk_norm": "rms_norm"},
             "tokens": 12, "latent": (4, 8, 8), "prompts": 2, "max_batch": 16, "minibatch": 8},
    # FLUX.1-dev's transformer config; 512 T5 tokens (FluxPipeline's max_sequence_length); a 12 B model
    # takes fewer prompts and smaller batches than SD3.5-M on one 80 GB GPU.
    "flux-dev": {"family": "flux",
                 "transformer": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                                 "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                                 "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]},
                 "tokens": 512, "latent": (16, 64, 64), "prompts": 8, "max_batch": 16, "minibatch": 4},
    "flux-tiny": {"family": "flux",
                  "transformer": {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 2,
                                  "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                                  "pooled_projection_dim": 24, "guidance_embeds": True, "axes_dims_rope": [4, 6, 6]},
                  "tokens": 12, "latent": (4, 8, 8), "prompts": 2, "max_batch": 16, "minibatch": 8},
}
FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}
"""FLUX.1-dev's ``scheduler/scheduler_config.json`` (FlowMatchEulerDiscreteScheduler)."""
# (name, config overrides): TreeGRPO's shapes and the baselines with their references' settings.
METHODS: dict[str, list[str]] = {
    "treegrpo k3 d3": ["loss.algorithm=treegrpo", "sampling.branching=3", "sampling.depth=3"],
    "treegrpo k2 d3": ["loss.algorithm=treegrpo", "sampling.branching=2", "sampling.depth=3"],
    "treegrpo k2 d4": ["loss.algorithm=treegrpo", "sampling.branching=2", "sampling.depth=4"],
    "treegrpo k4 d3": ["loss.algorithm=treegrpo", "sampling.branching=4", "sampling.depth=3"],
    # DanceGRPO: its SDE (eta 0.3) and shifted-linspace schedule, SDE on every step, 60% of the steps
    # trained, one initial noise per group; Flow-GRPO: its SDE on the scheduler's schedule, every step trained.
    "grpo (DanceGRPO)": ["loss.algorithm=grpo", "loss.timestep_fraction=0.6", "sampling.transition=dance_sde",
                         "sampling.noise_level=0.3", "sampling.schedule=dancegrpo", "sampling.shared_noise=true"],
    "grpo (Flow-GRPO)": ["loss.algorithm=grpo", "loss.timestep_fraction=1.0"],
    "mixgrpo": ["loss.algorithm=mixgrpo", "sampling.depth=3"],
    "ddpo": ["loss.algorithm=ddpo"],
    # The peer recipes (docs/recipes.md) at this run's NFE, images per prompt and clip range; BranchGRPO
    # splits k ways at d steps 3 apart from step 0 (its own: 2 ways at 0, 3, 6, 9 of 20), k^d = images per prompt.
    "flow_grpo": ["loss.algorithm=flow_grpo"],
    "dance_grpo": ["loss.algorithm=dance_grpo"],
    "mix_grpo": ["loss.algorithm=mix_grpo"],
    "branch_grpo": ["loss.algorithm=branch_grpo"],
}
DEFAULT_METHODS = ("treegrpo k3 d3", "treegrpo k2 d3", "grpo (DanceGRPO)", "grpo (Flow-GRPO)", "mixgrpo", "ddpo")


class RowFailed(RuntimeError):
    """A method could not be timed (out of memory at one prompt, or an error); its row says why."""


def branch_shape(images: int, steps: int) -> tuple[int, list[int]]:
    """BranchGRPO's branching and split steps giving ``images`` leaves: the deepest ``k^d = images`` with
    ``k >= 2`` whose ``d`` splits, 3 steps apart from step 0 (closer where ``steps`` is short), fit."""
    for depth in range(min(steps, 8), 0, -1):
        k = round(images ** (1 / depth))
        if k >= 2 and k**depth == images:
            stride = max(1, min(3, steps // depth))
            return k, [i * stride for i in range(depth)]
    raise ValueError(f"branch_grpo: {images} images per prompt is no power k^d (k >= 2, d <= {min(steps, 8)})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="sd35m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    parser.add_argument("--modes", nargs="+", choices=("lora", "full"), default=["lora"],
                        help="LoRA (rank 32 on the attention projections) and/or full fine-tuning")
    parser.add_argument("--steps", type=int, default=10, help="NFE of one trajectory")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per iteration (default: the size's); on CUDA out of memory a method retries with half")
    parser.add_argument("--images-per-prompt", type=int, default=27,
                        help="trajectories per prompt of the baselines (default 27 = TreeGRPO k=3, d=3)")
    parser.add_argument("--max-batch", type=int, default=None, help="rows per sampling call (default: the size's)")
    parser.add_argument("--minibatch", type=int, default=None, help="parent rows per training minibatch")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per method (after 1 warm-up)")
    parser.add_argument("--pass-repeats", type=int, default=3,
                        help="timed calls (after 1 warm-up) of each single pass the floor is built from")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (static shapes)")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default="inductor",
                        help="torch.compile backend (aot_eager: a quick CPU check of the compiled path)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 matmul ceiling for MFU (measured H100: 763)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more iteration of each method (torch.profiler) and keep its top operators")
    parser.add_argument("--weights", type=Path, default=None, help="a diffusers transformer/ folder")
    parser.add_argument("--vae", type=Path, default=None, help="a diffusers vae/ folder: decode before the reward")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/gpu_iteration_<size>.json)")
    return parser.parse_args(argv)


def build_transformer(args: argparse.Namespace, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.utils import logging

    logging.set_verbosity_error()  # random weights cast with .to(dtype): nothing to keep in float32

    network = FluxTransformer2DModel if SIZES[args.size]["family"] == "flux" else SD3Transformer2DModel
    torch.manual_seed(0)
    if args.weights is not None:
        return network.from_pretrained(args.weights, torch_dtype=dtype, local_files_only=True)
    # initialised where it runs: a 12 B random init on the host would take longer than the timing
    with torch.device(getattr(args, "device", "cpu")):
        return network(**SIZES[args.size]["transformer"]).to(dtype)


def flow_timesteps(args: argparse.Namespace, schedule: str):
    """The method's flow schedule: SD3's ``shift=3`` scheduler schedule, FluxPipeline's resolution-shifted
    one for FLUX (:meth:`FlowTimesteps.flux`), or DanceGRPO's shifted linspace for either."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from treegrpo.envs import FlowTimesteps

    size = SIZES[args.size]
    if size["family"] != "flux" or schedule == "dancegrpo":
        return FlowTimesteps.named(schedule, args.steps, shift=3.0)
    _, height, width = size["latent"]
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    return FlowTimesteps.flux(scheduler, args.steps, image_seq_len=(height // 2) * (width // 2))


def synthetic_problem(args: argparse.Namespace, transformer, device: torch.device, sampling=None):
    """A Problem around the transformer: random prompts of its text shapes, a cheap reward, the method's
    flow transition and schedule (``sampling``: a ``SamplingConfig``; default Flow-GRPO's SDE on the
    model's scheduler schedule)."""
    from tensordict import TensorDict

    from treegrpo.algos import Config
    from treegrpo.envs import FluxDenoiser, SD3Denoiser, flow_transition
    from treegrpo.problems import Problem

    size = SIZES[args.size]
    config = transformer.config
    generator = torch.Generator().manual_seed(1)
    table = TensorDict({
        "encoder_hidden_states": torch.randn(args.prompts, size["tokens"], config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(args.prompts, config.pooled_projection_dim, generator=generator),
    }, batch_size=[args.prompts]).to(device)
    vae = None
    if args.vae is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.bfloat16, local_files_only=True).to(device)

    def prompts(iteration: int, generator: torch.Generator):
        return table, torch.arange(args.prompts, device=device)

    def reward(final, prompt_ids):
        x = final.float()
        if vae is not None:
            latents = final / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            x = vae.decode(latents.to(vae.dtype), return_dict=False)[0].float()
        return -(x.mean(dim=(1, 2, 3)) - 0.1).square()

    latent = tuple(size["latent"])
    s = sampling or Config().override([f"sampling.num_steps={args.steps}"], check_used=False).sampling
    timesteps = flow_timesteps(args, s.schedule)
    denoiser = FluxDenoiser(transformer) if size["family"] == "flux" else SD3Denoiser(transformer)
    return Problem(model=denoiser, transition=flow_transition(s.transition, timesteps, s.noise_level),
                   latent_shape=latent, prompts=prompts, reward=reward, reward_names=("synthetic",), device=device)


def config_for(args: argparse.Namespace, method: str, mode: str, out: Path):
    from treegrpo.algos import Config

    overrides = [
        f"sampling.num_steps={args.steps}", f"sampling.prompts_per_iteration={args.prompts}",
        f"sampling.max_batch={args.max_batch}", "loss.clip_range=1e-4", "optim.lr=1e-5",
        f"train.minibatch_parents={args.minibatch}", f"train.precision={args.precision}", "train.check_on_policy=warn",
        f"train.compile={str(args.compile).lower()}", f"train.compile_backend={args.compile_backend}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"train.device={args.device}", f"train.out_dir={out}", "train.log_every=100000",
        "train.checkpoint_every=100000", "train.sample_every=100000",
        f"train.lora_rank={32 if mode == 'lora' else 0}", "train.lora_alpha=64",
        *(["train.lora_targets=attn.to_q,attn.to_k,attn.to_v,attn.to_out.0"] if mode == "lora" else []),
        f"sampling.static_shapes={str(args.compile).lower()}",
    ]
    sampler = Config().override(METHODS[method], check_used=False).loss.recipe.sampler
    if sampler == "branch":  # its own split steps may lie beyond this run's NFE
        k, splits = branch_shape(args.images_per_prompt, args.steps)
        overrides += [f"sampling.branching={k}", f"sampling.split_steps={','.join(map(str, splits))}"]
    config = Config().override([*overrides, *METHODS[method]], check_used=False)
    # Every method: the same images per prompt. A trajectory method's optimiser step covers every
    # trained step of its trajectories, as in Flow-GRPO and DanceGRPO: gradients accumulate over
    # that many minibatches of the same row count, so every backward pass has the same shape.
    if not config.loss.recipe.tree:
        steps = config.sampling.depth if sampler == "sliding" else config.sampling.num_steps
        trained = max(1, round(steps * config.loss.timestep_fraction))
        config = config.override([f"sampling.group_size={args.images_per_prompt}", f"optim.grad_accumulation={trained}"],
                                 check_used=False)
    return config.validate()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pass_times(trainer, problem, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds per image of one forward (sampling batch, no grad) and one forward+backward (training minibatch)."""
    model = problem.model
    table, _ = problem.prompts(0, None)

    def inputs(rows: int):
        rows_index = torch.arange(rows, device=device) % args.prompts
        x = torch.randn(rows, *problem.latent_shape, device=device)
        t = torch.full((rows,), 500.0, device=device)
        return x, t, table[rows_index]

    x, t, cond = inputs(args.max_batch)

    def forward():
        with torch.no_grad(), trainer.precision_context():
            model(x, t, cond)

    xb, tb, condb = inputs(args.minibatch)

    def forward_backward():
        with trainer.precision_context():
            out = model(xb, tb, condb)
        out.float().square().mean().backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    repeats = getattr(args, "pass_repeats", 3)
    return {"forward_s_per_image": time_call(forward, device, repeats) / args.max_batch,
            "forward_backward_s_per_image": time_call(forward_backward, device, repeats) / args.minibatch}


def profile_iteration(trainer, device: torch.device, top: int = 12) -> list[dict[str, float]]:
    """The operators taking the most (device, else CPU) self time over one iteration."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        trainer.step()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    total = sum(getattr(e, key) for e in profiler.key_averages()) or 1.0
    return [{"operator": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
            for e in events]


def image_forward_flops(model, problem, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    table, _ = problem.prompts(0, None)
    x = torch.randn(1, *problem.latent_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.full((1,), 500.0, device=device), table[:1])
    return float(counter.get_total_flops())


def run_method(args, method: str, mode: str, device: torch.device, scratch: Path) -> dict[str, Any]:
    from treegrpo.algos import Trainer

    dtype = torch.bfloat16 if args.precision == "bf16" and mode == "lora" else torch.float32
    transformer = build_transformer(args, dtype).to(device)
    config = config_for(args, method, mode, scratch / f"{method}-{mode}".replace(" ", "_"))
    problem = synthetic_problem(args, transformer, device, config.sampling)
    # counted on the base transformer, before LoRA (rank 32: a fraction of a percent) and before
    # torch.compile, which a batch of one would send through another compilation
    flops = image_forward_flops(problem.model, problem, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(problem, config)
    start = time.perf_counter()
    trainer.step()
    synchronize(device)
    first = time.perf_counter() - start
    runs = []
    for _ in range(args.iterations):
        start = time.perf_counter()
        metrics = trainer.step()
        synchronize(device)
        runs.append((time.perf_counter() - start, metrics))
    seconds = statistics.median(t for t, _ in runs)
    metrics = runs[-1][1]
    top_operators = profile_iteration(trainer, device) if args.profile else None
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    passes = pass_times(trainer, problem, args, device)
    nfe, backward_rows = metrics["nfe_sampled"], metrics["backward_rows"]
    floor = nfe * passes["forward_s_per_image"] + backward_rows * passes["forward_backward_s_per_image"]
    total_flops = nfe * flops + backward_rows * 3 * flops  # backward ~ 2x forward
    row = {
        "method": method, "mode": mode, "algorithm": config.loss.algorithm, "prompts": args.prompts,
        "images": metrics["images"],
        "nfe_sampled": nfe, "forward_backward_rows": backward_rows, "edges_trained": metrics["edges_trained"],
        "seconds_per_iteration": seconds, "seconds_all": [t for t, _ in runs], "first_iteration_s": first,
        "compile_s": max(0.0, first - seconds) if args.compile else None,
        "seconds_sampling": statistics.median(m.get("seconds_sample", float("nan")) for _, m in runs),
        "seconds_update": statistics.median(m.get("seconds_update", float("nan")) for _, m in runs),
        "sampling_share": statistics.median(m.get("seconds_sample", float("nan")) for _, m in runs) / seconds,
        "images_per_second": metrics["images"] / seconds, "floor_s": floor, "time_over_floor": seconds / floor,
        "flops_per_image_forward": flops, "tflops_per_second": total_flops / seconds / 1e12,
        "mfu": total_flops / seconds / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "peak_memory_gib": peak_memory, **passes, "top_operators": top_operators,
        # the on-policy statistics of the real kernels (worst over the timed iterations; docs/algos.md)
        **{key.replace("/", "_"): max(m[key] for _, m in runs) for key in metrics if key.startswith("onpolicy/")},
    }
    del trainer, problem, transformer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_with_backoff(args, method: str, mode: str, device: torch.device, scratch: Path) -> dict[str, Any]:
    """:func:`run_method` at ``args.prompts`` prompts, halving them on CUDA out of memory down to one;
    the row records the prompts it ran at and those that ran out of memory. Raises :class:`RowFailed`."""
    import copy
    import gc
    import traceback

    tried, attempt = [], copy.copy(args)
    while True:
        failure = None
        try:
            row = run_method(attempt, method, mode, device, scratch)
            return {**row, "out_of_memory_at_prompts": tried}
        except torch.OutOfMemoryError:
            failure = "out of memory"
        except Exception as error:  # noqa: BLE001 -- one method's failure must not lose the others' rows
            traceback.print_exc()
            failure = f"{type(error).__name__}: {error}"
        gc.collect()  # the failed attempt's trainer and activations, now unreferenced
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if failure != "out of memory":
            raise RowFailed(failure)
        tried.append(attempt.prompts)
        if attempt.prompts == 1:
            raise RowFailed(f"out of memory at prompts {tried}")
        attempt.prompts //= 2
        print(f"{method} ({mode}): out of memory at {tried[-1]} prompts; retrying with {attempt.prompts}", flush=True)


def table(rows: list[dict[str, Any]]) -> str:
    rows = [row for row in rows if "error" not in row]
    base = {row["mode"]: row["seconds_per_iteration"] for row in rows
            if row["method"] in ("grpo (DanceGRPO)", "dance_grpo")}
    header = (f"{'method':<18}{'mode':<6}{'images':>7}{'NFE':>7}{'fwd+bwd':>9}{'s/iter':>9}{'sample':>8}{'update':>8}"
              f"{'img/s':>8}"
              f"{'vs Dance':>9}{'floor s':>9}{'/floor':>8}{'TFLOP/s':>9}{'MFU':>7}{'mem GiB':>9}")
    lines = [header]
    for row in rows:
        speedup = base.get(row["mode"], float("nan")) / row["seconds_per_iteration"]
        mfu = f"{row['mfu']:.0%}" if row["mfu"] is not None else "-"
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        lines.append(f"{row['method']:<18}{row['mode']:<6}{row['images']:>7.0f}{row['nfe_sampled']:>7.0f}"
                     f"{row['forward_backward_rows']:>9.0f}{row['seconds_per_iteration']:>9.3f}"
                     f"{row['seconds_sampling']:>8.3f}{row['seconds_update']:>8.3f}"
                     f"{row['images_per_second']:>8.1f}{speedup:>8.2f}x{row['floor_s']:>9.3f}"
                     f"{row['time_over_floor']:>7.2f}x{row['tflops_per_second']:>9.2f}{mfu:>7}{memory:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time every method and mode; the JSON is rewritten after each row, so a run cut short keeps the
    rows it finished. A row that failed (``error``) is kept and the others still run."""
    import tempfile

    args = parse_args(argv)
    size = SIZES[args.size]
    device = torch.device(args.device)
    args.prompts = args.prompts or size["prompts"]
    args.max_batch = args.max_batch or size["max_batch"]
    args.minibatch = args.minibatch or size["minibatch"]
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = args.out or RESULTS / f"gpu_iteration_{args.size}.json"
    rows: list[dict[str, Any]] = []

    def result(complete: bool) -> dict[str, Any]:
        return {"size": args.size, "device": device_name, "prompts": args.prompts, "nfe": args.steps,
                "images_per_prompt": args.images_per_prompt,
                "precision": args.precision, "compile": args.compile,
                "compile_backend": args.compile_backend if args.compile else None, "max_batch": args.max_batch,
                "minibatch": args.minibatch, "gradient_checkpointing": args.gradient_checkpointing,
                "peak_tflops": args.peak_tflops, "torch": torch.__version__, "complete": complete, "rows": rows}

    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            for method in args.methods:
                try:
                    rows.append(run_with_backoff(args, method, mode, device, Path(scratch)))
                    print(f"{method} ({mode}): {rows[-1]['seconds_per_iteration']:.3f} s/iteration "
                          f"at {rows[-1]['prompts']} prompts", flush=True)
                except RowFailed as failed:
                    rows.append({"method": method, "mode": mode, "error": str(failed)})
                    print(f"{method} ({mode}): failed: {failed}", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result(False), indent=2))
    print(f"\n{args.size} transformer, {args.prompts} prompts/iteration, NFE {args.steps}, {args.precision}, "
          f"compile={args.compile}, gradient checkpointing={args.gradient_checkpointing}, {device_name}")
    print(table(rows))
    for row in rows:
        if row.get("top_operators"):
            print(f"\n{row['method']} ({row['mode']}): operators by self time over one iteration")
            for op in row["top_operators"][:8]:
                print(f"  {op['operator'][:48]:<48}{op['self_ms']:>10.1f} ms{op['share']:>7.1%}{op['calls']:>8}")
    final = result(True)
    out.write_text(json.dumps(final, indent=2))
    print(f"wrote {out}")
    return final


if __name__ == "__main__":
    import sys

    sys.exit(1 if any("error" in row for row in main()["rows"]) else 0)
