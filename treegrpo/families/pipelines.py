"""Text-to-image pipelines from local weights: SD3 / SD3.5 and FLUX.1 (rectified flow), SD1.5-style (DDIM).

:func:`load_pipeline` reads a diffusers pipeline folder (``save_pretrained`` layout) without any
download and returns a :class:`TextToImageModel`: the trainable denoiser wrapped for the samplers,
``encode`` (prompts -> conditioning TensorDict, through the pipeline's own ``encode_prompt``),
``decode`` (latents -> images in ``[0, 1]``, through the VAE in micro-batches) and ``transition``
(the stochastic step on the pipeline's own schedule). The VAE and the text encoders are frozen and
kept in ``frozen_dtype`` (bf16 by default); only the denoiser is trained.

    model = load_pipeline("/weights/stable-diffusion-3.5-medium", t5=False, device="cuda")
    cond = model.encode(["a photo of a cat"])

FLUX.1 (``kind="flux"``) keeps its latents unpacked like SD3's (:class:`~treegrpo.envs.flux.FluxDenoiser`
packs them for the transformer), samples with its distilled guidance (:meth:`TextToImageModel.guided_denoiser`)
and shifts its schedule by resolution, so its ``transition`` needs the image size.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.transitions import Transition
from treegrpo.errors import TreegrpoError
from treegrpo.families.base import ModelFamily, families, family, prompts_list

__all__ = [
    "PipelineLayoutError",
    "TextToImageModel",
    "check_image_size",
    "check_layout",
    "check_true_cfg",
    "detect_kind",
    "load_pipeline",
    "resolve_model_path",
]


class PipelineLayoutError(TreegrpoError, FileNotFoundError):
    """A model folder is missing or does not hold the expected diffusers pipeline."""


def resolve_model_path(path: str | Path) -> Path:
    """A local folder, or a Hub id already in the local Hugging Face cache (never downloaded)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        with contextlib.suppress(Exception):  # any failure means "not in the local cache"
            return Path(snapshot_download(text, local_files_only=True))
    hint = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    raise PipelineLayoutError(f"model.path: {text!r} is not a local folder nor a Hub id in the local cache{hint}; "
                              "download the pipeline with `huggingface-cli download REPO --local-dir DIR` "
                              "and pass DIR")


def check_layout(path: Path, kind: str, *, t5: bool = True) -> None:
    """Raise a one-line :class:`PipelineLayoutError` unless ``path`` holds a ``kind`` pipeline."""
    layout = family(kind)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise PipelineLayoutError(f"model.path: {path} has no model_index.json; expected {layout.describe()}")
    declared = json.loads(index_file.read_text()).get("_class_name", "")
    if declared != layout.pipeline:
        raise PipelineLayoutError(f"model.path: {index_file} declares {declared!r}; model.kind={kind} expects "
                                  f"{layout.pipeline} ({layout.describe()})")
    if layout.t5 == "required" and not t5:
        raise ArgumentError(f"model.t5: false, but {layout.title} reads prompts through its T5 encoder "
                            f"({layout.t5_folders[0]}) alone; leave model.t5=true (t5=false is for a family whose T5 "
                            "is optional, such as SD3)")
    for name in layout.folders(t5):
        if not (path / name).is_dir():
            extra = ""
            if name in layout.t5_folders:
                extra = (f" ({layout.title}'s T5, which it cannot run without)" if layout.t5 == "required" else
                         "; set model.t5=false to run without T5")
            raise PipelineLayoutError(f"model.path: {path / name} is missing; expected {layout.describe()}{extra}")
    check_weight_files(path)


def check_weight_files(path: Path) -> None:
    """Refuse, before any loader parses them, a component folder whose weights are only pickles
    (``.bin``, ``.pt``: loading one can run code) and a ``.safetensors`` file that is not one
    (a renamed pickle, a damaged header), each in one line naming the file."""
    from treegrpo.formats import PICKLE_SUFFIXES, FileFormatError, check_safetensors

    for component in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [p for p in component.iterdir() if p.is_file()]
        safetensors = [p for p in files if p.name.endswith(".safetensors")]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not safetensors:
            raise PipelineLayoutError(f"model.path: {pickles[0]} is a pickle and {component} has no .safetensors "
                                      "weights; pickles can run code when loaded and are refused (convert them to "
                                      "safetensors)")
        for file in safetensors:
            try:
                check_safetensors(file, "model.path")
            except FileFormatError as error:
                raise PipelineLayoutError(str(error)) from None


