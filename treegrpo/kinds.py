"""The model kinds (values of ``model.kind``): each one's builder, preset and the options it reads,
declared in one :func:`treegrpo.problems.register_problem` call next to its problem.

This registry sits below :mod:`treegrpo.config` (which validates ``model.kind``, applies a kind's
preset and refuses options the kind does not read) and is filled by :mod:`treegrpo.problems` when it
is imported. :func:`model_kinds` imports it, by name, the first time the registry is read, so a
configuration built with only :mod:`treegrpo.config` imported knows the built-in kinds too.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from treeadv.registry import Registry
from treegrpo.uses import Use


@dataclass(frozen=True)
class KindOptions:
    """Options only some model kinds read: the kinds that declare the group in their ``reads``.

    The error for a kind that does not read them names the kinds that do, in registration order,
    followed by ``note`` (``"model.kind=digits, toy2d"``).
    """

    fields: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class ModelKind:
    """One value of ``model.kind``.

    Attributes:
        name: the value of ``model.kind``.
        builder: ``(config, **options) -> Problem`` (:func:`treegrpo.problems.build_problem` calls it).
        preset: ``section.field=value`` assignments the kind makes over ``Config()`` (the paper's
            defaults adjusted where the model's scale demands; ``treegrpo train`` starts from them,
            files and flags override them).
        reads: the kind-specific option groups it reads; another kind's are refused when set.
        uses: options it reads only under a condition (``Use.applies``), checked when it is the run's kind.
    """

    name: str
    builder: Callable[..., Any] | None = None
    preset: tuple[str, ...] = ()
    reads: tuple[KindOptions, ...] = ()
    uses: tuple[Use, ...] = ()


MODEL_OPTIONS = KindOptions(("model.path", "model.rewards", "model.eval_count", "sampling.guidance_scale"),
                            " (toy2d has one reward, 'target')")
"""Options of a model with weights, rewards and guidance (every built-in kind but toy2d)."""
FLOW_SCHEDULE = KindOptions(("sampling.schedule",), " (flow models)")
"""The flow-matching schedule, read by flow models."""
PIPELINE_OPTIONS = KindOptions(("model.image_size", "model.prompts", "model.eval_prompts", "model.frozen_precision",
                                "model.embedding_cache", "model.embedding_memory", "model.precompute_embeddings",
                                "model.negative_prompt", "model.vae_batch", "model.lora", "model.reward_dir",
                                "eval.diversity_model"))
"""The options every diffusers pipeline family reads (:mod:`treegrpo.families`)."""
T5_OPTIONS = KindOptions(("model.t5",))
"""Whether the T5 text encoder loads."""
SEQUENCE_OPTIONS = KindOptions(("model.max_sequence_length",))
"""Text-encoder tokens per prompt (families whose encoder takes a limit)."""
TRUE_CFG_OPTIONS = KindOptions(("sampling.true_cfg_scale",))
"""True classifier-free guidance on top of distilled guidance."""
VIDEO_OPTIONS = KindOptions(("model.num_frames",), " (video families)")
"""The options of a video family."""
OPTION_GROUPS: dict[str, KindOptions] = {
    "model": MODEL_OPTIONS, "flow_schedule": FLOW_SCHEDULE, "pipeline": PIPELINE_OPTIONS, "t5": T5_OPTIONS,
    "sequence": SEQUENCE_OPTIONS, "true_cfg": TRUE_CFG_OPTIONS, "video": VIDEO_OPTIONS,
}
"""The option groups by the names a :class:`treegrpo.families.ModelFamily` declares in its ``reads``."""

KINDS: Registry[ModelKind] = Registry("model kind", field="model.kind")
"""``model.kind`` to its :class:`ModelKind`, in registration order."""

_BUILT_IN = "treegrpo.problems"


def model_kinds() -> Registry[ModelKind]:
    """:data:`KINDS`, with the built-in kinds registered (by importing :mod:`treegrpo.problems`)."""
    if _BUILT_IN not in sys.modules:
        importlib.import_module(_BUILT_IN)
    return KINDS


def kind_uses() -> list[Use]:
    """Each kind-specific option group as a :class:`~treegrpo.uses.Use`: read when the run's kind
    declares it (groups in the order the registered kinds first declare them)."""
    kinds = model_kinds()
    groups: list[KindOptions] = []
    for entry in kinds.values():
        groups += [group for group in entry.reads if group not in groups]

    def use(group: KindOptions) -> Use:
        def readers() -> str:
            return "model.kind=" + ", ".join(k.name for k in kinds.values() if group in k.reads) + group.note

        return Use(group.fields, lambda c: c.model.kind in kinds and group in kinds[c.model.kind].reads, readers, "kind")

    return [use(group) for group in groups]


__all__ = ["FLOW_SCHEDULE", "KINDS", "MODEL_OPTIONS", "OPTION_GROUPS", "PIPELINE_OPTIONS", "SEQUENCE_OPTIONS", "T5_OPTIONS",
           "TRUE_CFG_OPTIONS", "VIDEO_OPTIONS", "KindOptions", "ModelKind", "kind_uses", "model_kinds"]
