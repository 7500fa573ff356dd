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
    """``root/{hpsv2,clipscore,pickscore,aesthetic,imagereward}`` holding tiny models in each reward's real file layout."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

    from treegrpo.rewards.clip_models import AESTHETIC_FILE, HPS_FILE, OPEN_CLIP_FILE
    from treegrpo.rewards.heads import mlp_head
    from treegrpo.testing.pipelines import tiny_clip_tokenizer

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
    head = mlp_head(24)
    torch.save({f"layers.{key}": value for key, value in head.state_dict().items()}, root / "aesthetic" / AESTHETIC_FILE)
    save_tiny_imagereward(root / "imagereward", seed=seed + 4)
    return root


# A tiny ImageReward: BLIP ViT (64-wide heads, as BLIP's) and a BERT text encoder with cross-attention.
TINY_BLIP = {"vision_width": 128, "vision_layers": 2, "patch": 16, "image_size": 32,
             "text_width": 32, "text_layers": 2, "text_heads": 2, "text_intermediate": 48}
TINY_BERT_WORDS = ["a", "an", "the", "of", "on", "photo", "cat", "dog", "red", "blue", "prompt", "number",
                   "painting", "house", "##s", *"0123456789"]


def _bert_vocab(folder: Path) -> int:
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    return len(vocab)


def _blip_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of ImageReward.pt that the score reads, in BLIP's names, with its shape."""
    c = TINY_BLIP
    w, h, i = c["vision_width"], c["text_width"], c["text_intermediate"]
    tokens = (c["image_size"] // c["patch"]) ** 2 + 1
    shapes = {"blip.visual_encoder.cls_token": (1, 1, w), "blip.visual_encoder.pos_embed": (1, tokens, w),
              "blip.visual_encoder.patch_embed.proj.weight": (w, 3, c["patch"], c["patch"]),
              "blip.visual_encoder.patch_embed.proj.bias": (w,),
              "blip.visual_encoder.norm.weight": (w,), "blip.visual_encoder.norm.bias": (w,)}
    for layer in range(c["vision_layers"]):
        p = f"blip.visual_encoder.blocks.{layer}."
        shapes |= {p + "norm1.weight": (w,), p + "norm1.bias": (w,), p + "norm2.weight": (w,), p + "norm2.bias": (w,),
                   p + "attn.qkv.weight": (3 * w, w), p + "attn.qkv.bias": (3 * w,),
                   p + "attn.proj.weight": (w, w), p + "attn.proj.bias": (w,),
                   p + "mlp.fc1.weight": (4 * w, w), p + "mlp.fc1.bias": (4 * w,),
                   p + "mlp.fc2.weight": (w, 4 * w), p + "mlp.fc2.bias": (w,)}
    t = "blip.text_encoder."
    shapes |= {t + "embeddings.word_embeddings.weight": (vocab_size, h),
               t + "embeddings.position_embeddings.weight": (512, h),
               t + "embeddings.LayerNorm.weight": (h,), t + "embeddings.LayerNorm.bias": (h,)}
    for layer in range(c["text_layers"]):
        p = f"{t}encoder.layer.{layer}."
        for block, kv_width in (("attention", h), ("crossattention", w)):
            shapes |= {f"{p}{block}.self.query.weight": (h, h), f"{p}{block}.self.query.bias": (h,),
                       f"{p}{block}.self.key.weight": (h, kv_width), f"{p}{block}.self.key.bias": (h,),
                       f"{p}{block}.self.value.weight": (h, kv_width), f"{p}{block}.self.value.bias": (h,),
                       f"{p}{block}.output.dense.weight": (h, h), f"{p}{block}.output.dense.bias": (h,),
                       f"{p}{block}.output.LayerNorm.weight": (h,), f"{p}{block}.output.LayerNorm.bias": (h,)}
        shapes |= {p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
                   p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,),
                   p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,)}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), ((h, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        shapes |= {f"mlp.layers.{index}.weight": (fan_out, fan_in), f"mlp.layers.{index}.bias": (fan_out,)}
    return shapes


def save_tiny_imagereward(folder: Path, seed: int = 0) -> Path:
    """``folder`` with ImageReward.pt (BLIP's key names, plus parts the score ignores), med_config.json
    and a bert-base-uncased/ tokenizer, all tiny and random."""
    vocab_size = _bert_vocab(folder / "bert-base-uncased") + 2  # BLIP adds [DEC] and [ENC]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _blip_shapes(vocab_size).items():
        scale = 1.0 / shape[-1] ** 0.5 if len(shape) > 1 else 0.1
        value = torch.randn(shape, generator=generator) * scale
        state[name] = value + 1.0 if "norm" in name.lower() and name.endswith("weight") else value
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(512)[None]
    state["blip.vision_proj.weight"] = torch.randn(256, TINY_BLIP["vision_width"], generator=generator)
    torch.save(state, folder / "ImageReward.pt")
    c = TINY_BLIP
    (folder / "med_config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": c["text_width"], "initializer_range": 0.02,
        "intermediate_size": c["text_intermediate"], "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "model_type": "bert", "num_attention_heads": c["text_heads"], "num_hidden_layers": c["text_layers"],
        "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 768,
        "add_cross_attention": True}))
    return folder
