"""What the paper's softmax backup weights look like at real latent sizes, for mean- and sum-reduced log-probs.

Each parent's ``k`` children are drawn from its Gaussian step, ``x = mean + std * eps`` with ``eps``
standard normal in ``D`` dimensions, and scored by the Gaussian log-density reduced by the mean or
the sum over dimensions, exactly as the samplers store them. The children's log-probs then differ
only through ``|eps|^2``, by about ``sqrt(2 / D)`` (mean) or ``sqrt(2 D)`` (sum), whatever the step.
For ``D`` = 256 (the digits model), 4,096 (SD1.5 at 512 px) and 65,536 (SD3.5-M at 512 px: 16 x
64 x 64) and ``k = 3``, the table gives, over 200 parents, the mean largest weight and the mean
effective sample size ``1 / sum w^2`` (3 = uniform, 1 = one-hot) of ``logprob_softmax`` at
temperature 1 and at ``temperature="auto"``.

    python benchmarks/backup_weights.py [--parents 200] [--out benchmarks/results/backup_weights.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from treegrpo.benchmarks import RESULTS
from treegrpo.envs.gaussian import gaussian_log_prob

import treeadv

SIZES = {"digits (1x16x16)": (1, 16, 16), "SD1.5 512 px (4x64x64)": (4, 64, 64), "SD3.5-M 512 px (16x64x64)": (16, 64, 64)}
TEMPERATURES = (1.0, "auto")


def weights(shape: tuple[int, ...], reduce: str, temperature: float | str, parents: int, k: int = 3,
            seed: int = 0) -> torch.Tensor:
    """``[parents, k]`` backup weights of ``k`` children per parent, drawn and scored as the samplers do."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(parents, 1, *shape, generator=generator)
    std = 0.05 + torch.rand(parents, 1, *([1] * len(shape)), generator=generator)  # any step's std
    sample = mean + std * torch.randn(parents, k, *shape, generator=generator)
    log_prob = gaussian_log_prob(sample, mean, std, reduce, batch_dims=2)  # [parents, k]
    tree = treeadv.Tree.regular(parents, k, 1, log_prob=torch.cat([torch.zeros(parents), log_prob.flatten()]))
    leaf = torch.cat([torch.zeros(parents), torch.randn(parents * k, generator=generator)])
    result = treeadv.backup_with_weights(tree, leaf, "logprob_softmax", temperature=temperature)
    return result.weight[parents:].view(parents, k)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "backup_weights.json")
    args = parser.parse_args(argv)
    rows = []
    for name, shape in SIZES.items():
        for reduce in ("mean", "sum"):
            for temperature in TEMPERATURES:
                w = weights(shape, reduce, temperature, args.parents)
                rows.append({"latent": name, "dims": int(torch.tensor(shape).prod()), "reduce": reduce,
                             "temperature": temperature, "max_weight": float(w.max(1).values.mean()),
                             "ess": float((1 / (w**2).sum(1)).mean())})
    print(f"{'latent':<28} {'reduce':>6} {'temperature':>11} {'max weight':>10} {'ESS (of 3)':>10}")
    for row in rows:
        print(f"{row['latent']:<28} {row['reduce']:>6} {row['temperature']!s:>11} {row['max_weight']:>10.4f} "
              f"{row['ess']:>10.4f}")
    result = {"rows": rows, "parents": args.parents, "k": 3, "command": "python benchmarks/backup_weights.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