def image_multiple(path: Path, kind: str) -> int:
    """The side an image size must be a multiple of for the pipeline in ``path``: the VAE's
    downsampling (``2^(levels - 1)``) times the denoiser's patch size (times FLUX's 2x2 packing),
    read from their config files."""
    chosen = family(kind)
    patch = _patch_side(_component_config(path, chosen.network).get("patch_size"))
    return vae_spatial_factor(_component_config(path, "vae")) * patch * chosen.pack


def vae_spatial_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent cell along each side, from a VAE's config: the video VAEs' own
    ``scale_factor_spatial`` (Wan) or ``2^len(temperal_downsample)`` (Qwen-Image), else
    ``2^(levels - 1)`` of an image VAE's ``block_out_channels`` (8 for SD3, FLUX.1 and SD1.5)."""
    if vae_config.get("scale_factor_spatial"):
        return int(vae_config["scale_factor_spatial"])
    if vae_config.get("temperal_downsample") is not None:
        return 2 ** len(vae_config["temperal_downsample"])
    return 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)


def _patch_side(patch_size: Any) -> int:
    """The spatial side of a network's patches: ``patch_size``, or the last entry of a ``(t, h, w)`` one (Wan)."""
    if isinstance(patch_size, list | tuple):
        return int(patch_size[-1])
    return int(patch_size or 1)


def _component_config(path: Path, name: str) -> dict:
    """``<path>/<name>/config.json`` as a dict; a one-line layout error if it cannot be read."""
    file = path / name / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineLayoutError(f"model.path: cannot read {file} ({type(error).__name__})") from None


def check_true_cfg(path: Path, kind: str, true_cfg_scale: float) -> None:
    """One line (before loading) if ``true_cfg_scale != 1`` is asked of a model without distilled
    guidance: only FLUX.1-dev-style transformers (``guidance_embeds``) take it."""
    if true_cfg_scale == 1.0:
        return
    chosen = family(kind)
    if not chosen.distilled_guidance(_component_config(path, chosen.network)):
        raise ArgumentError(f"sampling.true_cfg_scale: {true_cfg_scale} given, but only a FLUX.1 model with distilled "
                            "guidance (guidance_embeds=true) takes it; use sampling.guidance_scale for "
                            "classifier-free guidance")


def check_image_size(path: Path, kind: str, image_size: int) -> None:
    """One line if the pipeline in ``path`` cannot make ``image_size``-pixel images (before loading it)."""
    multiple = image_multiple(path, kind)
    if image_size % multiple:
        raise ArgumentError(f"model.image_size: {image_size} is not a multiple of {multiple} (this pipeline's VAE "
                            f"downsampling times its patch size and packing); use e.g. {max(multiple, image_size // multiple * multiple)}")


