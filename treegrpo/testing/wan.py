"""A random-weight Wan2.1 text-to-video pipeline with the real folder layout, small enough for a CPU test.

:func:`save_tiny_wan_pipeline` builds a ``WanPipeline`` the way diffusers' own Wan tests do (a
3-channel-wide causal video VAE with 8x spatial and 4x temporal compression and Wan2.1's latent
statistics, a one-block ``WanTransformer3DModel`` over 1x2x2 patches, a UMT5 encoder) and the
scheduler Wan2.1 ships (``UniPCMultistepScheduler`` on flow sigmas, ``flow_shift = 3``, its 480p
setting), then writes it with ``save_pretrained``. The tokenizer is the byte-free unigram T5
tokenizer of :mod:`treegrpo.testing.pipelines`, so nothing is downloaded. Load it back with
``load_pipeline(path, num_frames=5)``: 32-pixel, 5-frame videos have ``[16, 2, 4, 4]`` latents.
"""

from __future__ import annotations

from pathlib import Path

import torch

from treegrpo.testing.pipelines import tiny_t5_tokenizer

TEXT_DIM = 32  # UMT5's d_model = the transformer's text_dim
IMAGE_SIZE = 32  # pixels; the VAE's 8x gives 4 x 4 latents, the 2x2 patches 4 tokens per latent frame
NUM_FRAMES = 5  # the VAE's causal 4x temporal compression: 1 + (5 - 1) / 4 = 2 latent frames
FLOW_SHIFT = 3.0  # Wan2.1's scheduler shift at 480p (5.0 at 720p)


def save_tiny_wan_pipeline(directory: str | Path, *, seed: int = 0) -> Path:
    """A ``WanPipeline`` (Wan2.1-T2V's structure at toy width) saved to ``directory``; returns ``directory``."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=80, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=FLOW_SHIFT)
    pipeline = WanPipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)
    pipeline.save_pretrained(directory)
    return Path(directory)
