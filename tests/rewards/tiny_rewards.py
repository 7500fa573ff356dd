"""Tiny random-weight reward models written in the real checkpoint layouts under one reward folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _open_clip(folder: Path, checkpoint: str, wrap: bool, seed: int) -> None:
    import open_clip

    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    state = model.state_dict()
    torch.save({"state_dict": state} if wrap else state, folder / checkpoint)  # HPS wraps its weights


def _clip_configs():
    from transformers import CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=600, hidden_size=32, intermediate_size=37, num_attention_heads=2,
                          num_hidden_layers=1, projection_dim=24, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                              num_attention_heads=2, num_hidden_layers=1, projection_dim=24)
    return text, vision


def _preprocessor(folder: Path) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "do_center_crop": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "image_processor_type": "CLIPImageProcessor"}))


def save_tiny_rewards(root: Path, seed: int = 0) -> Path:
    """``root/{hpsv2,clipscore,pickscore,aesthetic}`` holding tiny models in each reward's real file layout."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
    from treegrpo.envs.tiny_pipelines import tiny_clip_tokenizer
    from treegrpo.rewards.clip_models import AESTHETIC_FILE, HPS_FILE, OPEN_CLIP_FILE, aesthetic_head

    _open_clip(root / "hpsv2", HPS_FILE, wrap=True, seed=seed)
    _open_clip(root / "clipscore", OPEN_CLIP_FILE, wrap=False, seed=seed + 1)
    text, vision = _clip_configs()
    torch.manual_seed(seed + 2)
    pick = root / "pickscore"
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)).save_pretrained(pick)
    tiny_clip_tokenizer().save_pretrained(pick)
    _preprocessor(pick)
    torch.manual_seed(seed + 3)
    clip_folder = root / "aesthetic" / "clip-vit-large-patch14"
    CLIPVisionModelWithProjection(vision).save_pretrained(clip_folder)
    _preprocessor(clip_folder)
    head = aesthetic_head(24)
    torch.save({f"layers.{key}": value for key, value in head.state_dict().items()}, root / "aesthetic" / AESTHETIC_FILE)
    return root
