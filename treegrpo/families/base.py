"""``ModelFamily``: everything that differs between diffusers model families, declared once per family.

A family says how its pipeline folder is laid out, which network is trained and how the samplers
call it (the denoiser adapter), how prompts become conditioning, which stochastic step runs on its
schedule, and whether it makes images or videos. :func:`~treegrpo.families.pipelines.load_pipeline`
and :class:`~treegrpo.families.pipelines.TextToImageModel` read only these fields, so adding a family
is one file that builds a :class:`ModelFamily` and calls :func:`register_family`.

The registry follows :mod:`treeadv.registry`'s one re-registration rule; ``model.kind`` names an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from treeadv.registry import Registry
from treegrpo.envs.models import Cond, Denoiser, GuidedDenoiser
from treegrpo.envs.transitions import Transition

TextToImageModel = Any
"""A loaded :class:`~treegrpo.families.pipelines.TextToImageModel` (which imports this module, so it is named
here by an alias rather than imported)."""

T5Use = Literal["optional", "required", "none"]
Modality = Literal["image", "video"]
OptionUse = tuple[tuple[str, ...], Callable[[Any], bool], str, str]
"""``(fields, applies(config), who, by)``: options a family reads only under a condition, the fields of a
:class:`treegrpo.uses.Use` (which :mod:`treegrpo.problems` builds from it; this layer sits below the
configuration's)."""


def no_distilled_guidance(network_config: Mapping[str, Any]) -> bool:
    """The default: the network takes no guidance embedding, so guidance is classifier-free."""
    return False


@dataclass(frozen=True)
class ModelFamily:
    """One diffusers model family.

    Attributes:
        name: the value of ``model.kind``.
        title: the family's name in messages (``FLUX.1``).
        pipeline: the diffusers pipeline class, as ``model_index.json`` names it.
        network: the component folder of the trained network (``transformer``, ``unet``).
        network_class: the diffusers class of that network.
        required: component folders the pipeline cannot load without.
        optional: component folders it may lack (SD3's T5).
        denoiser: wraps the network as the samplers' :class:`~treegrpo.envs.models.Denoiser`.
        encode: ``(pipeline, prompts, device, max_sequence_length) -> {field: tensor}``, the
            conditioning of each prompt through the pipeline's own ``encode_prompt``, no CFG branch.
        transition: ``(model, name, num_steps, noise_level, shift, schedule, cps_scoring, image_size)``
            -> the stochastic step on the pipeline's own schedule.
        pack: the side of latent patches the adapter packs into one token (FLUX: 2), 1 for none.
        t5: ``optional`` (``model.t5=false`` skips the ``*_3`` encoder), ``required`` (refuses
            ``model.t5=false``) or ``none`` (the family has no T5).
        t5_folders: the T5 encoder's folders (``model.t5`` adds them to ``required`` when ``t5="optional"``).
        load_options: extra ``from_pretrained`` keyword arguments given ``t5``.
        distilled_guidance: whether a network config takes guidance as an embedding (FLUX.1-dev).
        guided: the denoiser for a distilled-guidance network at a scale (needed when
            ``distilled_guidance`` can be true).
        text_encoders: the pipeline attributes released once every prompt embedding is cached.
        modality: ``image`` or ``video``: what the decode returns and rewards score.
        latent_shape: ``(model, image_size) -> shape`` of one sample's latents, for families whose
            latents are not ``(C, H, W)`` (video: ``(C, F, H, W)`` from ``model.num_frames``);
            ``None``: the image default of :class:`~treegrpo.families.pipelines.TextToImageModel`.
        decode: ``(model, latents) -> pixels`` in ``[0, 1]`` (images ``[B, 3, H, W]``, videos
            ``[B, F, 3, H, W]``); ``None``: the image VAE default.
        preset: the ``section.field=value`` assignments ``model.kind = name`` makes over ``Config()``
            (``treegrpo train`` starts from them; files and flags override them).
        reads: the names of the kind-specific option groups the family reads (keys of
            :data:`treegrpo.kinds.OPTION_GROUPS`: ``model``, ``flow_schedule``, ``pipeline``, ``t5``,
            ``sequence``, ``true_cfg``, ``video``); another kind's options are refused when set.
        uses: options it reads only under a condition (:data:`OptionUse`, a :class:`~treegrpo.uses.Use`'s fields).

    :mod:`treegrpo.problems` registers one model kind per registered family from these last three.
    """

    name: str
    title: str
    pipeline: str
    network: str
    network_class: str
    required: tuple[str, ...]
    denoiser: Callable[[nn.Module], Denoiser]
    encode: Callable[[Any, list[str], torch.device, int], dict[str, Tensor]]
    transition: Callable[..., Transition]
    optional: tuple[str, ...] = ()
    pack: int = 1
    t5: T5Use = "none"
    t5_folders: tuple[str, ...] = ()
    load_options: Callable[[bool], dict[str, Any]] = lambda t5: {}
    distilled_guidance: Callable[[Mapping[str, Any]], bool] = no_distilled_guidance
    guided: Callable[[nn.Module, float], Denoiser] | None = None
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    modality: Modality = "image"
    latent_shape: Callable[[TextToImageModel, int], tuple[int, ...]] | None = None
    decode: Callable[[TextToImageModel, Tensor], Tensor] | None = None
    preset: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    uses: tuple[OptionUse, ...] = ()

    def describe(self) -> str:
        """One line listing the folder's expected contents, for error messages."""
        folders = [f"{name}/" for name in self.required] + [f"{name}/ (optional)" for name in self.optional]
        return f"a diffusers {self.pipeline} folder: model_index.json, " + ", ".join(folders)

    def folders(self, t5: bool) -> tuple[str, ...]:
        """The component folders a load with ``model.t5 = t5`` needs."""
        return self.required + (self.t5_folders if self.t5 == "optional" and t5 else ())

    def pipeline_class(self) -> type:
        """The diffusers pipeline class (imported on first use: diffusers is slow to import)."""
        import diffusers

        return getattr(diffusers, self.pipeline)

    def load_network_class(self) -> type:
        """The diffusers class of the trained network."""
        import diffusers

        return getattr(diffusers, self.network_class)

    def guided_denoiser(self, model: TextToImageModel, guidance_scale: float, uncond: Callable[[], Cond],
                        true_cfg_scale: float = 1.0) -> Denoiser:
        """The denoiser sampling at ``guidance_scale`` as the pipeline's own call does: distilled
        guidance (the scale fed to the network, ``true_cfg_scale`` as classifier-free guidance on top)
        where the network takes it, classifier-free guidance against ``uncond()`` otherwise."""
        from treegrpo.envs._checks import ArgumentError

        if self.guided is not None and self.distilled_guidance(model.network.config):
            denoiser, scale = self.guided(model.network, guidance_scale), true_cfg_scale
        else:
            if true_cfg_scale != 1.0:
                raise ArgumentError(f"true_cfg_scale: {true_cfg_scale} given, but only a FLUX.1 model with distilled "
                                    "guidance takes it; use guidance_scale for classifier-free guidance")
            denoiser, scale = model.denoiser, guidance_scale
        return denoiser if scale == 1.0 else GuidedDenoiser(denoiser, scale, uncond())


FAMILIES: Registry[ModelFamily] = Registry("model family", field="model.kind")
"""``model.kind`` of every diffusers family to its :class:`ModelFamily`."""


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make ``family`` loadable as ``model.kind = family.name`` (:mod:`treeadv.registry`'s rule)."""
    return FAMILIES.add(family.name, family, replace=replace)


def family(name: str) -> ModelFamily:
    """The family registered as ``name`` (one line naming the registered ones otherwise)."""
    return FAMILIES[name]


def families() -> list[ModelFamily]:
    """Every registered family, the shipped ones first."""
    return FAMILIES.values()


def prompts_list(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, refusing one bare string (which would be read as one prompt per character)."""
    if isinstance(prompts, str):
        raise TypeError("prompts: expected a list of strings, got one str")
    return list(prompts)
