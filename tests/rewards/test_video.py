"""Video rewards and measures against independent references: plain loops over videos and frames in
float64, each frame scored or embedded on its own."""

from __future__ import annotations

import itertools

import pytest
import torch

from treegrpo.rewards import PreprocessingMode, for_evaluation
from treegrpo.rewards.video import (
    FrameAveraged,
    TemporalConsistency,
    frame_indices,
    frame_strip,
    video_diversity,
)

PROMPTS = ["a red cat", "two birds", "sunset over the sea"]


def videos(count: int = 3, frames: int = 5, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


class RedByPrompt(PreprocessingMode):
    """A toy image reward reading its prompt: mean red times the prompt's length (8-bit red when exact)."""

    name = "red"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, images, prompts):
        assert images.dim() == 4 and len(prompts) == images.shape[0]
        self.calls.append(images.shape[0])
        red = images[:, 0]
        if self.exact_preprocessing:
            red = (red * 255).round() / 255
        lengths = torch.tensor([len(p) for p in prompts], dtype=images.dtype)
        return red.mean(dim=(1, 2)) * lengths


def red_reference(video: torch.Tensor, prompt: str, picked: list[int], exact: bool = False) -> float:
    total = 0.0
    for f in picked:
        red = video[f, 0].double()
        if exact:
            red = (red * 255).round() / 255
        total += float(red.mean()) * len(prompt)
    return total / len(picked)


def test_frame_indices():
    assert frame_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert frame_indices(7, 3).tolist() == [0, 3, 6]
    assert frame_indices(5, 4).tolist() == [0, 1, 3, 4]  # round(0, 1.33, 2.67, 4)
    assert frame_indices(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert frame_indices(81, 1).tolist() == [0]
    assert frame_indices(5, [0, -1]).tolist() == [0, 4]
    with pytest.raises(ValueError, match="out of range for 5 frames"):
        frame_indices(5, [5])
    with pytest.raises(ValueError, match="expected an int >= 1"):
        frame_indices(5, 0)


@pytest.mark.parametrize("frames, batch", [(None, 64), (3, 64), (3, 2), ([4, 0], 5)])
def test_frame_averaged_equals_a_loop_over_frames(frames, batch):
    clips = videos(frames=7)
    inner = RedByPrompt()
    reward = FrameAveraged(inner, frames=frames, batch=batch)
    picked = frame_indices(7, frames).tolist()
    expected = torch.tensor([red_reference(clips[b], PROMPTS[b], picked) for b in range(3)], dtype=torch.float64)
    scores = reward(clips, PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and reward.name == "red"
    torch.testing.assert_close(scores.double(), expected, rtol=1e-6, atol=1e-6)
    assert max(inner.calls) <= batch and sum(inner.calls) == 3 * len(picked)


def test_frame_averaged_evaluation_view_preprocesses_exactly():
    clips = videos(frames=5)
    reward = FrameAveraged(RedByPrompt(), frames=2)
    exact = for_evaluation(reward)
    assert exact.image_reward.exact_preprocessing and not reward.image_reward.exact_preprocessing
    expected = torch.tensor([red_reference(clips[b], PROMPTS[b], [0, 4], exact=True) for b in range(3)],
                            dtype=torch.float64)
    torch.testing.assert_close(exact(clips, PROMPTS).double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"red: videos must be \[B, F, 3, H, W\]"):
        reward(clips[:, 0], PROMPTS)
    with pytest.raises(ValueError, match="red: expected 3 prompts \\(one per video\\), got 2 prompts"):
        reward(clips, PROMPTS[:2])


@pytest.fixture(scope="module")
def tiny_clip():
    """A random transformers CLIP vision tower with projection; ``embed`` maps [N, 3, 16, 16] in [0, 1]
    to [N, 8] the way a CLIP reward preprocesses (normalised pixels)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, projection_dim=8)).eval()
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed(images):
        return model(pixel_values=(images - mean) / std).image_embeds

    return embed


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("batch", [64, 3])
def test_temporal_consistency_equals_a_loop_over_frame_pairs(tiny_clip, batch):
    clips = videos(frames=5)
    clips[2] = clips[2, :1].expand(5, -1, -1, -1)  # a still video: consistency 1
    reward = TemporalConsistency(tiny_clip, batch=batch)
    expected = []
    for video in clips:
        embeddings = [tiny_clip(frame.unsqueeze(0))[0] for frame in video]  # one frame per call
        expected.append(sum(cosine(a, b) for a, b in itertools.pairwise(embeddings)) / (len(embeddings) - 1))
    scores = reward(clips, PROMPTS)
    assert scores.shape == (3,) and reward.name == "temporal_consistency"
    torch.testing.assert_close(scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert abs(float(scores[2]) - 1) < 1e-5 and float(scores[:2].max()) < 1
    assert torch.equal(reward(clips[:, :1], PROMPTS), torch.ones(3))  # one frame: nothing to compare


def test_video_diversity_equals_a_loop_over_pairs(tiny_clip):
    clips = videos(count=5, frames=3)
    ids = torch.tensor([2, 0, 2, 2, 0])
    clips[3] = clips[0]  # a repeated video lowers prompt 2's diversity
    embedded, pixels = [], []
    for prompt in (0, 2):
        members = [clips[i] for i in range(5) if ids[i] == prompt]
        means = []
        for video in members:
            units = [e.double() / e.double().norm() for e in (tiny_clip(f.unsqueeze(0))[0] for f in video)]
            mean = sum(units) / len(units)
            means.append(mean / mean.norm())
        pairs = [(a - b).norm() for a, b in itertools.permutations(means, 2)]
        embedded.append(float(sum(pairs) / len(pairs)))
        stacked = torch.stack([v.double().flatten() for v in members])  # [n, F 3 H W]
        pixels.append(float(stacked.std(0, unbiased=True).mean()))
    torch.testing.assert_close(video_diversity(clips, ids, tiny_clip, batch=4),
                               torch.tensor(embedded, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(video_diversity(clips, ids), torch.tensor(pixels, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)
    assert video_diversity(clips[:1], ids[:1]).tolist() == [0.0]  # one video: no pair


def test_frame_strip_puts_frames_side_by_side():
    clips = videos(count=2, frames=4, size=8)
    strip = frame_strip(clips)
    assert strip.shape == (2, 3, 8, 32)
    for b, f in itertools.product(range(2), range(4)):
        assert torch.equal(strip[b, :, :, 8 * f:8 * (f + 1)], clips[b, f])
    picked = frame_strip(clips[1], frames=2)  # one video, first and last frames
    assert torch.equal(picked, torch.cat([clips[1, 0], clips[1, 3]], dim=-1))
    with pytest.raises(ValueError, match="frame_strip: videos must be"):
        frame_strip(clips[0, 0])
