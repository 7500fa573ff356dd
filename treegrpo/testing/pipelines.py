"""Random-weight diffusers pipelines with the real folder layouts, small enough for a CPU test.

``save_tiny_sd3_pipeline(dir)``, ``save_tiny_flux_pipeline(dir)`` and ``save_tiny_sd15_pipeline(dir)`` build every component from a
small config (the way diffusers' own tests do), write the pipeline with ``save_pretrained`` and
return ``dir``. Tokenizers are real ``CLIPTokenizer``/``T5Tokenizer`` objects over a byte-level
vocabulary, so nothing is downloaded. Load the folder back with
:func:`treegrpo.families.pipelines.load_pipeline`, exactly as with SD3.5, FLUX.1 or SD1.5 weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CLIP_HIDDEN = 16  # per CLIP encoder; SD3 concatenates CLIP-L and CLIP-G to 2 x 16
JOINT_DIM = 32  # SD3's joint attention width (= T5's d_model)
IMAGE_SIZE = 16  # pixels; the VAE halves it to 8 x 8 latents
FLUX_LATENT_CHANNELS = 16  # FLUX.1's VAE; its transformer sees 2x2 patches of them, 64 features per token


def _byte_vocab() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: every byte is a one-character BPE token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` whose vocabulary is single bytes (no merges), ``model_max_length`` 77."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _byte_vocab():
            vocab.setdefault(char + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer():
    """A unigram ``T5Tokenizer`` over lowercase letters and digits."""
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in letters] + [("\u2581" + c, -1.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=600, hidden_size=CLIP_HIDDEN,
                          intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, hidden_act="gelu",
                          projection_dim=CLIP_HIDDEN if projection else 512, max_position_embeddings=77)


def _tiny_vae(latent_channels: int, **factors: Any):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=2, sample_size=IMAGE_SIZE, **factors)


def save_tiny_sd3_pipeline(directory: str | Path, *, t5: bool = True, seed: int = 0) -> Path:
    """A ``StableDiffusion3Pipeline`` (MMDiT, two CLIPs, optional T5, 16-px VAE) saved to ``directory``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=JOINT_DIM, caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_HIDDEN, pos_embed_max_size=16,
    )
    vae = _tiny_vae(4, shift_factor=0.0609, scaling_factor=1.5035)
    text_encoder = CLIPTextModelWithProjection(_clip_config(projection=True))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(projection=True))
    text_encoder_3 = tokenizer_3 = None
    if t5:
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=80, d_model=JOINT_DIM, d_kv=8, d_ff=37, num_layers=1,
                                                 num_heads=2, decoder_start_token_id=0))
        tokenizer_3 = tiny_t5_tokenizer()
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(directory)
    return Path(directory)


def save_tiny_flux_pipeline(directory: str | Path, *, guidance_embeds: bool = True, seed: int = 0) -> Path:
    """A ``FluxPipeline`` saved to ``directory``: FLUX.1-dev's structure at toy width.

    One double-stream and one single-stream block (2 heads of 16, rotary axes 4 + 6 + 6), a guidance
    embedding (``guidance_embeds``, as FLUX.1-dev; ``False`` is FLUX.1-schnell's structure), CLIP for
    the pooled vector (``pooled_projection_dim = 16``), T5 for the tokens (``joint_attention_dim = 32``),
    a 16-channel VAE without quant convs (FLUX's scaling and shift factors) and FLUX.1-dev's scheduler
    config (``use_dynamic_shifting``, shifts 0.5 .. 1.15 over 256 .. 4096 tokens).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * FLUX_LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=JOINT_DIM,
        pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    vae = _tiny_vae(FLUX_LATENT_CHANNELS, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                    use_post_quant_conv=False)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=80, d_model=JOINT_DIM, d_kv=8, d_ff=37, num_layers=1,
                                             num_heads=2, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=CLIPTextModel(_clip_config(projection=False)), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=tiny_t5_tokenizer(),
    )
    pipeline.save_pretrained(directory)
    return Path(directory)


def save_tiny_sd15_pipeline(directory: str | Path, *, seed: int = 0) -> Path:
    """A ``StableDiffusionPipeline`` (UNet, CLIP, 16-px VAE, PNDM scheduler as SD1.5 ships) saved to ``directory``."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CLIP_HIDDEN, attention_head_dim=4, norm_num_groups=4,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(
        vae=_tiny_vae(4, scaling_factor=0.18215), text_encoder=CLIPTextModel(_clip_config(projection=False)),
        tokenizer=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return Path(directory)
