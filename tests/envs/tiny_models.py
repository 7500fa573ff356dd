"""Tiny random-weight diffusers models, saved to disk and loaded back the way a user would."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from tensordict import TensorDict

LATENT_SHAPE = (4, 8, 8)
TEXT_DIM, POOLED_DIM, TEXT_LEN = 16, 8, 5


def tiny_sd3(directory: Path, seed: int = 0) -> SD3Transformer2DModel:
    """A one-block MMDiT with SD3's interface (12k parameters), round-tripped through ``from_pretrained``."""
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM, pos_embed_max_size=16,
    )
    model.save_pretrained(directory / "transformer")
    return SD3Transformer2DModel.from_pretrained(directory / "transformer").eval()


def tiny_unet(directory: Path, seed: int = 0) -> UNet2DConditionModel:
    """A two-level conditional UNet with SD1.5's interface (52k parameters), round-tripped from disk."""
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=4,
    )
    model.save_pretrained(directory / "unet")
    return UNet2DConditionModel.from_pretrained(directory / "unet").eval()


def text_cond(num_prompts: int, seed: int = 1, pooled: bool = True) -> TensorDict:
    """Random stand-ins for text-encoder outputs, one row per prompt."""
    generator = torch.Generator().manual_seed(seed)
    fields = {"encoder_hidden_states": torch.randn(num_prompts, TEXT_LEN, TEXT_DIM, generator=generator)}
    if pooled:
        fields["pooled_projections"] = torch.randn(num_prompts, POOLED_DIM, generator=generator)
    return TensorDict(fields, batch_size=[num_prompts])


def reference_edges(tree):
    """One row per edge (non-root node), gathered node by node: the independent reference that
    :func:`treegrpo.envs.parent_batch` is checked against."""
    import torch

    node = torch.nonzero(tree.parent >= 0).squeeze(-1)
    parent = tree.parent[node]
    payload = tree.payload
    return {"latent": payload["latent"][parent], "step": payload["step"][parent], "sample": payload["sample"][node],
            "cond_index": payload["cond_index"][node], "log_prob": tree.log_prob[node], "node": node, "parent": parent}