def detect_kind(path: Path) -> str:
    """The registered family whose pipeline class ``model_index.json`` names."""
    index_file = path / "model_index.json"
    if index_file.is_file():
        declared = json.loads(index_file.read_text()).get("_class_name", "")
        for candidate in families():
            if candidate.pipeline == declared:
                return candidate.name
    classes = ", ".join(candidate.pipeline for candidate in families())
    raise PipelineLayoutError(f"model.path: {path} is not a diffusers pipeline folder of a known kind (no "
                              f"model_index.json naming one of {classes})")


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` on diffusers that take it, ``torch_dtype=`` on older ones (no deprecation warning)."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


@dataclass
class TextToImageModel:
    """A loaded pipeline reduced to what RL training needs; see the module docstring."""

    kind: str
    path: Path
    pipeline: Any
    denoiser: Denoiser
    t5: bool
    max_sequence_length: int
    vae_batch: int
    frozen_dtype: torch.dtype = torch.bfloat16
    num_frames: int = 1

    @property
    def family(self) -> ModelFamily:
        """The model family (``model.kind``) this pipeline belongs to."""
        return family(self.kind)

    @property
    def network(self) -> torch.nn.Module:
        """The trained network: the family's transformer or UNet."""
        return getattr(self.pipeline, self.family.network)

    @property
    def device(self) -> torch.device:
        """Where the trained network (and so sampling) lives."""
        return next(self.network.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD3, FLUX.1 and SD1.5; :func:`vae_spatial_factor`)."""
        return vae_spatial_factor(self.pipeline.vae.config)

    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        """``(C, H, W)`` of the latents of ``image_size``-pixel square images (FLUX: unpacked, 16 channels),
        or the family's own shape (a video's ``(C, F, H, W)``)."""
        if self.family.latent_shape is not None:
            return self.family.latent_shape(self, image_size)
        pack = self.family.pack
        multiple = self.vae_scale_factor * _patch(self.network) * pack
        if image_size % multiple:
            raise ArgumentError(f"model.image_size: expected a multiple of {multiple} for this pipeline, got {image_size}")
        side = image_size // self.vae_scale_factor
        return (int(self.network.config.in_channels) // pack**2, side, side)

    def image_tokens(self, image_size: int) -> int:
        """Tokens the network sees per ``image_size``-pixel square image (FLUX: ``(side / 2)^2``)."""
        height, width = self.latent_shape(image_size)[-2:]
        side = _patch(self.network) * self.family.pack
        return (height // side) * (width // side)

    def identity(self) -> str:
        """What determines the prompt embeddings: folder, pipeline kind, T5 and sequence length, dtype."""
        return f"{self.path.resolve()}|{self.kind}|t5={self.t5}|len={self.max_sequence_length}|{self.frozen_dtype}"

    @property
    def can_encode(self) -> bool:
        """Whether the text encoders are still loaded (see :meth:`release_text_encoders`)."""
        return self.pipeline.text_encoder is not None

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """Conditioning for ``prompts`` (``[B]`` TensorDict on the model's device), no CFG branch."""
        prompts = prompts_list(prompts)
        if not self.can_encode:
            raise RuntimeError("encode: the text encoders were released; precompute every prompt first")
        fields = self.family.encode(self.pipeline, prompts, self.device, self.max_sequence_length)
        return TensorDict(fields, batch_size=[len(prompts)], device=self.device)

    def release_text_encoders(self) -> None:
        """Drop the text encoders (and their memory) once every prompt's embedding is cached."""
        for name in self.family.text_encoders:
            if hasattr(self.pipeline, name):
                setattr(self.pipeline, name, None)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` float32 in ``[0, 1]`` from latents, ``vae_batch`` rows per VAE call
        (a video family's own decode: ``[B, F, 3, H, W]``)."""
        if self.family.decode is not None:
            return self.family.decode(self, latents)
        vae = self.pipeline.vae
        scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
        images = [vae.decode(chunk.to(vae.device, vae.dtype) / scale + shift, return_dict=False)[0].float()
                  for chunk in latents.split(self.vae_batch)]
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)

    def transition(self, name: str, num_steps: int, noise_level: float, shift: float = 3.0, *,
                   schedule: str = "scheduler", cps_scoring: str = "flow_grpo",
                   image_size: int | None = None) -> Transition:
        """The stochastic step ``name`` on this pipeline's schedule (flow: with ``shift``; ``schedule``
        ``dancegrpo`` for DanceGRPO's, ``cps_scoring`` for how ``cps`` scores, see :class:`FlowCPS`).

        FLUX.1's ``scheduler`` schedule is FluxPipeline's (:meth:`FlowTimesteps.flux`) with the
        pipeline's own scheduler config: FLUX.1-dev's shift depends on the image's token count, so
        ``image_size`` is required; FLUX.1-schnell's is its static shift (1). ``shift`` applies to FLUX
        only with ``schedule="dancegrpo"``. SD3 and SD1.5 schedules do not depend on the resolution;
        ``image_size`` is only checked against the latent grid there.
        """
        if image_size is not None:
            self.latent_shape(image_size)
        return self.family.transition(self, name, num_steps, noise_level, shift, schedule, cps_scoring, image_size)

    def guided_denoiser(self, guidance_scale: float, uncond: Callable[[], Cond], *,
                        true_cfg_scale: float = 1.0) -> Denoiser:
        """The denoiser sampling at ``guidance_scale`` the way this pipeline's own call does.

        FLUX.1-dev (a transformer with a guidance embedding): distilled guidance, the scale fed to
        the embedding, one forward per row; ``true_cfg_scale != 1`` adds FluxPipeline's true
        classifier-free guidance on top against ``uncond()`` (two forwards per row). Every other
        pipeline: classifier-free guidance against ``uncond()`` (:class:`GuidedDenoiser`), none at
        ``guidance_scale = 1``. ``uncond`` is called only when a negative branch is needed.
        """
        return self.family.guided_denoiser(self, guidance_scale, uncond, true_cfg_scale)


