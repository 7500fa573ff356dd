"""ImageReward's score written out from BLIP's equations, in float64, reading the checkpoint's own key
names: an independent reference for the transformers-based scorer (which renames every weight)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072


def _linear(x: Tensor, state: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, state[name + ".weight"], state[name + ".bias"])


def _norm(x: Tensor, state: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """Multi-head softmax(q k^T / sqrt(d) + bias) v on ``[B, N, C]`` projections."""
    def split(x: Tensor) -> Tensor:
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


def vit(pixels: Tensor, state: dict[str, Tensor], heads: int) -> Tensor:
    """BLIP's VisionTransformer: patches + [CLS] + positions, pre-norm blocks, final LayerNorm (eps 1e-6)."""
    p = "blip.visual_encoder."
    weight = state[p + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, weight, state[p + "patch_embed.proj.bias"], stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + state[p + "pos_embed"]
    layers = len({key.split(".")[3] for key in state if key.startswith(p + "blocks.")})
    for layer in range(layers):
        b = f"{p}blocks.{layer}."
        q, k, v = _linear(_norm(x, state, b + "norm1", 1e-6), state, b + "attn.qkv").chunk(3, -1)
        x = x + _linear(_attention(q, k, v, heads), state, b + "attn.proj")
        hidden = F.gelu(_linear(_norm(x, state, b + "norm2", 1e-6), state, b + "mlp.fc1"))
        x = x + _linear(hidden, state, b + "mlp.fc2")
    return _norm(x, state, p + "norm", 1e-6)


def bert_cls(input_ids: Tensor, mask: Tensor, image: Tensor, state: dict[str, Tensor], heads: int) -> Tensor:
    """BLIP's multimodal BERT ``[CLS]`` state: self-attention over the unpadded prompt tokens,
    cross-attention to every image token, feed-forward; post-norm residuals (eps 1e-12)."""
    t = "blip.text_encoder."
    positions = state[t + "embeddings.position_embeddings.weight"][: input_ids.shape[1]]
    x = _norm(state[t + "embeddings.word_embeddings.weight"][input_ids] + positions, state, t + "embeddings.LayerNorm", 1e-12)
    pad_bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -1e4
    layers = len({key.split(".")[4] for key in state if key.startswith(t + "encoder.layer.")})
    for layer in range(layers):
        b = f"{t}encoder.layer.{layer}."
        for block, source, bias in (("attention", x, pad_bias), ("crossattention", image, None)):
            s = f"{b}{block}."
            context = _attention(_linear(x, state, s + "self.query"), _linear(source, state, s + "self.key"),
                                 _linear(source, state, s + "self.value"), heads, bias)
            x = _norm(_linear(context, state, s + "output.dense") + x, state, s + "output.LayerNorm", 1e-12)
        hidden = F.gelu(_linear(x, state, b + "intermediate.dense"))
        x = _norm(_linear(hidden, state, b + "output.dense") + x, state, b + "output.LayerNorm", 1e-12)
    return x[:, 0]


def imagereward_score(pixels: Tensor, input_ids: Tensor, mask: Tensor, state: dict[str, Tensor],
                      vision_heads: int, text_heads: int) -> Tensor:
    """``(MLP([CLS]) - mean) / std`` in float64 on preprocessed ``pixels`` and BERT tokens."""
    state = {key: value.double() if value.is_floating_point() else value for key, value in state.items()}
    x = bert_cls(input_ids, mask, vit(pixels.double(), state, vision_heads), state, text_heads)
    for index in (0, 2, 4, 6, 7):
        x = _linear(x, state, f"mlp.layers.{index}")
    return (x.squeeze(-1) - SCORE_MEAN) / SCORE_STD
