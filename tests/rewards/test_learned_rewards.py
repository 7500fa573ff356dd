"""Learned rewards on tiny random-weight models loaded through the user's loader: the shared
interface checks for all of them, and each CLIP-based scorer against its library's own pipeline."""

from __future__ import annotations

import pytest
import torch

from tests.rewards.tiny_rewards import TINY_OPEN_CLIP, save_tiny_rewards
from treegrpo.rewards import MissingRewardWeightsError, build_reward, clip_preprocess
from treegrpo.testing import official_preprocessing as official

LEARNED = ["hpsv2", "clipscore", "pickscore", "aesthetic", "imagereward"]
PROMPTS = [f"prompt number {i}" for i in range(16)]


@pytest.fixture(scope="module")
def reward_root(tmp_path_factory):
    return save_tiny_rewards(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def images():
    return torch.rand(16, 3, 48, 40, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
@pytest.mark.parametrize("name", LEARNED)
def test_batch_of_one_equals_batch_of_sixteen_and_repeats_exactly(reward_root, images, name, exact):
    reward = build_reward(name, root=reward_root, exact_preprocessing=exact)
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


@pytest.mark.parametrize("smooth", [False, True], ids=["noise", "smooth"])
def test_preprocessing_matches_open_clip_pil_transform(images, smooth):
    """CLIPScore's preprocessing against open_clip's own eval transform (PIL resize, centre crop).

    Exact mode equals it to float rounding. The fast mode skips Pillow's 8-bit rounding between and
    after its passes (1/255 / std = 0.015 after normalisation); on pure noise the unclipped float pass
    also differs at single pixels, on smooth images it agrees to that rounding."""
    import open_clip

    if smooth:
        images = torch.nn.functional.interpolate(images[..., :6, :5], size=(96, 80), mode="bilinear")
    quantised = (images * 255).round() / 255
    reference = torch.stack([open_clip.image_transform(32, is_train=False)(im) for im in official.to_pil(quantised)])
    assert (clip_preprocess(quantised, 32, exact=True) - reference).abs().max() < 1e-5
    difference = (clip_preprocess(quantised, 32) - reference).abs()
    assert difference.mean() < 0.006
    assert difference.max() < (0.02 if smooth else 0.25)


def test_hpsv2_is_the_cosine_of_open_clip_embeddings(reward_root, images):
    """The evaluation score equals open_clip's own model fed hpsv2's preprocessing (its eval transform:
    resize the longer side, pad), with open_clip's tokenizer and normalised features."""
    import open_clip

    from treegrpo.rewards.clip_models import HPS_FILE, load_state_dict

    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    model.load_state_dict(load_state_dict(reward_root / "hpsv2" / HPS_FILE))
    quantised = (images * 255).round() / 255
    pixels = official.apply(official.hpsv2_transform(32), quantised)
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    reference = (image * text).sum(-1)
    scores = build_reward("hpsv2", root=reward_root, exact_preprocessing=True)(quantised, PROMPTS)
    torch.testing.assert_close(scores, reference, atol=1e-5, rtol=1e-4)


def test_aesthetic_matches_the_predictors_clip_preprocessing(reward_root, images):
    """The LAION predictor's inference: OpenAI CLIP's transform, the L2-normalised embedding, the MLP."""
    from transformers import CLIPVisionModelWithProjection

    reward = build_reward("aesthetic", root=reward_root, exact_preprocessing=True)
    clip = CLIPVisionModelWithProjection.from_pretrained(reward_root / "aesthetic" / "clip-vit-large-patch14").eval()
    quantised = (images * 255).round() / 255
    pixels = official.apply(official.torchvision_transform(32), quantised)
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(clip(pixel_values=pixels).image_embeds, dim=-1)
        reference = reward.head(embedding).squeeze(-1)
    torch.testing.assert_close(reward(quantised, PROMPTS), reference, atol=1e-5, rtol=1e-4)


def test_bad_batches_are_one_line_errors(reward_root, images):
    reward = build_reward("clipscore", root=reward_root)
    with pytest.raises(ValueError, match=r"clipscore: expected 16 prompts \(one per image\), got 3 prompts"):
        reward(images, PROMPTS[:3])
    with pytest.raises(ValueError, match=r"clipscore: images must be \[B, 3, H, W\]"):
        reward(images[:, :1], PROMPTS)
