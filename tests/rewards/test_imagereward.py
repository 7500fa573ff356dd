"""ImageReward in transformers' BLIP against a float64 re-derivation from BLIP's equations that reads
the checkpoint's own key names, so a wrong rename or config value cannot cancel out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from tests.rewards.blip_reference import imagereward_score
from tests.rewards.tiny_rewards import TINY_BERT_WORDS, TINY_BLIP, save_tiny_imagereward
from treegrpo.rewards import MissingRewardWeightsError, build_reward, clip_preprocess
from treegrpo.rewards.preprocess import OPENAI_MEAN, OPENAI_STD

PROMPTS = ["a photo of a cat", "red dog on the house", "painting", "blue cat of number 7"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    save_tiny_imagereward(root / "imagereward")
    return root


@pytest.fixture(scope="module")
def reward(root):
    return build_reward("imagereward", root=root)


@pytest.fixture(scope="module")
def checkpoint(root):
    return torch.load(root / "imagereward" / "ImageReward.pt", weights_only=True)


def _tokens(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT ids looked up by hand in the tiny vocabulary ([CLS] words [SEP], padded to 35)."""
    vocab = {word: index for index, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS])}
    ids = torch.zeros(len(prompts), 35, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = [2, *(vocab.get(word, 1) for word in prompt.split())][:34] + [3]
        ids[row, : len(words)] = torch.tensor(words)
    return ids, (ids != 0).long()


def test_score_equals_blip_equations_in_float64(reward, checkpoint):
    images = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    ids, mask = _tokens(PROMPTS)
    heads = TINY_BLIP["vision_width"] // 64, TINY_BLIP["text_heads"]
    expected = imagereward_score(clip_preprocess(images, TINY_BLIP["image_size"]), ids, mask, checkpoint, *heads)
    torch.testing.assert_close(reward(images, PROMPTS).double(), expected, atol=2e-5, rtol=0)


def test_tokenizer_is_blips_bert_with_its_two_extra_tokens(reward):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    ids = reward.tokenizer("Blue CATS").input_ids  # lower-cased, word pieces
    assert ids == [2, vocab.index("blue"), vocab.index("cat"), vocab.index("##s"), 3]
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(vocab), len(vocab) + 1]


def test_image_and_prompt_both_move_the_score(reward):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    same_prompt = reward(images, ["a red cat"] * 2)
    same_image = reward(images[:1].expand(2, -1, -1, -1), ["a red cat", "the blue house"])
    assert (same_prompt[0] - same_prompt[1]).abs() > 1e-4 and (same_image[0] - same_image[1]).abs() > 1e-4


def test_prompts_are_cut_at_35_tokens(reward):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    words = ("cat dog " * 30).split()
    scores = reward(images, [" ".join(words[:33]), " ".join(words)])  # 33 words + [CLS] + [SEP] = 35
    long_first = reward(images[1:], [" ".join(words[:33])])
    torch.testing.assert_close(scores[1:], long_first)


def test_matches_imagereward_pil_preprocessing(reward, checkpoint):
    """ImageReward's own transform (PIL Resize bicubic, CenterCrop, ToTensor, Normalize) on 8-bit images:
    the fast mode within 2e-2, exact preprocessing to the float32-vs-float64 model difference."""
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 6, 5, generator=torch.Generator().manual_seed(3)),
                                             size=(96, 80), mode="bilinear")
    quantised = (smooth * 255).round() / 255
    pil = [Image.fromarray(np.ascontiguousarray((x * 255).round().byte().permute(1, 2, 0).numpy())) for x in quantised]
    size = TINY_BLIP["image_size"]
    original = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.CenterCrop(size), transforms.ToTensor(),
                                   transforms.Normalize(OPENAI_MEAN, OPENAI_STD)])
    pixels = torch.stack([original(image) for image in pil])
    ids, mask = _tokens(PROMPTS)
    expected = imagereward_score(pixels, ids, mask, checkpoint, TINY_BLIP["vision_width"] // 64, TINY_BLIP["text_heads"])
    torch.testing.assert_close(reward(quantised, PROMPTS).double(), expected, atol=2e-2, rtol=0)  # fast (training)
    exact = reward.with_exact_preprocessing()(quantised, PROMPTS).double()
    torch.testing.assert_close(exact, expected, atol=2e-5, rtol=0)  # evaluation: the float64 model's error only


@pytest.mark.parametrize("part", ["med_config.json", "bert-base-uncased"])
def test_each_missing_file_is_named(tmp_path, part):
    folder = save_tiny_imagereward(tmp_path / "imagereward")
    target = folder / part
    if target.is_dir():
        for file in target.iterdir():
            file.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(MissingRewardWeightsError, match=f"imagereward: {target} is missing") as caught:
        build_reward("imagereward", root=tmp_path)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_that_is_not_imagereward_is_refused(tmp_path, checkpoint):
    folder = save_tiny_imagereward(tmp_path / "imagereward")
    torch.save({k: v for k, v in checkpoint.items() if not k.startswith("mlp.")}, folder / "ImageReward.pt")
    with pytest.raises(ValueError, match="lacks blip.visual_encoder"):
        build_reward("imagereward", root=tmp_path)
    truncated = {k: v for k, v in checkpoint.items() if "blocks.1." not in k or "qkv" not in k}
    torch.save(truncated, folder / "ImageReward.pt")
    with pytest.raises(ValueError, match=r"does not fit BLIP's vision encoder \(2 missing"):
        build_reward("imagereward", root=tmp_path)
