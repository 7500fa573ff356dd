"""End to end: every learned scorer's evaluation score (exact preprocessing, :func:`for_evaluation`)
equals the score of the official preprocessing (PIL, torchvision, transformers in
treegrpo.testing.official_preprocessing) fed into the same model, for square, non-square and half-pixel-offset
images. The tiny models read 32 px, so the half-pixel case is 245x224: its long side resizes to
int(32 * 245 / 224) = 35, a crop offset of 1.5 (transformers 1, torchvision 2), and hpsv2 pads
its 29-pixel side by an odd 3."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.rewards.tiny_rewards import save_tiny_rewards
from treegrpo.rewards import build_reward, for_evaluation
from treegrpo.testing import official_preprocessing as official

SIZE = 32  # the tiny models' input side
SHAPES = [(512, 512), (768, 512), (512, 640), (245, 224)]
PROMPTS = ["a photo of a cat", "red dog on the house"]
OFFICIAL = {
    "hpsv2": official.hpsv2_transform(SIZE),
    "clipscore": official.torchvision_transform(SIZE),  # open_clip's eval transform
    "pickscore": official.clip_image_processor(SIZE),  # the tiny preprocessor_config.json's values
    "aesthetic": official.torchvision_transform(SIZE),  # OpenAI CLIP's, in the LAION predictor's inference
    "imagereward": official.torchvision_transform(SIZE),  # ImageReward's _transform
}


@pytest.fixture(scope="module")
def reward_root(tmp_path_factory):
    return save_tiny_rewards(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def rewards(reward_root):
    return {name: build_reward(name, root=reward_root) for name in OFFICIAL}


def _images(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Two smooth 8-bit images (what a saved PNG holds) of ``shape``, in [0, 1]."""
    coarse = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.interpolate(coarse, size=shape, mode="bicubic").clamp(0, 1)
    return (smooth * 255).round() / 255


class _Pixels:
    """A stand-in preprocessing that hands the model the official pipeline's pixels."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def __call__(self, images: torch.Tensor, *, exact: bool) -> torch.Tensor:
        return self.pixels.to(images.device)


def _official_score(reward, images: torch.Tensor, prompts: list[str], transform) -> torch.Tensor:
    """The same model and text path, fed the official preprocessing's pixels."""
    reference = copy.copy(reward)
    reference.preprocess = _Pixels(official.apply(transform, images))
    return reference(images, prompts)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_evaluation_score_equals_the_official_pipelines(rewards, name, shape):
    reward = rewards[name]
    images = _images(shape, seed=len(name))
    expected = _official_score(reward, images, PROMPTS, OFFICIAL[name])
    scores = for_evaluation(reward)(images, PROMPTS)
    relative = ((scores - expected).abs() / expected.abs().clamp_min(1e-3)).max().item()
    assert relative < 1e-4, f"{name} {shape}: relative difference {relative:.2e}"


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_exact_preprocessing_option_equals_the_evaluation_view(reward_root, rewards, name):
    images = _images((768, 512), seed=7)
    built = build_reward(name, root=reward_root, exact_preprocessing=True)
    assert built.exact_preprocessing and not rewards[name].exact_preprocessing
    torch.testing.assert_close(built(images, PROMPTS), for_evaluation(rewards[name])(images, PROMPTS), rtol=0, atol=0)


def test_the_evaluation_view_shares_weights_and_leaves_training_fast(rewards):
    reward = rewards["hpsv2"]
    view = for_evaluation(reward)
    assert view is not reward and view.model is reward.model and view.exact_preprocessing
    assert not reward.exact_preprocessing  # the training instance keeps the fast pass
    jpeg = build_reward("jpeg_compressibility")
    assert for_evaluation(jpeg) is jpeg  # rewards without a preprocessing mode pass through


def test_half_pixel_offsets_move_the_score(rewards):
    """At 245x224 the two crop roundings pick different pixels; PickScore's must be transformers' floor."""
    images = _images((245, 224), seed=3)
    reward = rewards["pickscore"]
    torchvision_rounding = _official_score(reward, images, PROMPTS, official.torchvision_transform(SIZE))
    transformers_rounding = _official_score(reward, images, PROMPTS, official.clip_image_processor(SIZE))
    assert (torchvision_rounding - transformers_rounding).abs().max() > 1e-4
    torch.testing.assert_close(for_evaluation(reward)(images, PROMPTS), transformers_rounding, rtol=1e-4, atol=1e-6)
