"""Typed configuration of a training run: five dataclass sections, TOML loading and CLI overrides.

A :class:`Config` holds ``model``, ``sampling``, ``loss``, ``optim`` and ``train`` sections. Every
field carries a default (the TreeGRPO paper's numbers where it gives them) and a small spec in its
``metadata``: ``help`` (one line, shown by the CLI) and the allowed values (``min``/``max`` with
``min_open``/``max_open``, ``choices``, ``min_items``). Validation is generic over that spec, so a
new field needs only its declaration. Every error is a :class:`ConfigError` whose message is one
line starting with ``section.field: ``.

This module keeps the sections, their parsing and validation, and file I/O. What reads an option
declares it where it lives: each recipe's options in :mod:`treegrpo.recipes`, each model kind's
builder, preset and options in its :func:`~treegrpo.problems.register_problem` call
(:mod:`treegrpo.kinds`), and the resume policy in :mod:`treegrpo.algos.checkpoint`;
:meth:`Config.check_used` consults those declarations (and :data:`SECTION_USES`, the section-level
rules) to refuse an option the run would ignore.

    config = Config.from_toml("run.toml").override(["loss.clip_range=2e-4", "train.resume=true"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import tomllib
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from treegrpo.errors import ConfigError
from treegrpo.kinds import kind_uses, model_kinds
from treegrpo.recipes import RECIPES, Recipe
from treegrpo.recipes import USES as RECIPE_USES
from treegrpo.uses import Use

__all__ = [
    "SECTIONS",
    "Config",
    "ConfigError",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Option",
    "SamplingConfig",
    "TrainConfig",
    "Use",
    "options",
    "preset_config",
    "to_toml",
]


def _opt(default: Any, help: str, **spec: Any) -> Any:
    """Declare a field with ``default`` (lists are copied per instance), its help line and its spec."""
    metadata = {"help": help, **spec}
    if isinstance(default, list):
        return field(default_factory=functools.partial(list, default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# Generic, spec-driven validation and parsing.

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _kind(hint: Any) -> str:
    """Name a field's type: ``int``, ``float``, ``bool``, ``str``, ``list[float]``, ``list[int]`` or ``list[str]``."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return f"list[{item.__name__}]"
    return hint.__name__


def _num(value: float) -> str:
    """Format a bound compactly: ``1`` rather than ``1.0``, ``1e-05`` as Python writes it."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _bounds(meta: Mapping[str, Any]) -> str:
    """Describe ``min``/``max`` (open or closed) as ``>= 0``, ``> 0``, ``<= 1`` or ``in (0, 1]``."""
    low, high = meta.get("min"), meta.get("max")
    low_open, high_open = meta.get("min_open", False), meta.get("max_open", False)
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def _choices(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """A field's allowed words: a fixed tuple, or a registry read when asked (``loss.algorithm``)."""
    choices = meta["choices"]
    return tuple(choices() if callable(choices) else choices)


