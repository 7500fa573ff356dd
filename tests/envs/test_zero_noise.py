"""No trained edge on a zero-std step, for every transition and window schedule.

A step whose std is 0 (CPS into ``t = 0``, DDIM onto a final alpha of 1, anything at noise level 0)
is a point mass: its ``k`` children are one image and its log-prob is 0 or ``-inf`` depending on
bitwise equality of a recomputed mean. Windows lie in the noisy steps; ``"all"`` skips the rest.
"""

from __future__ import annotations

import pytest
import torch

from treegrpo.algos.build import build_sampler
from treegrpo.config import Config, ConfigError
from treegrpo.envs import (
    DDIM,
    DanceSDE,
    DDIMTimesteps,
    FlowCPS,
    FlowSDE,
    FlowTimesteps,
    GaussianData,
    TrajectorySampler,
    TreeSampler,
    check_on_policy,
)
from treegrpo.problems import Problem

DATA = GaussianData(torch.zeros(4), torch.eye(4) * 0.5)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(set_alpha_to_one=True)


def _ddim(num_steps=10, eta=1.0):
    return DDIM(DDIMTimesteps.from_scheduler(_scheduler(), num_steps), eta=eta)


def _flow(cls, num_steps=10, level=0.7):
    return cls(FlowTimesteps.linear(num_steps, shift=3.0), level)


TRANSITIONS = {
    "flow_sde": lambda: _flow(FlowSDE),
    "dance_sde": lambda: _flow(DanceSDE, level=0.3),
    "cps": lambda: _flow(FlowCPS),
    "ddim (final alpha 1)": _ddim,
}
SILENT_LAST = {"cps", "ddim (final alpha 1)"}  # these two have no noise on their last step


def _model(transition):
    if transition.prediction == "epsilon":
        return DATA.epsilon_model(_scheduler().alphas_cumprod)
    return DATA.velocity_model()


@pytest.mark.parametrize("name", TRANSITIONS)
def test_noisy_steps_are_the_steps_with_a_positive_std(name):
    transition = TRANSITIONS[name]()
    std = transition.step_std(torch.arange(transition.num_steps))
    assert transition.noisy_steps() == tuple(int(i) for i in torch.nonzero(std > 0).flatten())
    assert (name in SILENT_LAST) == (transition.noisy_steps() == tuple(range(9)))
    assert transition.deterministic().noisy_steps() == () and transition.deterministic().trainable_horizon() == 0


def _problem(transition):
    return Problem(model=_model(transition), transition=transition, latent_shape=(4,),
                   prompts=lambda it, g: (None, torch.zeros(2, dtype=torch.long)), reward=lambda x, p: x.sum(-1))


SCHEDULES = [
    ["sampling.window=geometric", "sampling.alpha=0.05"],  # alpha small puts mass on... the early starts
    ["sampling.window=geometric", "sampling.alpha=1.0"],  # uniform: the last start is as likely as any
    ["sampling.window=adaptive", "sampling.alpha=1.0"],
    ["sampling.window=fixed", "sampling.window_start=6"],
    ["sampling.window=shifting", "sampling.window_start=5", "sampling.window_shift=1"],
    ["loss.algorithm=mixgrpo", "sampling.window_start=5", "sampling.window_shift=1"],
    ["loss.algorithm=grpo", "sampling.sde_steps=window", "sampling.window_start=4"],
]


@pytest.mark.parametrize("name", TRANSITIONS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(a.split("=")[1] for a in s))
def test_no_window_of_any_schedule_reaches_a_zero_noise_step(name, schedule):
    transition = TRANSITIONS[name]()
    sampler = build_sampler(Config().override(schedule), _problem(transition))
    noisy = set(transition.noisy_steps())
    for epoch in range(60):
        steps = sampler.steps(epoch) if isinstance(sampler, TrajectorySampler) else sampler.window.steps(epoch)
        assert steps and set(steps) <= noisy, (epoch, steps)
    if name in SILENT_LAST and "sampling.alpha=1.0" in schedule:  # the window reaches the last noisy step
        assert max(max(sampler.window.steps(e)) for e in range(60)) == max(noisy)


@pytest.mark.parametrize("name", TRANSITIONS)
def test_all_steps_means_every_noisy_step_and_the_rest_are_counted(name):
    transition = TRANSITIONS[name]()
    sampler = TrajectorySampler(_model(transition), transition, group_size=2)
    assert sampler.steps() == transition.noisy_steps()
    assert sampler.skipped_steps == ((9,) if name in SILENT_LAST else ())
    rollout = sampler.sample(None, num_prompts=2, latent_shape=(4,), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(rollout.tree.log_prob).all()
    assert check_on_policy(rollout, _model(transition), transition, None, max_batch=1).is_rounding  # up to rounding


@pytest.mark.parametrize("name", sorted(SILENT_LAST))
def test_an_explicit_zero_noise_step_is_refused(name):
    transition = TRANSITIONS[name]()
    with pytest.raises(ValueError, match=r"^sde_steps: step\(s\) \[9\]"):
        TrajectorySampler(_model(transition), transition, group_size=2, sde_steps=[7, 8, 9])
    sampler = TreeSampler(_model(transition), transition, branching=2, depth=3)
    with pytest.raises(ValueError, match="^window_start: "):
        sampler.sample(None, num_prompts=1, latent_shape=(4,), window_start=7)


@pytest.mark.parametrize("name", TRANSITIONS)
def test_the_last_legal_window_passes_the_check_at_any_micro_batch(name):
    transition = TRANSITIONS[name]()
    model = _model(transition)
    last = transition.trainable_horizon() - 3
    sampler = TreeSampler(model, transition, branching=3, depth=3, max_batch=7)
    rollout = sampler.sample(None, num_prompts=4, latent_shape=(4,), window_start=last,
                             generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(rollout.tree.log_prob).all()
    for max_batch in (1, 5, None):
        assert check_on_policy(rollout, model, transition, None, max_batch=max_batch).is_rounding  # up to rounding
    children = rollout.tree.payload["sample"][rollout.tree.depth == 3].view(-1, 3, 4)
    assert (children[:, 0] != children[:, 1]).all()  # the deepest level really branched


def test_noise_level_zero_and_a_window_too_deep_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="^sampling.noise_level: expected a number > 0, got 0"):
        Config().override(["sampling.noise_level=0"])
    transition = FlowCPS(FlowTimesteps.linear(10, shift=3.0), 0.0)  # a problem whose own transition has no noise
    with pytest.raises(ConfigError, match="^sampling.noise_level: 0.7 leaves every step"):
        build_sampler(Config().override(["sampling.transition=cps"]), _problem(transition))
    transition = FlowCPS(FlowTimesteps.linear(10, shift=3.0), 0.7)
    with pytest.raises(ConfigError, match="^sampling.depth: 10 SDE steps do not fit in the 9 of 10"):
        build_sampler(Config().override(["sampling.depth=10"]), _problem(transition))
    with pytest.raises(ConfigError, match="^sampling.window_start: a window of 3 steps from step 7"):
        build_sampler(Config().override(["sampling.window=fixed", "sampling.window_start=7"]), _problem(transition))
