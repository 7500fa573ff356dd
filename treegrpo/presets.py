"""Per-model starting points: the paper's defaults, adjusted only where a model's scale demands it.

``Config()`` holds the paper's setting (SD3.5-Medium: NFE 10, k = 3, d = 3, lr 1e-5, clip 1e-4).
The embedded CPU problems are thousands of times smaller and train for minutes, so their presets
raise the learning rate and the clip range and set the run length; ``treegrpo train`` starts from
the preset of the resolved ``model.kind`` (see ``--print-config``), and files and flags override it.
"""

from __future__ import annotations

from treegrpo.config import Config

PRESETS: dict[str, tuple[str, ...]] = {
    "toy2d": (
        "sampling.shift=1.0", "sampling.num_steps=8", "sampling.prompts_per_iteration=4", "sampling.group_size=8",
        "optim.lr=3e-3", "loss.clip_range=0.2", "train.inner_epochs=2", "train.minibatch_parents=8",
        "train.iterations=30", "train.out_dir=runs/toy2d",
    ),
    "digits": (
        "model.rewards=classifier,aesthetic_proxy", "loss.reward_weights=0.7,0.3", "sampling.shift=1.0",
        "sampling.prompts_per_iteration=8", "optim.lr=2e-5", "loss.clip_range=1e-2", "loss.kl_coef=0.15",
        "train.iterations=100", "train.out_dir=runs/digits",
    ),
    # Real pipelines: the paper's setting; only what a 16-pixel digits default would get wrong.
    "sd3": (
        "model.rewards=hpsv2", "model.image_size=512", "sampling.prompts_per_iteration=32",
        "train.out_dir=runs/sd3",
    ),
    "sd15": (
        "model.rewards=hpsv2", "model.image_size=512", "sampling.prompts_per_iteration=32",
        "sampling.transition=ddim", "sampling.noise_level=1.0", "train.out_dir=runs/sd15",
    ),
}


def preset_config(kind: str) -> Config:
    """``Config()`` with ``model.kind = kind`` and that kind's preset applied (not yet checked for
    unused options: files and flags may still change the algorithm)."""
    return Config().override([f"model.kind={kind}", *PRESETS.get(kind, ())], check_used=False)
