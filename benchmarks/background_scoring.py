"""Time the sample-and-score phase of a TreeGRPO iteration with and without scoring off the critical path.

On the embedded digits default (k=3, d=3, NFE 10): the iteration's prompts are sampled in one piece,
in ``--chunks`` pieces scored inline, and in ``--chunks`` pieces scored on a worker thread while the
next piece is sampled. The rewards are the classifier plus DDPO's JPEG compressibility (PIL encodes
every image). ``--reward-latency S`` adds S seconds of waiting to every scoring call, as a reward
model served over the network (Flow-GRPO's remote scorers) would. On a CPU-only machine sampling and
scoring share the same cores, so only waiting time can be hidden; on a GPU the sampler runs on the
device while the worker thread scores on its own CUDA stream or on the host. Prints a table and
writes JSON.

    python benchmarks/background_scoring.py [--prompts 16] [--chunks 4] [--repeats 5] [--device cpu]
                                            [--reward-latency 0.0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from treegrpo.algos.scoring import sample_and_score
from treegrpo.benchmarks import run_facts, write_result
from treegrpo.envs import TreeSampler, gather_cond
from treegrpo.problems.digits import digits_problem

MODES = (("one piece", 1, False), ("chunks, inline", None, False), ("chunks, background", None, True))


def time_mode(problem, sampler, chunks: int, background: bool, prompts: int, repeats: int,
              device) -> list[dict[str, float]]:
    """``repeats`` timed runs (after one warm-up) of sampling and scoring ``prompts`` prompts in ``chunks``
    pieces, ``background`` scoring them on the worker thread: each run's ``wall_s``, the ``sampling_s``
    spent inside the sampler, and ``idle_s``, the rest (what the sampler waited for rewards)."""
    generator = torch.Generator(device).manual_seed(0)
    cond, prompt_ids = problem.prompts(0, torch.Generator().manual_seed(0))
    sampling = [0.0]  # seconds spent in sample_chunk this run

    def sample_chunk(lo: int, hi: int):
        start = time.perf_counter()
        part = cond if (lo, hi) == (0, prompts) else gather_cond(cond, torch.arange(lo, hi))
        rollout = sampler.sample(part, latent_shape=problem.latent_shape, num_prompts=hi - lo, generator=generator,
                                 device=device)
        sampling[0] += time.perf_counter() - start
        return rollout

    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        sampling[0] = 0.0
        start = time.perf_counter()
        _, rewards = sample_and_score(sample_chunk, problem.reward, prompt_ids, chunks=chunks, background=background,
                                      device=device)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        if not torch.isfinite(rewards).all():
            raise SystemExit("a non-finite reward came back")
        runs.append({"wall_s": wall, "sampling_s": sampling[0], "idle_s": wall - sampling[0]})
    return runs[1:]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reward-latency", type=float, default=0.0, help="seconds of waiting added per scoring call")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/background_scoring*.json)")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = f"_latency{args.reward_latency:g}" if args.reward_latency > 0 else ""
        args.out = Path(__file__).parent / "results" / f"background_scoring{suffix}.json"

    problem = digits_problem(prompts_per_iteration=args.prompts, rewards=("classifier", "jpeg_compressibility"),
                             device=args.device)
    if args.reward_latency > 0:
        score = problem.reward

        def remote(final, prompt_ids):
            time.sleep(args.reward_latency)
            return score(final, prompt_ids)

        problem.reward = remote
    sampler = TreeSampler(problem.model, problem.transition, branching=3, depth=3)
    rows = []
    for name, chunks, background in MODES:
        runs = time_mode(problem, sampler, chunks or args.chunks, background, args.prompts, args.repeats, args.device)
        times = [run["wall_s"] for run in runs]
        rows.append({"mode": name, "chunks": chunks or args.chunks, "background": background,
                     "median_s": statistics.median(times), "min_s": min(times), "times_s": times})
    base = rows[0]["median_s"]
    print(f"{args.prompts} prompts x 27 images, k=3 d=3 NFE 10, {args.device}, torch threads {torch.get_num_threads()}, "
          f"reward latency {args.reward_latency} s per call")
    print(f"{'mode':<22}{'chunks':>7}{'median s':>10}{'min s':>8}{'vs one piece':>14}")
    for row in rows:
        print(f"{row['mode']:<22}{row['chunks']:>7}{row['median_s']:>10.3f}{row['min_s']:>8.3f}"
              f"{base / row['median_s']:>13.2f}x")
    result = {"prompts": args.prompts, "images_per_prompt": 27, "device": args.device,
              "reward_latency_s": args.reward_latency,
              **run_facts(), "rows": rows}
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
