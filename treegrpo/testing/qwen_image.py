"""A random-weight ``QwenImagePipeline`` with the real folder layout, small enough for a CPU test.

:func:`save_tiny_qwen_image_pipeline` builds every component from a small config (as diffusers' own
tests do), writes the pipeline with ``save_pretrained`` and returns the folder, which
:func:`treegrpo.families.pipelines.load_pipeline` loads like Qwen-Image's weights (kind read from
``model_index.json``). Nothing is downloaded: the tokenizer is a real ``Qwen2Tokenizer`` over a
byte-level vocabulary whose merges make each word of the pipeline's prompt template one token, so the
template is 34 tokens, as the pipeline's ``prompt_template_encode_start_idx`` expects, and the
embeddings it keeps are the prompt's own.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 32  # pixels: the VAE's x4 gives 8 x 8 latents, 16 packed 2x2 tokens
LATENT_CHANNELS = 16  # Qwen-Image's VAE (z_dim); the transformer reads 2x2 patches, 64 features per token
TEXT_HIDDEN = 16  # the text encoder's width = the transformer's joint_attention_dim
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TEMPLATE_TOKENS = 34
"""Tokens of QwenImagePipeline's template before the prompt (its ``prompt_template_encode_start_idx``)."""


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-unicode map (``Ġ`` for a space, ``Ċ`` for a newline), as Qwen2's BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def tiny_qwen_tokenizer():
    """A ``Qwen2Tokenizer``: the 256 bytes, the chat special tokens, and left-to-right merges that
    make each pre-token of QwenImagePipeline's system prompt (``" the"``, ``"Describe"``) one token."""
    import re

    from transformers import Qwen2Tokenizer

    alphabet = _byte_alphabet()
    vocab = {char: index for index, char in enumerate(alphabet.values())}
    merges: list[tuple[str, str]] = []
    # the template's text between its special tokens, split as Qwen2's pre-tokenizer splits it
    system = ("system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
              "relationships of the objects and background:")
    segments = (system, "\n", "user\n")
    words = [w for segment in segments for w in re.findall(r"[^\r\n\w]?[^\W\d_]+| ?[^\s\w]+[\r\n]*|\s*[\r\n]+", segment)]
    for word in words:
        pieces = "".join(alphabet[b] for b in word.encode())
        for end in range(2, len(pieces) + 1):
            if pieces[:end] not in vocab:
                merges.append((pieces[: end - 1], pieces[end - 1]))
                vocab[pieces[:end]] = len(vocab)
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tokenizer


def _text_encoder(tokenizer):
    """A two-layer Qwen2.5-VL (text width 16, a two-block vision tower it never runs) over ``tokenizer``'s ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    size = len(tokenizer)
    ids = {"bos_token_id": None, "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
           "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": TEXT_HIDDEN, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": size + 3,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, **ids},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=TEXT_HIDDEN, vocab_size=size + 3, **ids,
        # the vision ids sit past the tokenizer's vocabulary: prompts never contain them
        vision_start_token_id=size, vision_end_token_id=size + 1, vision_token_id=size + 2,
        image_token_id=size + 2, video_token_id=size + 2,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def save_tiny_qwen_image_pipeline(directory: str | Path, *, seed: int = 0) -> Path:
    """A ``QwenImagePipeline`` saved to ``directory``: Qwen-Image's structure at toy width.

    Two MMDiT blocks (3 heads of 16, rotary axes 8 + 4 + 4) over 2x2 patches of 16 latent channels
    (``in_channels = 64``, ``patch_size = 2``), a two-layer Qwen2.5-VL text encoder of width 16, a
    video-style VAE (``AutoencoderKLQwenImage``, x4 spatial, Qwen-Image's 16-channel ``latents_mean``
    and ``latents_std``) and Qwen-Image's scheduler config (dynamic shifting 0.5 .. 0.9 over
    256 .. 8192 tokens, exponential time shift, ``shift_terminal`` 0.02).
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=3, joint_attention_dim=TEXT_HIDDEN, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True])
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )
    tokenizer = tiny_qwen_tokenizer()
    pipeline = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=_text_encoder(tokenizer),
                                 tokenizer=tokenizer, transformer=transformer)
    pipeline.save_pretrained(directory)
    return Path(directory)
