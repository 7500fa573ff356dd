"""Rewards built on CLIP: HPSv2.1 and CLIPScore (open_clip), PickScore and the LAION aesthetic
predictor (transformers CLIP). Each loads its checkpoint from ``<reward_dir>/<name>/``.

- ``hpsv2``: open_clip ViT-H-14 with the HPS v2.1 weights; the score is the cosine similarity of
  the normalised image and text embeddings (what ``hpsv2.score`` returns, about 0.27 for SD3.5-M).
- ``clipscore``: the same cosine with the LAION ViT-H-14 CLIP (the paper's CLIPScore, about 0.40).
- ``pickscore``: ``logit_scale.exp()`` times the cosine, with PickScore_v1 (transformers CLIPModel).
- ``aesthetic``: the LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP ViT-L/14
  image embedding (about 6 for SD3.5-M).

Each scorer preprocesses as its official code does (:mod:`treegrpo.rewards.preprocess`): hpsv2's
resize-longer-side-and-pad, open_clip's and OpenAI CLIP's torchvision resize and crop, transformers'
CLIP processor's; ``exact_preprocessing`` (or :func:`~treegrpo.rewards.base.for_evaluation`) adds the
8-bit rounding of the official PIL path.

A folder may hold ``open_clip_config.json`` (open_clip's ``{embed_dim, vision_cfg, text_cfg}``) to
use another architecture than ViT-H-14: the tests build tiny random-weight models that way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from treegrpo.rewards.base import PreprocessingMode, check_batch
from treegrpo.rewards.heads import mlp_head
from treegrpo.rewards.preprocess import (
    Preprocess,
    clip_processor_preprocess,
    hpsv2_preprocess,
    torchvision_clip_preprocess,
)
from treegrpo.rewards.weights import require, reward_dir

HPS_FILE = "HPS_v2.1_compressed.pt"
OPEN_CLIP_FILE = "open_clip_pytorch_model.bin"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (weights only; ``state_dict`` unwrapped).

    The format is checked from the file's bytes first (:mod:`treegrpo.formats`), and a checkpoint
    ``torch.load`` refuses (a pickle that would run code) or cannot read is one line, not a traceback."""
    import pickle
    import zipfile

    from treegrpo.formats import FileFormatError, check_weights_file

    what = f"reward weights {path.parent.name}"
    check_weights_file(path, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise FileFormatError(f"{what}: {path} cannot be loaded as weights only ({type(error).__name__}: a pickle "
                              "that needs more than tensors is refused, since it could run code)") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise FileFormatError(f"{what}: {path} does not hold a mapping of tensors")
    return {str(key).removeprefix("module."): value for key, value in state.items() if isinstance(value, Tensor)}


def _open_clip_model(folder: Path, checkpoint: Path, name: str, device: torch.device):
    import open_clip

    config_file = folder / OPEN_CLIP_CONFIG
    config = json.loads(config_file.read_text()) if config_file.is_file() else open_clip.get_model_config("ViT-H-14")
    state = load_state_dict(require(checkpoint, name))  # before building the model: ViT-H-14 takes seconds
    model = open_clip.CLIP(**config)
    missing, _unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{name}: {checkpoint} lacks {len(missing)} weights of the architecture (first: "
                         f"{missing[0]}); is it the right checkpoint for {config_file if config_file.is_file() else 'ViT-H-14'}?")
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
    return model.to(device).eval().requires_grad_(False), tokenizer


def _image_size(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


class OpenClipCosine(PreprocessingMode, nn.Module):
    """``cos(image, text)`` of an open_clip model: HPSv2.1 and CLIPScore."""

    def __init__(self, model: nn.Module, tokenizer, name: str, preprocess: Preprocess,
                 exact_preprocessing: bool = False) -> None:
        super().__init__()
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.preprocess, self.exact_preprocessing = preprocess, exact_preprocessing

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """``[B, D]`` unit-norm image embeddings (on the model's device) of images ``[B, 3, H, W]`` in ``[0, 1]``."""
        device = next(self.model.parameters()).device
        pixels = self.preprocess(images.to(device), exact=self.exact_preprocessing)
        return self.model.encode_image(pixels, normalize=True)

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name)
        image = self.image_embeddings(images)
        text = self.model.encode_text(self.tokenizer(list(prompts)).to(image.device), normalize=True)
        return (image * text).sum(-1).float().to(images.device)


def hpsv2(root: str | Path | None = None, device: torch.device | str = "cpu", exact_preprocessing: bool = False,
          **_) -> OpenClipCosine:
    """HPSv2.1 from ``<reward_dir>/hpsv2/HPS_v2.1_compressed.pt``, preprocessed as ``hpsv2.score`` does."""
    folder = reward_dir(root) / "hpsv2"
    model, tokenizer = _open_clip_model(folder, folder / HPS_FILE, "hpsv2", torch.device(device))
    return OpenClipCosine(model, tokenizer, "hpsv2", hpsv2_preprocess(_image_size(model)), exact_preprocessing)


def clipscore(root: str | Path | None = None, device: torch.device | str = "cpu", exact_preprocessing: bool = False,
              **_) -> OpenClipCosine:
    """CLIPScore (cosine) from ``<reward_dir>/clipscore/open_clip_pytorch_model.bin`` (LAION ViT-H-14),
    preprocessed as open_clip's eval transform does."""
    folder = reward_dir(root) / "clipscore"
    model, tokenizer = _open_clip_model(folder, folder / OPEN_CLIP_FILE, "clipscore", torch.device(device))
    return OpenClipCosine(model, tokenizer, "clipscore", torchvision_clip_preprocess(_image_size(model)),
                          exact_preprocessing)


def _processor_config(folder: Path) -> dict:
    """``preprocessor_config.json`` of a transformers folder (empty when absent: the processor's defaults)."""
    config_file = folder / "preprocessor_config.json"
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


class PickScore(PreprocessingMode, nn.Module):
    """PickScore_v1: ``logit_scale.exp() * cos(image, text)`` of a transformers ``CLIPModel``, the image
    preprocessed as its ``CLIPImageProcessor`` does."""

    name = "pickscore"

    def __init__(self, folder: Path, device: torch.device, exact_preprocessing: bool = False) -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        require(folder / "config.json", "pickscore")
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.preprocess = clip_processor_preprocess(_processor_config(folder),
                                                    self.model.config.vision_config.image_size)
        self.exact_preprocessing = exact_preprocessing

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name)
        device = self.model.logit_scale.device
        pixels = self.preprocess(images.to(device), exact=self.exact_preprocessing)
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        image = nn.functional.normalize(_projected(self.model.get_image_features(pixel_values=pixels)), dim=-1)
        text = nn.functional.normalize(_projected(self.model.get_text_features(**tokens.to(device))), dim=-1)
        return (self.model.logit_scale.exp() * (image * text).sum(-1)).float().to(images.device)


