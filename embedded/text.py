"""A word-level tokenizer and a tiny transformer text encoder with SD3's conditioning shapes.

The encoder maps prompts to ``encoder_hidden_states [B, T, D]`` (one vector per token, zero at
padding) and ``pooled_projections [B, P]`` (masked mean, then a linear map), the two fields
:class:`treegrpo.envs.SD3Denoiser` reads. The empty prompt ``""`` (all padding) encodes to zero
hidden states and the pooled bias: the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

PAD, UNK = "<pad>", "<unk>"


class WordTokenizer:
    """Lowercase, split on whitespace, look words up in a fixed vocabulary, pad/truncate to ``max_length``.

    Id 0 is ``<pad>``, id 1 is ``<unk>``; the rest are the words in sorted order, so the same texts
    always give the same vocabulary.
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 8) -> None:
        vocab = list(vocab)
        if vocab[:2] != [PAD, UNK]:
            raise ValueError(f"vocab: must start with {[PAD, UNK]}, got {vocab[:2]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab: contains duplicate words")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected an int >= 1, got {max_length!r}")
        self.vocab = vocab
        self.max_length = max_length
        self.index = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_length: int = 8) -> WordTokenizer:
        """The vocabulary of every word in ``texts`` (after lowercasing)."""
        words = sorted({word for text in texts for word in text.lower().split()})
        return cls([PAD, UNK, *words], max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(ids [B, T] long, mask [B, T] bool)``; ``mask`` is True at real (non-pad) tokens."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one str")
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.index.get(word, 1) for word in text.lower().split()][: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, ids != 0

    def save(self, path: Path | str) -> None:
        """Write ``{"vocab": [...], "max_length": T}`` as JSON."""
        Path(path).write_text(json.dumps({"vocab": self.vocab, "max_length": self.max_length}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        return cls(data["vocab"], data["max_length"])


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of :class:`TinyTextEncoder` (stored as its ``config.json``)."""

    vocab_size: int
    max_length: int = 8
    dim: int = 64  # D: width of encoder_hidden_states (the transformer's joint_attention_dim)
    pooled_dim: int = 64  # P: width of pooled_projections
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 2


class _Block(nn.Module):
    """Pre-norm self-attention + MLP; ``attend`` [B, T] says which keys take part."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :])
        x = x + self.proj(out.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))


class TinyTextEncoder(nn.Module):
    """Token + position embeddings, a few transformer blocks, and a pooled projection."""

    def __init__(self, config: TextEncoderConfig, tokenizer: WordTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.token = nn.Embedding(config.vocab_size, config.dim)
        self.position = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)
        self.blocks = nn.ModuleList(
            _Block(config.dim, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.pool = nn.Linear(config.dim, config.pooled_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states [B, T, D], pooled_projections [B, P])`` from token ids and mask."""
        x = self.token(ids) + self.position[: ids.shape[1]]
        attend = mask | ~mask.any(-1, keepdim=True)  # an all-padding row attends to its pads (no NaN)
        for block in self.blocks:
            x = block(x, attend)
        keep = mask.unsqueeze(-1).to(x.dtype)
        hidden = self.norm(x) * keep
        pooled = self.pool(hidden.sum(1) / keep.sum(1).clamp(min=1.0))
        return hidden, pooled

    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """Tokenize and encode ``prompts``: a TensorDict with batch size ``[len(prompts)]``."""
        if self.tokenizer is None:
            raise ValueError("tokenizer: this TinyTextEncoder has none; pass one to the constructor")
        ids, mask = self.tokenizer(prompts)
        device = self.token.weight.device
        hidden, pooled = self(ids.to(device), mask.to(device))
        return TensorDict(
            {"encoder_hidden_states": hidden, "pooled_projections": pooled}, batch_size=[len(prompts)], device=device
        )


TEXT_ENCODER_FILES = ("config.json", "vocab.json", "model.safetensors")


def save_text_encoder(encoder: TinyTextEncoder, directory: Path | str) -> None:
    """Write ``config.json``, ``vocab.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    if encoder.tokenizer is None:
        raise ValueError("tokenizer: cannot save a TinyTextEncoder without one")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(asdict(encoder.config), indent=1, sort_keys=True) + "\n")
    encoder.tokenizer.save(directory / "vocab.json")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_text_encoder(directory: Path | str) -> TinyTextEncoder:
    """Rebuild a :class:`TinyTextEncoder` (with its tokenizer) saved by :func:`save_text_encoder`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = TextEncoderConfig(**json.loads((directory / "config.json").read_text()))
    tokenizer = WordTokenizer.load(directory / "vocab.json")
    if tokenizer.vocab_size != config.vocab_size or tokenizer.max_length != config.max_length:
        raise ValueError(
            f"vocab.json: {tokenizer.vocab_size} words, max_length {tokenizer.max_length}; "
            f"config.json expects {config.vocab_size} words, max_length {config.max_length}"
        )
    encoder = TinyTextEncoder(config, tokenizer)
    encoder.load_state_dict(load_file(str(directory / "model.safetensors")))
    return encoder.eval()
