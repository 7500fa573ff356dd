"""ImageReward v1.0 in transformers' BLIP: the published checkpoint mapped onto ``BlipVisionModel``
and ``BlipTextModel``, so the ``image-reward`` package (whose BLIP code no longer imports with
current transformers, and which pins old timm/protobuf) is not needed.

The score is ImageReward's: the BLIP ViT encodes the image (224 px, OpenAI normalisation), the
BERT text encoder reads the prompt (35 tokens) cross-attending to every image token, the MLP head
maps the ``[CLS]`` state to a scalar, and ``(s - 0.16717) / 1.03334`` standardises it.

Files under ``<reward_dir>/imagereward/``: ``ImageReward.pt``, ``med_config.json`` (the BERT config
BLIP ships) and ``bert-base-uncased/`` (the tokenizer files, e.g. ``vocab.txt``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from treegrpo.rewards.base import PreprocessingMode, check_batch
from treegrpo.rewards.clip_models import load_state_dict
from treegrpo.rewards.heads import mlp_head
from treegrpo.rewards.preprocess import torchvision_clip_preprocess
from treegrpo.rewards.weights import require, reward_dir

if TYPE_CHECKING:
    from transformers import BlipTextConfig, BlipVisionConfig

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
TOKENIZER_DIR = "bert-base-uncased"
SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
MAX_PROMPT_TOKENS = 35
HEAD_DIM = 64  # BLIP's ViT-B (768 / 12) and ViT-L (1024 / 16) both use 64-wide heads

# BLIP's timm-style ViT names -> transformers' BlipVisionModel names.
_VISION_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def split_checkpoint(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """ImageReward's flat state dict -> (vision, text, head) state dicts in transformers' names.

    The checkpoint's other BLIP parts (projections, momentum encoders) are unused by the score."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, replacement in _VISION_RENAMES:
                name, hits = re.subn(pattern, replacement, name)
                if hits:
                    break
            vision[name] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = value
    return vision, text, head


def vision_config(vision: dict[str, Tensor]) -> BlipVisionConfig:
    """A ``BlipVisionConfig`` read off the ViT weights' shapes (layer count, width, patch, image size)."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    tokens = vision["embeddings.position_embedding"].shape[1] - 1
    layers = 1 + max(int(key.split(".")[2]) for key in vision if key.startswith("encoder.layers."))
    return BlipVisionConfig(hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=layers, num_attention_heads=width // HEAD_DIM, patch_size=patch,
                            image_size=round(tokens ** 0.5) * patch, layer_norm_eps=1e-6, hidden_act="gelu")


def text_config(med_config: dict, encoder_width: int) -> BlipTextConfig:
    """A ``BlipTextConfig`` from BLIP's ``med_config.json``, cross-attending to ``encoder_width`` features."""
    from transformers import BlipTextConfig

    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
    # is_decoder builds the cross-attention layers; the forward runs bidirectionally (is_decoder=False).
    # The generation token ids are unused by a score (and would warn on a small vocabulary).
    return BlipTextConfig(**{key: med_config[key] for key in keep if key in med_config},
                          encoder_hidden_size=encoder_width, is_decoder=True,
                          bos_token_id=None, eos_token_id=None, sep_token_id=None)


def _load_strict(module: nn.Module, state: dict[str, Tensor], part: str, checkpoint: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ValueError(f"imagereward: {checkpoint} does not fit BLIP's {part} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected weights, first {first!r}); is it ImageReward.pt?")


class ImageReward(PreprocessingMode, nn.Module):
    """ImageReward v1.0: the standardised MLP score of BLIP's image-grounded ``[CLS]`` text state; the
    image preprocessed as ImageReward's own transform does (torchvision resize and crop on PIL)."""

    name = "imagereward"

    def __init__(self, folder: Path, device: torch.device, exact_preprocessing: bool = False) -> None:
        super().__init__()
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

        checkpoint = require(folder / CHECKPOINT_FILE, "imagereward")
        med_config = json.loads(require(folder / MED_CONFIG_FILE, "imagereward").read_text())
        tokenizer_dir = require(folder / TOKENIZER_DIR, "imagereward")
        vision_state, text_state, head_state = split_checkpoint(load_state_dict(checkpoint))
        if not vision_state or not text_state or not head_state:
            raise ValueError(f"imagereward: {checkpoint} lacks blip.visual_encoder.*, blip.text_encoder.* "
                             "or mlp.layers.* weights; is it ImageReward.pt?")
        config = vision_config(vision_state)
        self.vision = BlipVisionModel(config)
        self.text = BlipTextModel(text_config(med_config, config.hidden_size), add_pooling_layer=False)
        self.head = mlp_head(self.text.config.hidden_size)
        _load_strict(self.vision, vision_state, "vision encoder", checkpoint)
        _load_strict(self.text, text_state, "text encoder", checkpoint)
        _load_strict(self.head, head_state, "MLP head", checkpoint)
        self.to(device).eval().requires_grad_(False)
        self.preprocess = torchvision_clip_preprocess(config.image_size)
        self.exact_preprocessing = exact_preprocessing
        # BLIP's tokenizer: bert-base-uncased plus [DEC] (bos) and [ENC]; ImageReward's vocabulary has both.
        self.tokenizer = BertTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name)
        device = next(self.head.parameters()).device
        pixels = self.preprocess(images.to(device), exact=self.exact_preprocessing)
        image_states = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(device)
        text = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                         encoder_hidden_states=image_states,
                         encoder_attention_mask=torch.ones(image_states.shape[:2], dtype=torch.long, device=device),
                         is_decoder=False)
        raw = self.head(text.last_hidden_state[:, 0].float()).squeeze(-1)
        return ((raw - SCORE_MEAN) / SCORE_STD).float().to(images.device)


def imagereward(root: str | Path | None = None, device: torch.device | str = "cpu", exact_preprocessing: bool = False,
                **_) -> ImageReward:
    """ImageReward v1.0 from ``<reward_dir>/imagereward/``."""
    return ImageReward(reward_dir(root) / "imagereward", torch.device(device), exact_preprocessing)