def _projected(features) -> Tensor:
    """The projected embedding: transformers 4 returns it, transformers 5 wraps it as ``pooler_output``."""
    return features if isinstance(features, Tensor) else features.pooler_output


def pickscore(root: str | Path | None = None, device: torch.device | str = "cpu", exact_preprocessing: bool = False,
              **_) -> PickScore:
    """PickScore from the transformers folder ``<reward_dir>/pickscore/``."""
    return PickScore(reward_dir(root) / "pickscore", torch.device(device), exact_preprocessing)


class Aesthetic(PreprocessingMode, nn.Module):
    """LAION aesthetic score: the MLP on the L2-normalised CLIP ViT-L/14 image embedding, the image
    preprocessed as the predictor's own inference does (OpenAI CLIP's torchvision transform)."""

    name = "aesthetic"

    def __init__(self, folder: Path, device: torch.device, exact_preprocessing: bool = False) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        clip_folder = require(folder / "clip-vit-large-patch14", "aesthetic")
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_folder, local_files_only=True)
        state = load_state_dict(require(folder / AESTHETIC_FILE, "aesthetic"))
        self.head = mlp_head(self.clip.config.projection_dim)
        self.head.load_state_dict({key.removeprefix("layers."): value for key, value in state.items()})
        self.to(device).eval().requires_grad_(False)
        # Size and statistics from the folder's processor config; the resize and crop are OpenAI CLIP's.
        stats = clip_processor_preprocess(_processor_config(clip_folder), self.clip.config.image_size)
        self.preprocess = torchvision_clip_preprocess(stats.size, stats.mean, stats.std)
        self.exact_preprocessing = exact_preprocessing

    @torch.no_grad()
    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name)
        device = next(self.head.parameters()).device
        pixels = self.preprocess(images.to(device), exact=self.exact_preprocessing)
        embedding = nn.functional.normalize(self.clip(pixel_values=pixels).image_embeds, dim=-1)
        return self.head(embedding).squeeze(-1).float().to(images.device)


def aesthetic(root: str | Path | None = None, device: torch.device | str = "cpu", exact_preprocessing: bool = False,
              **_) -> Aesthetic:
    """The aesthetic predictor from ``<reward_dir>/aesthetic/``."""
    return Aesthetic(reward_dir(root) / "aesthetic", torch.device(device), exact_preprocessing)