def _patch(network: torch.nn.Module) -> int:
    return _patch_side(getattr(network.config, "patch_size", None))


def load_pipeline(
    path: str | Path,
    kind: str | None = None,
    *,
    t5: bool = True,
    frozen_dtype: torch.dtype = torch.bfloat16,
    denoiser_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_sequence_length: int = 256,
    vae_batch: int = 8,
    num_frames: int = 1,
) -> TextToImageModel:
    """Load a local pipeline folder of any registered family (:mod:`treegrpo.families`) for training.

    Args:
        path: the pipeline folder (``save_pretrained`` layout) or a Hub id already in the local cache.
        kind: the family (``sd3``, ``flux``, ``sd15``, ``qwen_image``, ``wan``, or one registered later);
            ``None`` reads it from ``model_index.json``.
        t5: SD3 only: keep the T5 encoder (``False`` skips loading it; its tokens become zeros,
            as diffusers does without T5). FLUX.1 needs its T5 and refuses ``False``.
        frozen_dtype: dtype of the VAE and text encoders (frozen, never trained).
        denoiser_dtype: dtype of the trained network's weights (float32 master weights for full
            fine-tuning; bf16 is fine for a frozen LoRA base).
        device: where every component lives.
        max_sequence_length: the T5 token count (SD3, FLUX.1).
        vae_batch: latents decoded per VAE call.
        num_frames: frames per sample of a video family (1 for images).

    FLUX.1-dev's denoiser samples at the distilled guidance 3.5 (FluxPipeline's default); pick
    another with :meth:`TextToImageModel.guided_denoiser`.

    Examples:
        >>> import tempfile
        >>> from treegrpo.families.pipelines import load_pipeline
        >>> from treegrpo.testing.pipelines import save_tiny_sd3_pipeline
        >>> model = load_pipeline(save_tiny_sd3_pipeline(tempfile.mkdtemp()))  # a random-weight SD3 folder
        >>> model.kind, model.latent_shape(16), sorted(model.encode(["a red cat"]).keys())
        ('sd3', (4, 8, 8), ['encoder_hidden_states', 'pooled_projections'])
    """
    root = resolve_model_path(path)
    kind = kind or detect_kind(root)
    check_layout(root, kind, t5=t5)
    if vae_batch < 1:
        raise ValueError(f"model.vae_batch: expected an int >= 1, got {vae_batch!r}")
    # safetensors only: a pickled .bin can run code when loaded
    options: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, **_dtype_argument(frozen_dtype)}
    chosen = family(kind)
    network_name = chosen.network
    options[network_name] = chosen.load_network_class().from_pretrained(
        root / network_name, local_files_only=True, use_safetensors=True, **_dtype_argument(denoiser_dtype))
    options.update(chosen.load_options(t5))
    pipeline = chosen.pipeline_class().from_pretrained(root, **options)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(name == network_name)
            component.eval()
    network = getattr(pipeline, network_name)
    return TextToImageModel(kind=kind, path=root, pipeline=pipeline, denoiser=chosen.denoiser(network),
                            t5=t5 and chosen.t5 != "none",
                            max_sequence_length=max_sequence_length, vae_batch=vae_batch, frozen_dtype=frozen_dtype,
                            num_frames=num_frames)
