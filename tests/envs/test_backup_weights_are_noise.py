"""The paper's backup weights are a function of the drawn noise alone.

Siblings share their parent's Gaussian ``N(mean, std^2)``, so child ``e``'s stored log-prob is
``-|eps_e|^2 / (2 D) + c`` (mean-reduced over ``D`` dimensions) with ``c`` common to the siblings,
and ``softmax(log_prob)`` over the siblings is ``softmax(-|eps|^2 / (2 D))``: neither the model nor
the step enters. Two unrelated denoisers, branching at different steps from the same generator
seed, therefore weight every edge alike (docs/treeadv.md, "What the softmax weights are made of").
"""

from __future__ import annotations

import pytest
import torch

import treeadv
from treegrpo.envs import FlowSDE, FlowTimesteps, SD3Denoiser, sample_forest

from .tiny_models import LATENT_SHAPE, text_cond, tiny_sd3

TRANSITION_STEPS = 6
WINDOWS = {"early": (0, 1), "late": (2, 3)}  # two SDE steps each, branching 3 ways at both


def _noise_of_each_edge(model, transition, cond, tree) -> torch.Tensor:
    """``[N]`` float64 ``-|eps|^2 / (2 D)`` of every node's incoming edge (0 at roots), with the
    standard normal draw recovered from the stored sample: ``eps = (sample - mean) / std``."""
    edge = torch.nonzero(tree.parent >= 0).squeeze(-1)  # [E]
    parent = tree.parent[edge]
    latent, step = tree.payload["latent"][parent], tree.payload["step"][parent]
    with torch.no_grad():
        output = model(latent, transition.model_time(step), cond[tree.payload["cond_index"][parent]])
    mean, std = transition.mean_std(latent.double(), output.double(), step)
    eps = (tree.payload["sample"][edge].double() - mean) / std  # [E, C, H, W]
    logit = torch.zeros(tree.num_nodes, dtype=torch.float64)
    logit[edge] = -eps.flatten(1).pow(2).sum(1) / (2 * eps[0].numel())
    return logit


def _softmax_over_siblings(logit: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """``[N]`` softmax of ``logit`` among each parent's children (1 at roots), by scatters."""
    edge = parent >= 0
    expo = torch.where(edge, logit.exp(), 0.0)
    total = torch.zeros_like(logit).index_add_(0, parent.clamp(min=0), expo)
    return torch.where(edge, expo / total[parent.clamp(min=0)], 1.0)


@pytest.fixture(scope="module")
def two_forests(tmp_path_factory):
    """Two tiny SD3 transformers with unrelated random weights, each sampling a forest from the same
    generator seed (so the same noise) with its window at different steps."""
    transition = FlowSDE(FlowTimesteps.linear(TRANSITION_STEPS, shift=3.0), 0.7)
    cond = text_cond(2)
    forests = {}
    for seed, (name, window) in enumerate(WINDOWS.items()):
        model = SD3Denoiser(tiny_sd3(tmp_path_factory.mktemp(f"sd3_{seed}"), seed=seed))
        rollout = sample_forest(model, transition, cond, sde_steps=window, branching=(3, 3), trees_per_prompt=2,
                                latent_shape=LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
        tree = rollout.tree
        leaf_adv = torch.randn(tree.num_nodes, generator=torch.Generator().manual_seed(seed + 10))
        weight = treeadv.backup_with_weights(tree, leaf_adv, "logprob_softmax").weight
        forests[name] = (model, tree, weight, _noise_of_each_edge(model, transition, cond, tree))
    return forests


def test_the_two_models_and_windows_really_differ(two_forests):
    (model_a, tree_a, _, _), (model_b, tree_b, _, _) = two_forests.values()
    x, t = torch.randn(2, *LATENT_SHAPE), torch.full((2,), 500.0)
    with torch.no_grad():
        assert (model_a(x, t, text_cond(2)) - model_b(x, t, text_cond(2))).abs().max() > 0.1
    assert not torch.equal(tree_a.payload["step"], tree_b.payload["step"])
    edge = tree_a.parent >= 0
    assert (tree_a.log_prob[edge] - tree_b.log_prob[edge]).abs().max() > 0.1  # the stored log-probs differ


def test_both_trees_drew_the_same_noise(two_forests):
    (_, _, _, logit_a), (_, _, _, logit_b) = two_forests.values()
    torch.testing.assert_close(logit_a, logit_b, rtol=0, atol=1e-5)


def test_the_weights_agree_across_unrelated_models_given_the_same_noise(two_forests):
    (_, tree, weight_a, _), (_, _, weight_b, _) = two_forests.values()
    edge = tree.parent >= 0
    assert (weight_a[edge] - 1 / 3).abs().max() > 1e-2  # not uniform at D = 256: the agreement is not vacuous
    torch.testing.assert_close(weight_a, weight_b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", list(WINDOWS))
def test_the_weights_are_the_softmax_of_the_noise_norms(two_forests, window):
    _, tree, weight, logit = two_forests[window]
    closed_form = _softmax_over_siblings(logit, tree.parent)
    torch.testing.assert_close(weight.double(), closed_form, rtol=0, atol=1e-6)


def test_at_sd35_latent_size_the_softmax_at_temperature_one_is_mean():
    """``D = 16 x 64 x 64``, three siblings: mean-reduced log-probs give uniform weights (ESS > 2.999 of
    3), sum-reduced ones a one-hot on the smallest noise norm; the constant ``c`` is any number."""
    parents, k, dims = 32, 3, 16 * 64 * 64
    generator = torch.Generator().manual_seed(0)
    squared_norm = torch.randn(parents, k, dims, generator=generator).double().pow(2).sum(-1)  # [parents, k]
    shared = torch.randn(parents, 1, generator=generator, dtype=torch.float64) * 10  # c: -log std - log(2 pi) / 2
    for reduce, log_prob in (("mean", -squared_norm / (2 * dims) + shared), ("sum", -squared_norm / 2 + dims * shared)):
        tree = treeadv.Tree.regular(parents, k, 1, log_prob=torch.cat([torch.zeros(parents), log_prob.flatten()]))
        leaf_adv = torch.zeros(tree.num_nodes, dtype=torch.float64)
        weight = treeadv.backup_with_weights(tree, leaf_adv, "logprob_softmax").weight[parents:].view(parents, k)
        ess = 1 / weight.pow(2).sum(1)
        if reduce == "mean":
            assert ess.min() > 2.999, ess.min()
        else:
            assert ess.max() < 1.01, ess.max()
            assert torch.equal(weight.argmax(1), squared_norm.argmin(1))
