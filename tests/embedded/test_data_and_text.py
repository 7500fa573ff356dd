"""Digits data, prompt splits and the tiny text encoder."""

from __future__ import annotations

import pytest
import torch

from treegrpo.embedded.data import (
    DIGIT_WORDS,
    all_prompts,
    digits_prompts,
    format_prompt,
    image_split,
    load_digit_images,
)
from treegrpo.embedded.text import (
    TextEncoderConfig,
    TinyTextEncoder,
    WordTokenizer,
    load_text_encoder,
    save_text_encoder,
)


def test_images_are_sklearn_digits_upsampled_to_minus_one_one() -> None:
    from sklearn.datasets import load_digits

    images, labels = load_digit_images(16)
    assert images.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert images.min() >= -1 and images.max() <= 1
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)
    # Average-pooling the bilinear 2x upsample recovers the 8x8 originals' layout (same argmax pixel mass).
    pooled = torch.nn.functional.avg_pool2d((images + 1) / 2, 2).squeeze(1)
    assert torch.corrcoef(torch.stack([pooled.flatten(), (raw / 16).flatten()]))[0, 1] > 0.95
    assert torch.equal(labels, torch.as_tensor(load_digits().target))
    same, _ = load_digit_images(8)
    assert torch.allclose((same.squeeze(1) + 1) / 2 * 16, raw, atol=1e-5)


def test_load_digit_images_rejects_small_sizes() -> None:
    with pytest.raises(ValueError, match="size: expected an int >= 8, got 4"):
        load_digit_images(4)


def test_image_split_is_stratified_disjoint_and_seeded() -> None:
    _, labels = load_digit_images(8)
    train, heldout = image_split(labels, 0.2, seed=3)
    assert set(train.tolist()).isdisjoint(heldout.tolist())
    assert train.numel() + heldout.numel() == labels.numel()
    for digit in range(10):
        count = int((labels == digit).sum())
        assert int((labels[heldout] == digit).sum()) == round(0.2 * count)
    again = image_split(labels, 0.2, seed=3)
    assert torch.equal(again[1], heldout) and not torch.equal(image_split(labels, 0.2, seed=4)[1], heldout)


def test_prompt_splits_are_disjoint_and_labelled() -> None:
    train, heldout = digits_prompts("train"), digits_prompts("heldout")
    assert len(train) == 80 and len(heldout) == 40
    assert set(train.texts).isdisjoint(heldout.texts)
    for prompts in (train, heldout):
        for text, label in zip(prompts.texts, prompts.labels.tolist(), strict=True):
            assert DIGIT_WORDS[label] in text.split() or str(label) in text.split()
    assert train.texts[10 + 7] == format_prompt("the digit {digit}", 7) == "the digit 7"
    assert format_prompt("{a_word}", 8) == "an eight"
    assert len(all_prompts()) == 120
    with pytest.raises(ValueError, match="split: expected one of"):
        digits_prompts("test")


def test_tokenizer_pads_truncates_and_maps_unknown_words() -> None:
    tokenizer = WordTokenizer.from_texts(["a handwritten seven", "the digit 7"], max_length=3)
    ids, mask = tokenizer(["A handwritten SEVEN", "banana", "the digit 7 again"])
    assert ids.shape == (3, 3)
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, True]]
    assert ids[1, 0] == 1  # <unk>
    assert tokenizer.vocab[int(ids[0, 2])] == "seven"
    with pytest.raises(TypeError, match="texts: expected a list of strings"):
        tokenizer("one string")


def test_text_encoder_round_trips_and_ignores_padding(tmp_path) -> None:
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_texts(all_prompts().texts)
    encoder = TinyTextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size, dim=16, pooled_dim=8, num_heads=2),
                              tokenizer).eval()
    cond = encoder.encode(["a handwritten seven", "", "seven"])
    assert cond["encoder_hidden_states"].shape == (3, 8, 16) and cond["pooled_projections"].shape == (3, 8)
    assert torch.isfinite(cond["pooled_projections"]).all()  # the empty prompt is all padding, still finite
    assert (cond["encoder_hidden_states"][2, 1:] == 0).all()  # padded positions carry nothing
    # A prompt's encoding does not depend on what else is in the batch.
    alone = encoder.encode(["seven"])
    assert torch.allclose(alone["pooled_projections"][0], cond["pooled_projections"][2], atol=1e-6)
    save_text_encoder(encoder, tmp_path)
    loaded = load_text_encoder(tmp_path)
    assert loaded.tokenizer.vocab == tokenizer.vocab
    again = loaded.encode(["a handwritten seven", "", "seven"])
    assert torch.equal(again["pooled_projections"], cond["pooled_projections"])
