"""The sampling engine's cost: a TreeGRPO iteration sampled through the TorchRL environment against a
plain loop over the same math, in one process, on the same noise.

Since the environment became the engine (``tree_rollout``: a stateless ``DenoisingEnv`` stepped by a
``DenoisingPolicy``, the frontier held in a TensorDict), every sample goes through TensorDicts. This
script checks what that costs: ``loop`` below is the engine the project had before, a for loop
over steps on bare tensors, kept here only as the baseline. Both sample the same forest (k = 3,
d = 3, NFE 10) and must agree bit for bit (final latents, log-probs, NFE). Problems: the embedded
digits model (8 prompts) and the tiny SD3-shaped transformer of ``gpu_iteration.py --size tiny``
(2 prompts). Prints a table (median seconds over ``--repeats`` runs after a warm-up, and the ratio)
and writes JSON.

    python benchmarks/engine_speed.py [--repeats 7] [--out benchmarks/results/engine_speed.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch
from tensordict import TensorDict

from treeadv import Tree
from treegrpo.benchmarks import RESULTS
from treegrpo.envs import TreeSampler, gather_cond


@torch.no_grad()
def loop(model, transition, cond, *, sde_steps, branching, noise, generator):
    """The former engine: the frontier as bare tensors, one model call per step, ``k`` draws per node."""
    x, prompts = noise, int(noise.shape[0])
    cond_index = torch.arange(prompts, device=x.device)
    sample, log_prob, levels, rows = x, torch.zeros(prompts, dtype=x.dtype), [], 0
    branch_at = dict(zip(sde_steps, branching))
    for i in range(transition.num_steps):
        step = torch.full((x.shape[0],), i, dtype=torch.long)
        prediction = model(x, transition.model_time(step), gather_cond(cond, cond_index))
        rows += x.shape[0]
        if i not in branch_at:
            x = transition.ode_step(x, prediction, step).to(x.dtype)
            continue
        levels.append({"latent": x, "sample": sample, "step": step, "cond_index": cond_index, "log_prob": log_prob})
        k = branch_at[i]
        mean, std = transition.mean_std(x, prediction, step)
        drawn = torch.randn((mean.shape[0], k, *mean.shape[1:]), generator=generator, dtype=mean.dtype)
        spread = std.unsqueeze(1) if std.dim() > 0 else std
        children = (mean.unsqueeze(1) + spread * drawn).to(x.dtype)
        log_prob = transition.score_children(children, mean, std).to(x.dtype).flatten()
        sample = x = children.flatten(0, 1)
        cond_index = cond_index.repeat_interleave(k)
    final = torch.full((x.shape[0],), transition.num_steps, dtype=torch.long)
    levels.append({"latent": x, "sample": sample, "step": final, "cond_index": cond_index, "log_prob": log_prob})
    columns = {key: torch.cat([level[key] for level in levels]) for key in levels[0]}
    edge_log_prob = columns.pop("log_prob")
    tree = Tree.regular(prompts, list(branching), log_prob=edge_log_prob, group=torch.arange(prompts),
                        payload=TensorDict(columns, batch_size=[edge_log_prob.shape[0]]))
    return tree, rows * model.evaluations_per_row


def problems():
    """``name -> (model, transition, cond, latent_shape, prompts)``."""
    from treegrpo.problems.digits import digits_problem

    digits = digits_problem(prompts_per_iteration=8)
    cond, _ = digits.prompts(0, torch.Generator().manual_seed(0))
    out = {"digits (8 prompts)": (digits.model, digits.transition, cond, digits.latent_shape, 8)}
    from treegrpo.benchmarks import gpu_iteration

    args = gpu_iteration.parse_args(["--size", "tiny", "--device", "cpu", "--prompts", "2"])
    transformer = gpu_iteration.build_transformer(args, torch.float32)
    tiny = gpu_iteration.synthetic_problem(args, transformer, torch.device("cpu"))
    table, _ = tiny.prompts(0, None)
    out["gpu_iteration --size tiny (2 prompts)"] = (tiny.model, tiny.transition, table, tiny.latent_shape, 2)
    return out


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_speed.json")
    args = parser.parse_args(argv)
    rows = []
    for name, (model, transition, cond, shape, prompts) in problems().items():
        sampler = TreeSampler(model, transition, branching=3, depth=3)
        noise = torch.randn(prompts, *shape, generator=torch.Generator().manual_seed(0))
        env_engine = functools.partial(sampler.sample, cond, noise=noise, num_prompts=prompts, window_start=2,
                                       generator=torch.Generator().manual_seed(1))
        plain_loop = functools.partial(loop, model, transition, cond, sde_steps=(2, 3, 4), branching=(3, 3, 3),
                                       noise=noise, generator=torch.Generator().manual_seed(1))
        rollout, (tree, nfe) = env_engine(), plain_loop()
        # Bit-equality holds because both call the model on the same frontier batches (the same
        # shapes): kernels chosen by shape then round alike. The differences are reported too, for
        # a loop that batches differently, where they are rounding.
        identical = (torch.equal(rollout.tree.payload["latent"], tree.payload["latent"])
                     and torch.equal(rollout.tree.log_prob, tree.log_prob) and rollout.nfe == nfe)
        difference = float((rollout.tree.payload["latent"] - tree.payload["latent"]).abs().max())
        env_s, loop_s = median_seconds(env_engine, args.repeats), median_seconds(plain_loop, args.repeats)
        rows.append({"problem": name, "nfe": rollout.nfe, "identical": identical, "max_latent_difference": difference,
                     "env_seconds": env_s,
                     "loop_seconds": loop_s, "ratio": env_s / loop_s})
    print(f"{'problem':<40}{'NFE':>6}{'identical':>11}{'env (s)':>10}{'loop (s)':>10}{'env / loop':>12}")
    for row in rows:
        print(f"{row['problem']:<40}{row['nfe']:>6}{row['identical']!s:>11}{row['env_seconds']:>10.4f}"
              f"{row['loop_seconds']:>10.4f}{row['ratio']:>12.3f}")
    result = {"rows": rows, "repeats": args.repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python benchmarks/engine_speed.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
