"""Per-prompt diversity against plain Python loops, and the properties a reader relies on."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from treegrpo.rewards.diversity import ClipDiversity, embedding_diversity, group_rows, pixel_diversity


def _groups(seed=0):
    generator = torch.Generator().manual_seed(seed)
    group = torch.tensor([3, 1, 1, 3, 7, 1, 3, 7, 9])  # uneven groups, unsorted, one singleton
    return torch.rand(group.numel(), 1, 4, 4, generator=generator), group


def test_group_rows_pads_each_group_in_ascending_id():
    values, group = _groups()
    padded, mask, ids = group_rows(values, group)
    assert ids.tolist() == [1, 3, 7, 9] and mask.sum(1).tolist() == [3, 3, 2, 1]
    for q, prompt in enumerate(ids.tolist()):
        assert torch.equal(padded[q][mask[q]], values[group == prompt])


def test_pixel_diversity_is_the_mean_per_pixel_std_of_each_prompt():
    images, group = _groups()
    out = pixel_diversity(images, group)
    for q, prompt in enumerate(sorted(set(group.tolist()))):
        members = [images[i].flatten().tolist() for i in range(len(group)) if group[i] == prompt]
        stds = []
        for pixel in zip(*members, strict=True):
            mean = sum(pixel) / len(pixel)
            stds.append(math.sqrt(sum((p - mean) ** 2 for p in pixel) / max(len(pixel) - 1, 1)))
        assert float(out[q]) == pytest.approx(sum(stds) / len(stds), abs=1e-12)


def test_embedding_diversity_is_the_mean_pairwise_distance_of_unit_vectors():
    generator = torch.Generator().manual_seed(1)
    _, group = _groups()
    embeddings = torch.randn(group.numel(), 5, generator=generator)
    out = embedding_diversity(embeddings, group)
    for q, prompt in enumerate(sorted(set(group.tolist()))):
        units = [e / e.norm() for e, g in zip(embeddings.double(), group.tolist(), strict=True) if g == prompt]
        pairs = [float((a - b).norm()) for a, b in itertools.permutations(units, 2)]
        assert float(out[q]) == pytest.approx(sum(pairs) / len(pairs) if pairs else 0.0, abs=1e-12)


def test_identical_samples_have_zero_diversity_and_scale_does_not_matter():
    image = torch.rand(1, 3, 8, 8)
    group = torch.zeros(4, dtype=torch.long)
    assert float(pixel_diversity(image.expand(4, -1, -1, -1), group)) == 0.0
    embeddings = torch.randn(4, 6)
    assert float(embedding_diversity(embeddings[:1].expand(4, -1), group)) == pytest.approx(0.0, abs=1e-7)
    scaled = embeddings * torch.tensor([[1.0], [5.0], [0.1], [2.0]])
    torch.testing.assert_close(embedding_diversity(scaled, group), embedding_diversity(embeddings, group))


def test_clip_diversity_embeds_in_batches_and_matches_one_batch():
    projection = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(2))

    def embed(images):
        return images.flatten(1) @ projection

    images, group = torch.rand(10, 3, 8, 8), torch.arange(10) % 3
    torch.testing.assert_close(ClipDiversity(embed, batch=3)(images, group), ClipDiversity(embed, batch=64)(images, group))
    torch.testing.assert_close(ClipDiversity(embed)(images, group), embedding_diversity(embed(images), group))
