"""Sampler idle time with a served reward, with and without scoring overlapped with sampling.

The digits default (k=3, d=3, NFE 10) samples an iteration's prompts in ``--chunks`` pieces; the
reward is the digit classifier served by ``treegrpo serve-reward`` in a subprocess on localhost and
read through ``model.rewards=remote:http://127.0.0.1:PORT/classifier``. ``--latency-ms`` adds
waiting to every reward call on the server (a large reward model or a network hop). Modes: one
piece; chunks scored inline; chunks scored on the worker thread while the next chunk samples
(``sampling.background_scoring``). *Sampling idle* is the phase's wall time minus the time spent
sampling: what the sampler waits for rewards. Prints a table and writes JSON.

    python benchmarks/remote_scoring.py [--prompts 8] [--chunks 4] [--repeats 3] [--latency-ms 250]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from treegrpo.benchmarks import run_facts, write_result
from treegrpo.benchmarks.background_scoring import MODES, time_mode
from treegrpo.envs import TreeSampler
from treegrpo.problems.digits import digits_problem


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    """``treegrpo serve-reward classifier`` on a free port; the process and its ``remote:`` URL."""
    process = subprocess.Popen([sys.executable, "-m", "treegrpo", "serve-reward", "classifier", "--kind", "digits",
                                "--port", "0", "--latency-ms", str(latency_ms), "--max-wait-ms", "2"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "serving reward" not in line:
        process.kill()
        raise SystemExit(f"the reward server did not start: {line!r}")
    return process, line.split(" on ")[1].split()[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=250.0, help="server-side waiting per reward call")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "remote_scoring.json")
    args = parser.parse_args(argv)

    server, url = start_server(args.latency_ms)
    try:
        problem = digits_problem(prompts_per_iteration=args.prompts, rewards=(f"remote:{url}",), device="cpu")
        sampler = TreeSampler(problem.model, problem.transition, branching=3, depth=3)
        rows = []
        for name, chunks, background in MODES:
            runs = time_mode(problem, sampler, chunks or args.chunks, background, args.prompts, args.repeats, "cpu")
            rows.append({"mode": name, "chunks": chunks or args.chunks, "background": background,
                         **{f"median_{key}": statistics.median(r[key] for r in runs)
                            for key in ("wall_s", "sampling_s", "idle_s")}, "runs": runs})
    finally:
        server.terminate()
        server.wait()
    print(f"{args.prompts} prompts x 27 images, k=3 d=3 NFE 10, cpu, torch threads {torch.get_num_threads()}; "
          f"reward: remote classifier on localhost, +{args.latency_ms:g} ms per call")
    print(f"{'mode':<22}{'chunks':>7}{'wall s':>9}{'sampling s':>12}{'idle s':>9}{'idle share':>12}")
    for row in rows:
        print(f"{row['mode']:<22}{row['chunks']:>7}{row['median_wall_s']:>9.3f}{row['median_sampling_s']:>12.3f}"
              f"{row['median_idle_s']:>9.3f}{row['median_idle_s'] / row['median_wall_s']:>11.0%}")
    result = {"prompts": args.prompts, "images_per_prompt": 27, "device": "cpu", "latency_ms": args.latency_ms,
              "reward": "remote:<localhost>/classifier", **run_facts(),
              "command": "python benchmarks/remote_scoring.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