def _expected(kind: str, meta: Mapping[str, Any]) -> str:
    """What a field accepts, in words: ``an int >= 1``, ``one of fp32, bf16``, ``a list of strings``."""
    bounds = _bounds(meta)
    suffix = f" {bounds}" if bounds else ""
    if "choices" in meta:
        return "one of " + ", ".join(sorted(_choices(meta)))
    if "or_words" in meta:
        return f"a number{suffix} or " + ", ".join(meta["or_words"])
    if kind == "int":
        return "an int" + suffix
    if kind == "float":
        return "a number" + suffix
    if kind == "bool":
        return "a bool (true/false)"
    if kind == "str":
        return "a string"
    nonempty = "a non-empty list" if meta.get("min_items", 0) > 0 else "a list"
    items = {"list[float]": "numbers", "list[int]": "ints"}.get(kind, "strings")
    return f"{nonempty} of {items}{suffix}"


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    """Whether a finite number satisfies the spec's ``min``/``max`` (open or closed)."""
    if not math.isfinite(value):
        return False
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value <= low if meta.get("min_open") else value < low):
        return False
    return not (high is not None and (value >= high if meta.get("max_open") else value > high))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid(kind: str, meta: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` is of ``kind`` and satisfies the spec (bools never count as numbers)."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str" and "or_words" in meta:  # a number, or one of a few words ("auto")
        return isinstance(value, str) and (value in meta["or_words"] or _in_bounds(_as_number(value), meta))
    if kind == "str":
        return isinstance(value, str) and ("choices" not in meta or value in _choices(meta))
    if kind == "int":
        return _is_int(value) and _in_bounds(value, meta)
    if kind == "float":
        return _is_number(value) and _in_bounds(value, meta)
    if not isinstance(value, list) or len(value) < meta.get("min_items", 0):
        return False
    if kind == "list[str]":
        return all(isinstance(item, str) for item in value)
    if kind == "list[int]":
        return all(_is_int(item) and _in_bounds(item, meta) for item in value)
    return all(_is_number(item) and _in_bounds(item, meta) for item in value)


def _parse(kind: str, text: str) -> Any:
    """Parse command-line text as ``kind``; raise ``ValueError`` if it is not one."""
    text = text.strip()
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text.lower() not in _BOOL_WORDS:
            raise ValueError(text)
        return _BOOL_WORDS[text.lower()]
    if kind == "str":
        return text
    items = [item.strip() for item in text.split(",")] if text else []
    if kind == "list[int]":
        return [int(item) for item in items]
    return [float(item) for item in items] if kind == "list[float]" else items


def _as_number(text: str) -> float:
    """``float(text)``, or NaN when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def number_or_word(value: str) -> float | str:
    """The value of an option given as text (``loss.estimator_options``): a float, or the word itself."""
    number = _as_number(value)
    return value if math.isnan(number) else number


def _coerce(kind: str, value: Any, meta: Mapping[str, Any]) -> Any:
    """Loosen TOML/JSON values to the field's type: ints for floats, tuples for lists, numbers for
    number-or-word strings, a word for a bool where a former bool field became a choice (``from_bool``)."""
    if "from_bool" in meta and (isinstance(value, bool) or str(value).strip().lower() in _BOOL_WORDS):
        truth = value if isinstance(value, bool) else _BOOL_WORDS[str(value).strip().lower()]
        return meta["from_bool"][int(truth)]
    if kind == "float" and _is_int(value):
        return float(value)
    if kind == "float" and meta.get("from_text") and isinstance(value, str) and not math.isnan(_as_number(value)):
        return _as_number(value)  # a number that earlier versions stored as text (configs of older runs)
    if kind == "str" and "or_words" in meta and _is_number(value):
        return repr(float(value))
    if kind.startswith("list") and isinstance(value, tuple):
        value = list(value)
    if kind == "list[float]" and isinstance(value, list):
        return [float(item) if _is_int(item) else item for item in value]
    return value


def _suggest(name: str, known: list[str]) -> str:
    """``did you mean X?`` for a near miss, else the list of what is allowed."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]}?" if close else f"expected one of {', '.join(sorted(known))}"


class Option(NamedTuple):
    """One configurable field, as the CLI sees it."""

    section: str
    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None


class _Section:
    """Spec-driven validation shared by every section; subclasses add cross-field checks."""

    section: ClassVar[str] = ""

    @classmethod
    def _kinds(cls) -> dict[str, str]:
        """Field name to kind, resolved from the (string) annotations."""
        return _kinds_of(cls)

    def validate(self) -> _Section:
        """Check every field against its spec, then the cross-field rules; return ``self``."""
        kinds = self._kinds()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _valid(kinds[f.name], f.metadata, value):
                expected = _expected(kinds[f.name], f.metadata)
                raise ConfigError(f"{self.section}.{f.name}: expected {expected}, got {value!r}")
        self._check_fields()
        return self

    def _check_fields(self) -> None:
        """Cross-field rules; none by default."""

    @classmethod
    def _field(cls, name: str) -> dataclasses.Field:
        """The field ``name``, or a ConfigError suggesting the closest real one."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if name not in fields:
            raise ConfigError(f"{cls.section}.{name}: unknown option; {_suggest(name, list(fields))}")
        return fields[name]

    @classmethod
    def _parse_text(cls, name: str, text: str) -> Any:
        """Parse command-line ``text`` for field ``name``; a bad value names what is allowed."""
        f = cls._field(name)
        kind = cls._kinds()[name]
        try:
            return _coerce(kind, _parse(kind, text), f.metadata)
        except ValueError:
            raise ConfigError(f"{cls.section}.{name}: expected {_expected(kind, f.metadata)}, got {text!r}") from None

    @classmethod
    def _from_mapping(cls, values: Any, base: _Section | None = None) -> _Section:
        """Build the section from a mapping of field values (unknown keys rejected, missing keys from ``base``)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{cls.section}: expected a table of options, got {values!r}")
        kinds = cls._kinds()
        kwargs = {}
        for name, value in values.items():
            meta = cls._field(str(name)).metadata
            kwargs[name] = _coerce(kinds[name], copy.deepcopy(value), meta)
        return dataclasses.replace(copy.deepcopy(base), **kwargs) if base is not None else cls(**kwargs)


@functools.cache
def _kinds_of(cls: type) -> dict[str, str]:
    hints = typing.get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------------------------
# The sections.

TRANSITIONS = ("flow_sde", "dance_sde", "cps", "ddim")
WINDOWS = ("fixed", "geometric", "shifting", "adaptive")
PARALLEL_MODES = ("ddp", "fsdp")
"""Values of ``train.parallel``: how ranks share the trained weights (:mod:`treegrpo.algos.distributed`)."""
BACKENDS = ("auto", "nccl", "gloo")
"""Values of ``train.dist_backend`` (``auto``: NCCL on CUDA, gloo on CPU)."""


@dataclass
class ModelConfig(_Section):
    """Which model to train, where its weights are and how its samples are scored."""

    section: ClassVar[str] = "model"

    kind: str = _opt("digits", "model family", choices=lambda: list(model_kinds()))
    path: str = _opt("", "local directory with the model weights (empty = embedded default)")
    rewards: list[str] = _opt(["classifier"], "reward names, comma-separated", min_items=1)
    image_size: int = _opt(16, "image side in pixels (diffusers families, treegrpo.families)", min=1)
    num_frames: int = _opt(1, "video families: frames per sample, 1 + a multiple of 4 for Wan", min=1)
    prompts: str = _opt("", "diffusers families' training prompts: .txt (one per line), .json, or a folder with "
                            "train.json")
    eval_prompts: str = _opt("", "held-out prompts (same formats); empty = the test split of model.prompts")
    eval_count: int = _opt(64, "held-out prompts evaluated, 0 = all", min=0)
    t5: bool = _opt(True, "load the T5 text encoder where it is optional (false: its tokens are zeros, as "
                          "diffusers does); families that read prompts through T5 need it")
    max_sequence_length: int = _opt(256, "text-encoder tokens per prompt (families whose encoder takes a limit)",
                                    min=1)
    frozen_precision: str = _opt("bf16", "dtype of the frozen VAE and text encoders", choices=("bf16", "fp32"))
    embedding_cache: str = _opt("", "folder caching prompt embeddings on disk, empty = memory only")
    embedding_memory: int = _opt(1024, "prompt embeddings kept in memory (LRU)", min=0)
    precompute_embeddings: bool = _opt(
        False, "encode every prompt up front, then free the text encoders (large sets need embedding_cache)")
    negative_prompt: str = _opt("", "the unconditional prompt of classifier-free guidance")
    vae_batch: int = _opt(8, "latents decoded per VAE call", min=1)
    lora: str = _opt("", "diffusers LoRA weights fused into the model before training or evaluation")
    reward_dir: str = _opt("", "folder of reward-model weights (<dir>/hpsv2, ...); empty = $TREEGRPO_REWARD_DIR")


@dataclass
class SamplingConfig(_Section):
    """How images are sampled: steps, the tree's SDE window, the transition and the batch size."""

    section: ClassVar[str] = "sampling"

    num_steps: int = _opt(10, "denoising steps T (NFE of a plain trajectory)", min=1)
    branching: int = _opt(3, "k, children per node in the SDE window (TreeGRPO)", min=1)
    depth: int = _opt(3, "d, SDE steps in the window (TreeGRPO)", min=1)
    trees_per_prompt: int = _opt(1, "independent trees per prompt (TreeGRPO)", min=1)
    group_size: int = _opt(8, "trajectories per prompt (GRPO, MixGRPO, DDPO, REINFORCE)", min=1)
    prompts_per_iteration: int = _opt(4, "prompts sampled per training iteration", min=1)
    transition: str = _opt("flow_sde", "stochastic transition of the SDE steps", choices=TRANSITIONS)
    noise_level: float = _opt(0.7, "SDE noise level a (flow_sde, cps: Flow-GRPO's 0.7) or eta (dance_sde: "
                                   "DanceGRPO's is 0.3, which loss.algorithm=dance_grpo sets; ddim); 0 would leave "
                                   "nothing to train", min=0, min_open=True)
    shift: float = _opt(3.0, "flow-matching schedule shift", min=0, min_open=True)
    schedule: str = _opt("scheduler", "flow models: the pipeline scheduler's shifted schedule, or DanceGRPO's "
                                      "(linspace(1, 0) shifted by shift t / (1 + (shift - 1) t))",
                         choices=("scheduler", "dancegrpo"))
    cps_scoring: str = _opt("flow_grpo", "transition cps: score samples as Flow-GRPO does (-(x - mean)^2, averaged) "
                                         "or by the Gaussian density", choices=("flow_grpo", "density"))
    window: str = _opt("geometric", "where the SDE window sits, epoch by epoch", choices=WINDOWS)
    window_start: int = _opt(0, "first SDE step of fixed and shifting windows", min=0)
    alpha: float = _opt(0.5, "truncated-geometric parameter of geometric/adaptive windows", min=0, max=1, min_open=True)
    window_shift: int = _opt(1, "steps the shifting window moves", min=0)
    window_every: int = _opt(1, "epochs between moves of the shifting window", min=1)
    sde_steps: str = _opt(
        "all", "trajectory algorithms: SDE on all steps, or a sliding window of depth steps (MixGRPO)",
        choices=("all", "window"),
    )
    shared_noise: bool = _opt(False, "trajectory algorithms: a prompt's trajectories start from one noise and split "
                                     "at the first SDE step (DanceGRPO's init_same_noise)")
    slide: str = _opt("wrap", "how a sliding window (mixgrpo, sde_steps=window) moves: wrap (always depth steps, "
                              "wrapping to step window_start) or mixgrpo (MixGRPO's: shrinks near the end, is empty "
                              "for window_every iterations, then restarts)", choices=("wrap", "mixgrpo"))
    last_step: str = _opt("sde", "the last step: sde (sampled, trained, its sample is the image: Flow-GRPO), x0 "
                                 "(sampled and trained, the image is its clean prediction: BranchGRPO) or ode "
                                 "(deterministic, not trained: DanceGRPO and MixGRPO decode its clean prediction)",
                          choices=("sde", "x0", "ode"))
    split_steps: list[int] = _opt([], "branch_grpo: the steps where every node splits sampling.branching ways "
                                      "(BranchGRPO: 0,3,6,9 of 20)", min=0)
    split_noise_scale: float = _opt(1.0, "branch_grpo: the split steps' noise std is this times the transition's, "
                                         "and is scored with it (BranchGRPO: 4)", min=0, min_open=True)
    max_batch: int = _opt(0, "most rows per model call, 0 = unlimited", min=0)
    static_shapes: bool = _opt(False, "pad every sampling call to max_batch rows (one shape for train.compile)")
    chunks: int = _opt(1, "sample each iteration's prompts in this many chunks (scored as they finish)", min=1)
    background_scoring: bool = _opt(True, "with chunks > 1, score a chunk on a worker thread while the next is sampled")
    guidance_scale: float = _opt(1.0, "classifier-free guidance scale, 1.0 = off; FLUX.1-dev: the distilled guidance "
                                      "fed to its guidance embedding (one forward per row)", min=0)
    true_cfg_scale: float = _opt(1.0, "FLUX.1-dev: FluxPipeline's true classifier-free guidance against "
                                      "model.negative_prompt on top of the distilled guidance (two forwards per "
                                      "row), 1.0 = off", min=0)

    def _check_fields(self) -> None:
        """The window of ``depth`` steps starting at ``window_start`` must fit in ``num_steps``;
        static shapes need a ``max_batch``."""
        if self.static_shapes and not self.max_batch:
            raise ConfigError("sampling.static_shapes: needs sampling.max_batch > 0 (the one shape to pad to)")
        if self.depth > self.num_steps:
            raise ConfigError(
                f"sampling.depth: expected an int <= sampling.num_steps ({self.num_steps}), got {self.depth}"
            )
        late = [step for step in self.split_steps if step >= self.num_steps]
        if late:
            raise ConfigError(f"sampling.split_steps: {late} lie beyond the last step; expected steps < sampling.num_steps "
                              f"({self.num_steps})")
        if len(set(self.split_steps)) != len(self.split_steps):
            raise ConfigError(f"sampling.split_steps: {self.split_steps} names a step twice; list each split step once")
        end = self.window_start + self.depth
        if end > self.num_steps:
            raise ConfigError(
                f"sampling.window_start: expected window_start + depth <= num_steps ({self.num_steps}), "
                f"got {self.window_start} + {self.depth} = {end}"
            )


def _estimators() -> list[str]:
    import treeadv

    return treeadv.registered_estimators()


MIN_ADV_CLIP = 0.1
"""Smallest non-zero ``loss.adv_clip``: below it every advantage is clipped to nearly nothing."""


@dataclass
class LossConfig(_Section):
    """Which algorithm's loss, its clipping, KL and advantage settings."""

    section: ClassVar[str] = "loss"

    algorithm: str = _opt("treegrpo", "training algorithm (treegrpo.recipes; register_loss adds more)",
                          choices=RECIPES.names)
    clip_range: float = _opt(
        1e-4, "PPO clip epsilon; Flow-GRPO/DanceGRPO use 1e-4 with mean-reduced log-probs", min=0, min_open=True
    )
    adv_clip: float = _opt(5.0, "clip advantages to +-adv_clip, 0 = off", min=0)
    kl_coef: float = _opt(0.0, "weight of the closed-form KL to the reference model", min=0)
    kl_form: str = _opt("transition", "the KL's denominator: transition (the step's own variance, the true KL of the "
                                      "two transitions) or flow_grpo (Flow-GRPO's flow_sde KL: the diffusion "
                                      "coefficient without the step's dt, i.e. the true KL times dt)",
                        choices=("transition", "flow_grpo"))
    clip_high: float = _opt(0.0, "upper PPO clip epsilon (ratio <= 1 + clip_high), 0 = clip_range (symmetric); "
                                 "DAPO's clip-higher sets it above clip_range", min=0)
    estimator: str = _opt("logprob_softmax", "treeadv backup estimator (treeadv.register_estimator adds more)",
                          choices=_estimators)
    temperature: float = _opt(1.0, "softmax temperature of the logprob_softmax backup (the paper's: 1)", min=0,
                              min_open=True, from_text=True)
    estimator_options: list[str] = _opt([], "other options of loss.estimator as name=value, comma-separated (the "
                                            "fields of its dataclass)")
    options: list[str] = _opt([], "the loss's own options as name=value, comma-separated: its constructor's keyword "
                                  "arguments that no other loss.* option sets (a plugin loss's beta=10, say)")
    timestep_fraction: float = _opt(
        1.0, "fraction of SDE steps trained per iteration", min=0, max=1, min_open=True
    )
    timestep_selection: str = _opt(
        "random", "which steps loss.timestep_fraction f keeps of the S sampled SDE steps: random (round(f S), one "
        "draw for the batch), first (the first int(f S): Flow-GRPO) or per_sample (int(f S) drawn for each "
        "trajectory: DanceGRPO)", choices=("random", "first", "per_sample"))
    reward_weights: list[float] = _opt([], "per-reward weights, comma-separated; empty = equal", min=0)
    reward_aggregation: str = _opt(
        "advantage", "several rewards: normalise each then weight (advantage, the paper) or weight raw rewards "
        "then normalise (reward)", choices=("advantage", "reward"))
    advantage_std: str = _opt(
        "group", "spread that divides each group's centred rewards: group (the group's population std), "
        "group_bessel (its Bessel-corrected std: DanceGRPO, MixGRPO) or batch (the population std of the whole "
        "batch: Flow-GRPO's global_std)", choices=("group", "group_bessel", "batch"))
    advantage_eps: str = _opt(
        "auto", "added to loss.advantage_std's spread: a number, or auto (its peer's: group 1e-6, group_bessel "
        "1e-8, batch 1e-4)", min=0, or_words=("auto",))
    prune_depths: list[int] = _opt([], "branch_grpo: depths (a node's step + 1) whose incoming edges are not trained "
                                       "(BranchGRPO's depth pruning; off by default in its script)", min=1)
    prune_every: int = _opt(0, "branch_grpo: move the pruned depths one shallower every this many iterations, 0 = "
                               "fixed (BranchGRPO's depth_pruning_slide_interval)", min=0)
    prune_stop_depth: int = _opt(-1, "branch_grpo: the shallowest depth moving prunes reach, -1 = the last split step "
                                     "(BranchGRPO's default)", min=-1)
    width_pruning: str = _opt("off", "branch_grpo: which edges after the last split are trained: off (all), branch "
                                     "(the best width_ratio of each last split's branch: BranchGRPO mode 1) or "
                                     "extremes (the best and worst width_ratio / 2 of the batch: mode 2)",
                              choices=("off", "branch", "extremes"))
    width_ratio: float = _opt(0.5, "branch_grpo: fraction of the edges after the last split that width_pruning keeps",
                              min=0, max=1, min_open=True)
    prune_fraction: float = _opt(1.0, "branch_grpo: prune during the first this fraction of train.iterations "
                                      "(BranchGRPO's pruning_step_ratio)", min=0, max=1)
    tracker_buffer: int = _opt(32, "DDPO per-prompt stat tracker buffer size", min=1)
    tracker_min_count: int = _opt(16, "DDPO tracker minimum samples before per-prompt stats", min=1)

    @property
    def recipe(self) -> Recipe:
        """The recipe of ``algorithm`` (:mod:`treegrpo.recipes`)."""
        return RECIPES[self.algorithm]

    @property
    def upper_clip(self) -> float:
        """The upper clip epsilon: ``clip_high``, or ``clip_range`` when it is 0 (a symmetric clip)."""
        return self.clip_high or self.clip_range

    def estimator_kwargs(self) -> dict[str, Any]:
        """The options ``estimator`` is built with: ``temperature`` (``logprob_softmax``), then every
        ``name=value`` of ``estimator_options`` (numbers and true/false parsed, other words kept)."""
        kwargs: dict[str, Any] = {"temperature": self.temperature} if (
            self.estimator == "logprob_softmax") else {}
        for item in self.estimator_options:
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"loss.estimator_options: expected name=value, got {item!r}")
            text = text.strip()
            kwargs[name.strip()] = _BOOL_WORDS[text.lower()] if text.lower() in ("true", "false") else number_or_word(text)
        return kwargs

    def _check_fields(self) -> None:
        """The estimator must accept its options (its own checks, e.g. a temperature > 0); an
        advantage clip must leave the advantages (z-scores, of order 1) something to learn from."""
        import treeadv

        if 0 < self.adv_clip < MIN_ADV_CLIP:
            raise ConfigError(f"loss.adv_clip: {self.adv_clip:g} clips every advantage (group z-scores, of order 1) "
                              f"to +-{self.adv_clip:g}, so the policy learns nothing; use 0 (off) or a value >= "
                              f"{MIN_ADV_CLIP:g} (peers use 5)")

        if self.timestep_selection == "per_sample" and self.recipe.tree:
            raise ConfigError(f"loss.timestep_selection: per_sample draws steps for each trajectory (DanceGRPO), but "
                              f"loss.algorithm={self.algorithm} samples trees whose leaves share their steps; use "
                              "random or first")

        options = self.estimator_kwargs()  # its own one-line error for a malformed item
        try:
            treeadv.make_estimator(self.estimator, **options)
        except (treeadv.EstimatorError, TypeError, ValueError) as error:
            raise ConfigError(f"loss.estimator_options: {' '.join(str(error).split())}") from None


@dataclass
class OptimConfig(_Section):
    """AdamW and its schedule."""

    section: ClassVar[str] = "optim"

    lr: float = _opt(1e-5, "AdamW learning rate", min=0, max=1, min_open=True)
    weight_decay: float = _opt(0.01, "AdamW weight decay", min=0)
    beta1: float = _opt(0.9, "AdamW beta1", min=0, max=1, max_open=True)
    beta2: float = _opt(0.999, "AdamW beta2", min=0, max=1, max_open=True)
    eps: float = _opt(1e-8, "AdamW epsilon", min=0, min_open=True)
    grad_clip: float = _opt(1.0, "max grad norm, 0 = off", min=0)
    grad_accumulation: int = _opt(1, "minibatches accumulated per optimiser step", min=1)
    warmup_iterations: int = _opt(0, "iterations of linear learning-rate warmup", min=0)


@dataclass
class TrainConfig(_Section):
    """The outer loop: iterations, minibatching, precision, adapters, logging and checkpoints."""

    section: ClassVar[str] = "train"

    iterations: int = _opt(100, "training iterations (sample, then optimise)", min=1)
    inner_epochs: int = _opt(1, "optimisation epochs over each iteration's edges", min=1)
    minibatch_parents: int = _opt(16, "parent nodes per minibatch; each serves all its child edges", min=1)
    seed: int = _opt(0, "random seed (32 bits: every generator seeded from it, seed * 1000003 + epoch, fits in 64)",
                     min=0, max=2**32 - 1)
    precision: str = _opt("fp32", "training precision", choices=("fp32", "bf16"))
    lora_rank: int = _opt(0, "LoRA rank via peft, 0 = full fine-tuning", min=0)
    lora_alpha: float = _opt(16.0, "LoRA alpha", min=0, min_open=True)
    lora_targets: list[str] = _opt([], "LoRA target module names, comma-separated; empty = every linear layer")
    ema_decay: float = _opt(0.0, "EMA decay of the trained weights, 0 = off", min=0, max=1, max_open=True)
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass")
    compile: bool = _opt(False, "torch.compile the model")
    compile_backend: str = _opt("inductor", "torch.compile backend", choices=("inductor", "aot_eager", "eager"))
    deterministic: bool = _opt(False, "torch deterministic algorithms (exact resume tests)")
    check_on_policy: str = _opt(
        "warn", "importance ratios before the first update of each iteration, read off the first minibatch (no extra "
        "forward): off; warn (log them, one line when beyond rounding); strict (stop when beyond rounding)",
        choices=("off", "warn", "strict"), from_bool=("off", "strict"))
    rescore_on_policy: bool = _opt(False, "with check_on_policy: re-score every row of the batch before the update "
                                          "(the full check; one extra forward per parent)")
    out_dir: str = _opt("runs/treegrpo", "directory for logs, samples and checkpoints")
    log_every: int = _opt(1, "iterations between log lines", min=1)
    checkpoint_every: int = _opt(10, "iterations between checkpoints", min=1)
    sample_every: int = _opt(10, "iterations between saved sample grids", min=1)
    eval_every: int = _opt(0, "iterations between held-out evaluations logged to tensorboard (rewards, diversity); "
                              "0 = only before and after the run", min=0)
    keep_checkpoints: int = _opt(3, "most recent checkpoints kept", min=1)
    resume: bool = _opt(False, "continue from the latest checkpoint in out_dir")
    overwrite: bool = _opt(False, "start a new run in an out_dir that holds an earlier one, deleting what that run wrote")
    allow_config_change: bool = _opt(False, "with resume: continue although options that change training differ "
                                            "from the checkpoint's (the new values win)")
    device: str = _opt("cpu", "device of the model and sampling: cpu, cuda, cuda:N, or auto (cuda if available); under torchrun cuda is cuda:LOCAL_RANK")
    parallel: str = _opt("ddp", "under torchrun: ddp (weights replicated, gradients averaged) or fsdp (FSDP2: sharded)",
                         choices=PARALLEL_MODES)
    dist_backend: str = _opt("auto", "torch.distributed backend under torchrun: auto (nccl on CUDA, else gloo)",
                             choices=BACKENDS)

    def _check_fields(self) -> None:
        """``device`` must name a torch device; ``out_dir`` must be a folder name."""
        if not self.out_dir.strip():
            raise ConfigError("train.out_dir: is empty; name a folder for logs, samples and checkpoints (runs/<name>)")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"train.device: expected cpu, cuda, cuda:N or auto, got {self.device!r}") from None


@dataclass
class EvalConfig(_Section):
    """Held-out evaluation (``treegrpo eval`` and the before/after numbers of ``treegrpo train``)."""

    section: ClassVar[str] = "eval"

    rewards: list[str] = _opt([], "rewards reported, comma-separated; empty = model.rewards (diffusers families) "
                                  "or every offline reward (digits)")
    samples_per_prompt: int = _opt(8, "ODE samples per held-out prompt", min=1)
    num_steps: int = _opt(0, "denoising steps of evaluation samples, 0 = sampling.num_steps", min=0)
    seed: int = _opt(-1, "seed of the evaluation noise (the same for every policy), -1 = train.seed + 1", min=-1,
                     max=2**32 - 1)
    base: bool = _opt(True, "treegrpo eval: also score the starting weights on the same noise (a 'base' row)")
    diversity: bool = _opt(True, "report per-prompt diversity of the held-out samples (diffusers families: needs "
                                 "the CLIP weights of eval.diversity_model)")
    diversity_model: str = _opt("clipscore", "diffusers families: the open_clip model whose image embeddings "
                                             "measure diversity (its reward folder)", choices=("clipscore", "hpsv2"))
    out: str = _opt("", "treegrpo eval: JSON path, empty = <train.out_dir>/eval.json")


SECTION_USES: tuple[Use, ...] = (
    Use(("sampling.cps_scoring",), lambda c: c.sampling.transition == "cps", "sampling.transition=cps", "transition"),
)
"""Options read only with some value of another section's option (the section-level rules); the
recipes declare theirs in :data:`treegrpo.recipes.USES`, the model kinds theirs when registered
(:mod:`treegrpo.kinds`)."""


def uses() -> list[Use]:
    """Every declaration of options only some runs read: the recipes', the model kinds', the sections'."""
    return [*RECIPE_USES, *kind_uses(), *SECTION_USES]


def preset(kind: str) -> tuple[str, ...]:
    """The assignments model kind ``kind``'s preset makes over ``Config()`` (none for an unknown kind)."""
    entry = model_kinds().get(kind)
    return entry.preset if entry is not None else ()


def _starting_values(kind: str, key: str, algorithm: str | None = None) -> list[Any]:
    """What ``key`` holds before a user sets it: its default, the model kind's preset value, and the
    value ``algorithm``'s recipe gives it, in that order."""
    section, name = key.split(".")
    values = [_default(SECTIONS[section], name)]
    recipe = RECIPES[algorithm].defaults if algorithm in RECIPES else ()
    for assignment in (*preset(kind), *recipe):
        preset_key, _, text = assignment.partition("=")
        if preset_key == key:
            values.append(SECTIONS[section]._parse_text(name, text))
    return values


def _with_recipe(config: Config, algorithm: str) -> Config:
    """``config`` (a copy) with ``loss.algorithm = algorithm`` and that recipe's defaults set; what
    the previous recipe set (and still holds its value) and the new one does not goes back to the
    model kind's starting value. Not validated: the caller applies the user's settings, then validates."""
    fresh = copy.deepcopy(config)
    new = RECIPES[algorithm].defaults if algorithm in RECIPES else ()
    old = RECIPES[config.loss.algorithm].defaults if config.loss.algorithm in RECIPES else ()
    mine = {item.partition("=")[0] for item in new}
    for item in old:
        key, _, text = item.partition("=")
        section, name = key.split(".")
        if key not in mine and getattr(getattr(fresh, section), name) == SECTIONS[section]._parse_text(name, text):
            setattr(getattr(fresh, section), name, _starting_values(config.model.kind, key)[-1])
    for item in new:
        key, _, text = item.partition("=")
        section, name = key.split(".")
        setattr(getattr(fresh, section), name, SECTIONS[section]._parse_text(name, text))
    fresh.loss.algorithm = algorithm
    return fresh


def default(key: str) -> Any:
    """The default of option ``section.field`` (a fresh copy of a list)."""
    section, name = key.split(".")
    return _default(SECTIONS[section], name)


def _default(cls: type, name: str) -> Any:
    field_ = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
    return field_.default_factory() if field_.default is dataclasses.MISSING else field_.default  # type: ignore[misc]


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "sampling": SamplingConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}
"""Section name to its dataclass: the tables of a config file, in order."""


@dataclass
class Config:
    """A whole run's configuration; build it with :meth:`from_toml`, :meth:`from_dict` or :meth:`override`."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model and rewards"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "sampling and the tree"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "algorithm and loss"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "held-out evaluation"})

    def validate(self, *, check_used: bool = True) -> Config:
        """Validate every section and the cross-section rules (with ``check_used``, also that no set
        option goes unused, see :meth:`check_used`); return ``self``."""
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(f"{name}: expected a {cls.__name__}, got {section!r}")
            section.validate()
        weights, rewards = self.loss.reward_weights, self.model.rewards
        if weights and len(weights) != len(rewards):
            raise ConfigError(
                f"loss.reward_weights: expected one weight per reward in model.rewards ({len(rewards)}), "
                f"got {len(weights)}: {weights!r}"
            )
        if check_used:
            self.check_used()
            self.check_learnable()
        return self

    def check_learnable(self) -> None:
        """Refuse a configuration that would train nothing: no siblings to compare within a prompt's
        group, all-zero reward weights, or an estimator :mod:`treeadv` does not know."""

        s, loss = self.sampling, self.loss
        if loss.recipe.tree:
            if s.branching == 1 and s.trees_per_prompt == 1:
                raise ConfigError("sampling.branching: 1 with sampling.trees_per_prompt=1 gives each prompt one image, "
                                  "so every group-normalised advantage is 0; use branching >= 2 or trees_per_prompt >= 2")
        elif loss.recipe.advantage != "tracker" and s.group_size == 1:
            raise ConfigError(f"sampling.group_size: 1 gives each prompt one trajectory, so every group-normalised "
                              f"advantage of loss.algorithm={loss.algorithm} is 0; use group_size >= 2")
        if loss.reward_weights and not any(loss.reward_weights):
            raise ConfigError(f"loss.reward_weights: all zero ({loss.reward_weights}), so every advantage is 0; give at "
                              "least one reward a positive weight")

    def check_used(self, given: Collection[str] = ()) -> None:
        """Refuse, in one line, an option the run would ignore: one named in ``given`` (``section.field``
        keys a user wrote), or whose value is neither its default nor the model kind's preset
        (:func:`preset`), while the chosen algorithm, model kind or section setting does not use it
        (:func:`uses`: the recipes', the kinds' and the sections' declarations)."""
        kind = model_kinds().get(self.model.kind)
        for use in [*uses(), *(kind.uses if kind is not None else ())]:
            if use.applies(self):
                continue
            for key in use.fields:
                section, name = key.split(".")
                value = getattr(getattr(self, section), name)
                if key in given or value not in _starting_values(self.model.kind, key, self.loss.algorithm):
                    raise ConfigError(f"{key}: {value!r} is not used with {use.context(self)}; it applies "
                                      f"to {use.users()}. Remove it, or choose {use.users()}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A nested plain dict (section -> field -> value), JSON and TOML friendly."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The configuration as TOML text that :meth:`from_toml` reads back."""
        return to_toml(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Config | None = None, *, check_used: bool = True) -> Config:
        """Build and validate a Config from nested mappings; missing keys come from ``base`` (or the
        defaults). ``check_used=False`` defers :meth:`check_used` to a caller that applies more overrides."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a table of sections, got {data!r}")
        loss = data.get("loss", {})
        algorithm = loss.get("algorithm") if isinstance(loss, Mapping) else None
        if isinstance(algorithm, str) and algorithm != (base or cls()).loss.algorithm:
            base = _with_recipe(base or cls(), algorithm)  # the recipe's defaults, under the data's settings
        sections = {}
        for name, values in data.items():
            if name not in SECTIONS:
                raise ConfigError(f"{name}: unknown section; {_suggest(str(name), list(SECTIONS))}")
            sections[name] = SECTIONS[name]._from_mapping(values, getattr(base, name) if base else None)
        if base is None:
            return cls(**sections).validate(check_used=check_used)
        return dataclasses.replace(copy.deepcopy(base), **sections).validate(check_used=check_used)

    @classmethod
    def from_file(cls, path: str | Path, base: Config | None = None) -> Config:
        """Read and validate a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) file of section tables."""
        return cls.from_dict(read_config_file(path), base)

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Read and validate a TOML file of ``[section]`` tables."""
        if Path(path).suffix.lower() != ".toml":
            raise ConfigError(f"{path}: expected a .toml file")
        return cls.from_file(path)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Read and validate a YAML file of ``section: {field: value}`` mappings."""
        if Path(path).suffix.lower() not in (".yaml", ".yml"):
            raise ConfigError(f"{path}: expected a .yaml or .yml file")
        return cls.from_file(path)

    def override(self, assignments: list[str], *, check_used: bool = True) -> Config:
        """A new validated Config with ``section.field=value`` assignments applied in order
        (``check_used``: as in :meth:`from_dict`).

        Examples:
            >>> from treegrpo.config import Config
            >>> config = Config().override(["model.kind=toy2d", "loss.algorithm=flow_grpo"])
            >>> config.loss.algorithm, config.loss.clip_range, config.sampling.noise_level  # the recipe's own
            ('flow_grpo', 0.0001, 0.7)
            >>> Config().override(["loss.clip_range=-1"])
            Traceback (most recent call last):
            ...
            treegrpo.errors.ConfigError: loss.clip_range: ...
        """
        changes: dict[str, dict[str, Any]] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"{assignment}: expected section.field=value")
            if section not in SECTIONS:
                raise ConfigError(f"{section}: unknown section; {_suggest(section, list(SECTIONS))}")
            changes.setdefault(section, {})[name] = SECTIONS[section]._parse_text(name, text)
        algorithm = changes.get("loss", {}).get("algorithm", self.loss.algorithm)
        fresh = _with_recipe(self, algorithm) if algorithm != self.loss.algorithm else copy.deepcopy(self)
        replaced = {name: dataclasses.replace(getattr(fresh, name), **values) for name, values in changes.items()}
        return dataclasses.replace(fresh, **replaced).validate(check_used=check_used)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw section tables of a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) config file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: expected a .toml, .yaml or .yml config file")
    try:
        if suffix == ".toml":
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        else:
            import yaml

            with path.open(encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except Exception as error:  # noqa: BLE001 - any parse error becomes one line naming the file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: cannot read config: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections at the top level")
    return data


def options() -> Iterator[Option]:
    """Every configurable field of every section, in declaration order."""
    for section, cls in SECTIONS.items():
        kinds = _kinds_of(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = _default(cls, f.name)
            choices = _choices(f.metadata) if "choices" in f.metadata else None
            yield Option(section, f.name, kinds[f.name], default, f.metadata["help"], choices)


def _toml_value(value: Any) -> str:
    """One TOML value: bools, ints, floats, basic strings and flat arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def to_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level dict (``[section]`` tables of scalars and arrays) as TOML text."""
    blocks = []
    for section, values in data.items():
        lines = [f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def preset_config(kind: str, algorithm: str | None = None) -> Config:
    """``Config()`` with ``model.kind = kind`` and that kind's preset applied, then, when given,
    ``algorithm`` with its recipe's defaults (not yet checked for unused options: files and flags
    may still change the algorithm)."""
    config = Config().override([f"model.kind={kind}", *preset(kind)], check_used=False)
    if algorithm is not None and algorithm != config.loss.algorithm:
        config = config.override([f"loss.algorithm={algorithm}"], check_used=False)
    return config
