"""Learned rewards on tiny random-weight models loaded through the user's loader: the shared
interface checks for all of them, and each CLIP-based scorer against its library's own pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from treegrpo.rewards import MissingRewardWeightsError, build_reward, clip_preprocess

from tests.rewards.tiny_rewards import TINY_OPEN_CLIP, save_tiny_rewards

LEARNED = ["hpsv2", "clipscore", "pickscore", "aesthetic", "imagereward"]
PROMPTS = [f"prompt number {i}" for i in range(16)]


@pytest.fixture(scope="module")
def reward_root(tmp_path_factory):
    return save_tiny_rewards(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def images():
    return torch.rand(16, 3, 48, 40, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", LEARNED)
def test_batch_of_one_equals_batch_of_sixteen_and_repeats_exactly(reward_root, images, name):
    reward = build_reward(name, root=reward_root)
    batched = reward(images, PROMPTS)
    assert batched.shape == (16,) and batched.dtype == torch.float32 and torch.isfinite(batched).all()
    singles = torch.cat([reward(images[i: i + 1], PROMPTS[i: i + 1]) for i in range(16)])
    torch.testing.assert_close(singles, batched, rtol=1e-5, atol=1e-5)
    assert torch.equal(reward(images, PROMPTS), batched)
    assert batched.std() > 0  # different images and prompts score differently


def test_reward_dir_comes_from_the_environment(reward_root, images, monkeypatch):
    monkeypatch.setenv("TREEGRPO_REWARD_DIR", str(reward_root))
    torch.testing.assert_close(build_reward("hpsv2")(images, PROMPTS), build_reward("hpsv2", root=reward_root)(images, PROMPTS))


@pytest.mark.parametrize(("name", "file"), [("hpsv2", "HPS_v2.1_compressed.pt"), ("clipscore", "open_clip_pytorch_model.bin"),
                                            ("pickscore", "config.json"), ("aesthetic", "clip-vit-large-patch14"),
                                            ("imagereward", "ImageReward.pt")])
def test_missing_weights_name_the_file_and_where_it_goes(tmp_path, name, file):
    with pytest.raises(MissingRewardWeightsError) as caught:
        build_reward(name, root=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / name / file) in message
    assert "TREEGRPO_REWARD_DIR" in message and "model.reward_dir" in message


def _pil(images: torch.Tensor) -> list[Image.Image]:
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


@pytest.mark.parametrize("smooth", [False, True], ids=["noise", "smooth"])
def test_preprocessing_matches_open_clip_pil_transform(images, smooth):
    """Our torch resize/crop/normalise against open_clip's own PIL transform (what hpsv2 uses).

    PIL rounds the resized pixels to 8 bits (1/255 / std = 0.015 after normalisation); on pure noise
    the two bicubic kernels also differ at single pixels, on smooth images they agree to that rounding.
    """
    import open_clip

    if smooth:
        images = torch.nn.functional.interpolate(images[..., :6, :5], size=(96, 80), mode="bilinear")
    quantised = (images * 255).round() / 255
    reference = torch.stack([open_clip.image_transform(32, is_train=False)(im) for im in _pil(quantised)])
    difference = (clip_preprocess(quantised, 32) - reference).abs()
    assert difference.mean() < 0.006
    assert difference.max() < (0.02 if smooth else 0.25)


def test_hpsv2_is_the_cosine_of_open_clip_embeddings(reward_root, images):
    """The score equals open_clip's own pipeline (PIL preprocessing, tokenizer, normalised features)."""
    import open_clip
    from treegrpo.rewards.clip_models import HPS_FILE, load_state_dict

    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    model.load_state_dict(load_state_dict(reward_root / "hpsv2" / HPS_FILE))
    quantised = (images * 255).round() / 255
    pixels = torch.stack([open_clip.image_transform(32, is_train=False)(im) for im in _pil(quantised)])
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    reference = (image * text).sum(-1)
    torch.testing.assert_close(build_reward("hpsv2", root=reward_root)(quantised, PROMPTS), reference, atol=5e-3, rtol=0)


def test_aesthetic_matches_transformers_clip_processor(reward_root, images):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    reward = build_reward("aesthetic", root=reward_root)
    folder = reward_root / "aesthetic" / "clip-vit-large-patch14"
    processor = CLIPImageProcessor.from_pretrained(folder)
    clip = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    quantised = (images * 255).round() / 255
    pixels = processor(images=_pil(quantised), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(clip(pixel_values=pixels).image_embeds, dim=-1)
        reference = reward.head(embedding).squeeze(-1)
    torch.testing.assert_close(reward(quantised, PROMPTS), reference, atol=5e-3, rtol=0)


def test_bad_batches_are_one_line_errors(reward_root, images):
    reward = build_reward("clipscore", root=reward_root)
    with pytest.raises(ValueError, match=r"clipscore: expected 16 prompts \(one per image\), got 3 prompts"):
        reward(images, PROMPTS[:3])
    with pytest.raises(ValueError, match=r"clipscore: images must be \[B, 3, H, W\]"):
        reward(images[:, :1], PROMPTS)
