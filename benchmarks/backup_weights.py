"""What the paper's softmax backup weights are made of: the siblings' noise norms, whatever the model.

Each parent's ``k`` children are drawn from its Gaussian step, ``x = mean + std * eps`` with ``eps``
standard normal in ``D`` dimensions, stored in float32 and scored by the Gaussian log-density
reduced by the mean or the sum over dimensions, exactly as the samplers store them. Siblings share
``mean`` and ``std``, so their log-probs are ``-|eps|^2 / (2 D) + c`` (mean) or ``-|eps|^2 / 2 + c``
(sum) and the weights ``softmax(log_prob)`` depend on ``eps`` alone.

For ``D`` = 256 (the digits model, 1 x 16 x 16), 16,384 (SD1.5 at 512 px, 4 x 64 x 64) and 65,536
(SD3.5-M at 512 px, 16 x 64 x 64) and ``k = 3``, the table gives over ``--parents`` parents, at
temperature 1: the mean largest weight, the mean and the smallest effective sample size
``1 / sum w^2`` (3 = uniform, i.e. ``mean``; 1 = one-hot), and the largest difference between the
weights of two unrelated "models" given the same noise: the second draws its parents' means
independently and takes its std from another step, which is all a model or a step changes in a
child's Gaussian (in float32, as the samplers store log-probs, and in float64).

    python benchmarks/backup_weights.py [--parents 200] [--out benchmarks/results/backup_weights.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import treeadv
from treegrpo.benchmarks import RESULTS
from treegrpo.envs.gaussian import gaussian_log_prob

SIZES = {"digits (1x16x16)": (1, 16, 16), "SD1.5 512 px (4x64x64)": (4, 64, 64), "SD3.5-M 512 px (16x64x64)": (16, 64, 64)}
K = 3


def softmax_weights(eps: torch.Tensor, reduce: str, seed: int) -> torch.Tensor:
    """``[parents, k]`` weights of ``logprob_softmax`` (temperature 1) for children ``eps [parents, k, ...]``
    of parents whose means and stds (one per parent, any step's) are drawn from ``seed``; computed in
    ``eps``'s dtype (float32: as the samplers store samples and log-probs)."""
    parents, shape, dtype = eps.shape[0], eps.shape[2:], eps.dtype
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(parents, 1, *shape, generator=generator).to(dtype)  # [parents, 1, C, H, W]: the model's
    std = (0.05 + torch.rand(parents, 1, *([1] * len(shape)), generator=generator)).to(dtype)  # the step's
    sample = mean + std * eps  # [parents, k, C, H, W]
    log_prob = gaussian_log_prob(sample, mean, std, reduce, batch_dims=2)  # [parents, k]
    tree = treeadv.Tree.regular(parents, K, 1, log_prob=torch.cat([torch.zeros(parents, dtype=dtype), log_prob.flatten()]))
    leaf = torch.zeros(tree.num_nodes, dtype=dtype)
    return treeadv.backup_with_weights(tree, leaf, "logprob_softmax").weight[parents:].view(parents, K)


def measure(shape: tuple[int, ...], reduce: str, parents: int, seed: int = 0) -> dict:
    """One row of the table: the weights' spread and their agreement across two unrelated models."""
    eps = torch.randn(parents, K, *shape, generator=torch.Generator().manual_seed(seed))
    first, second = softmax_weights(eps, reduce, seed + 1), softmax_weights(eps, reduce, seed + 2)
    ess = 1 / (first**2).sum(1)  # [parents]
    eps = eps.double()  # the same comparison without float32 rounding of the log-probs
    exact = (softmax_weights(eps, reduce, seed + 1) - softmax_weights(eps, reduce, seed + 2)).abs().max()
    return {"max_weight": float(first.max(1).values.mean()), "ess": float(ess.mean()), "ess_min": float(ess.min()),
            "model_disagreement": float((first - second).abs().max()), "model_disagreement_float64": float(exact)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "backup_weights.json")
    args = parser.parse_args(argv)
    rows = []
    for name, shape in SIZES.items():
        for reduce in ("mean", "sum"):
            rows.append({"latent": name, "dims": int(torch.tensor(shape).prod()), "reduce": reduce, "temperature": 1.0,
                         **measure(shape, reduce, args.parents)})
    print(f"{'latent':<28} {'reduce':>6} {'max weight':>10} {'ESS (of 3)':>10} {'min ESS':>8} {'|w_A - w_B|':>12} "
          f"{'(float64)':>10}")
    for row in rows:
        print(f"{row['latent']:<28} {row['reduce']:>6} {row['max_weight']:>10.4f} {row['ess']:>10.5f} "
              f"{row['ess_min']:>8.4f} {row['model_disagreement']:>12.1e} {row['model_disagreement_float64']:>10.1e}")
    result = {"rows": rows, "parents": args.parents, "k": K, "temperature": 1.0,
              "command": "python benchmarks/backup_weights.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
