"""One registry of reward models by name, each tied to what it scores: an image or a video.

Every entry builds a :class:`~treegrpo.rewards.base.RewardModel` (``(images, prompts) -> [B]``, or
``(videos, prompts) -> [B]``) from ``root`` (the reward-weights folder, or ``None`` for the default)
and ``device``. A reward registered for a modality scores every model family of that modality
(:attr:`treegrpo.families.ModelFamily.modality`); one registered for named ``kinds`` scores those
kinds only (the embedded digits default registers its own, ``classifier``, ``judge`` and
``aesthetic_proxy``, when :mod:`treegrpo.embedded` is imported). The image rewards are registered
here, and each of them averaged over a video's frames (``hpsv2_frames``, ...) with
``temporal_consistency`` for videos (:mod:`treegrpo.rewards.video`).

    register_reward("my_score", lambda root=None, device="cpu": MyScore(root), modalities=("image",))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from treeadv.registry import Registry
from treegrpo.errors import TreegrpoError
from treegrpo.rewards import clip_models
from treegrpo.rewards.base import RewardModel
from treegrpo.rewards.imagereward import imagereward
from treegrpo.rewards.ocr import ocr
from treegrpo.rewards.offline import JpegSize
from treegrpo.rewards.remote import PREFIX as REMOTE_PREFIX
from treegrpo.rewards.remote import RemoteReward, parse_remote_name
from treegrpo.rewards.video import FrameAveraged, TemporalConsistency

IMAGE: tuple[str, ...] = ("image",)
"""The modality a reward scores unless it says otherwise."""
VIDEO: tuple[str, ...] = ("video",)


class UnknownRewardError(TreegrpoError, ValueError):
    """A reward name that is not registered for the model kind."""


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: how to build it, the modalities it scores (every family of one) and the
    model kinds it scores besides (kinds that are not families, such as ``digits``)."""

    factory: Callable[..., RewardModel]
    kinds: tuple[str, ...] = ()
    modalities: tuple[str, ...] = IMAGE


REWARDS: Registry[RewardEntry] = Registry("reward", field="model.rewards")
"""Reward name to its :class:`RewardEntry` (a :class:`treeadv.registry.Registry`); :func:`register_reward`
adds, :func:`build_reward` builds."""


def register_reward(name: str, factory: Callable[..., RewardModel], *, modalities: Sequence[str] | None = None,
                    kinds: Sequence[str] = (), replace: bool = False) -> None:
    """Register ``factory(root=..., device=...)`` as the reward ``name`` for every model family of
    ``modalities`` (``image``, ``video``; default ``("image",)``, or none when ``kinds`` is given) and
    for the model kinds ``kinds`` (one factory per name: registering it again, or a re-definition of
    it, replaces it; another factory under a taken name needs ``replace=True``)."""
    if modalities is None:
        modalities = () if kinds else IMAGE
    if isinstance(modalities, str) or isinstance(kinds, str):
        raise TypeError("modalities, kinds: expected sequences of names, got one str")
    entry = RewardEntry(factory, tuple(kinds), tuple(modalities))
    REWARDS.add(name, entry, replace=replace)


KIND_MODALITIES: dict[str, str] = {}
"""Model kind -> what its samples are (``image``, ``video``): :mod:`treegrpo.problems` declares it for
the kind of every registered family (:func:`declare_modality`), from the family's own declaration."""


def declare_modality(kind: str, modality: str) -> None:
    """Make the rewards registered for ``modality`` score model kind ``kind``."""
    KIND_MODALITIES[kind] = modality


def modality(kind: str) -> str | None:
    """What model kind ``kind``'s samples are, ``image`` or ``video`` (as its family declares it);
    ``None`` for a kind that is no family (its rewards name it among their ``kinds``)."""
    return KIND_MODALITIES.get(kind)


def rewards_for(kind: str) -> list[str]:
    """The reward names registered for model kind ``kind`` (by name, or by its family's modality), sorted."""
    scored = modality(kind)
    return sorted(name for name, entry in REWARDS.items() if kind in entry.kinds or scored in entry.modalities)


def check_reward_names(names: Sequence[str], field: str, *, kind: str) -> None:
    """A one-line error naming ``field`` and the first of ``names`` that ``kind`` has no reward of
    (``remote:http://HOST:PORT/NAME``, a served reward, is accepted for every kind)."""
    known = rewards_for(kind)
    for name in names:  # a served reward, any kind: its URL is checked here, the server when it is built
        if name.startswith(REMOTE_PREFIX):
            parse_remote_name(name, field)
    unknown = [name for name in names if name not in known and not name.startswith(REMOTE_PREFIX)]
    if unknown:
        raise UnknownRewardError(f"{field}: unknown reward {unknown[0]!r} for the {kind} model; expected one of "
                                 f"{known}")


def build_reward(name: str, *, kind: str | None = None, **options: Any) -> RewardModel:
    """The reward model registered as ``name`` (for ``kind``, if given), built with ``options``
    (``root``: its weights folder, ``device``; the learned text-to-image rewards also take
    ``exact_preprocessing``, see :func:`~treegrpo.rewards.base.for_evaluation`)."""
    if name.startswith(REMOTE_PREFIX):  # remote:http://HOST:PORT/NAME, see treegrpo.rewards.remote
        return RemoteReward.from_name(name)
    known = rewards_for(kind) if kind else sorted(REWARDS)
    if name not in known:
        where = f" for the {kind} model" if kind else ""
        raise UnknownRewardError(f"model.rewards: unknown reward {name!r}{where}; expected one of {known}")
    return REWARDS[name].factory(**options)


for _name, _factory in {
    "hpsv2": clip_models.hpsv2,
    "clipscore": clip_models.clipscore,
    "imagereward": imagereward,
    "pickscore": clip_models.pickscore,
    "aesthetic": clip_models.aesthetic,
    "ocr": ocr,  # Flow-GRPO's text rendering; needs the `ocr` extra, which is checked when it is built
}.items():
    register_reward(_name, _factory)
# DDPO's JPEG rewards need no weights; 16-pixel digits are enlarged to 64 pixels first, as any small image is.
register_reward("jpeg_compressibility", lambda **_: JpegSize(-1.0), modalities=IMAGE, kinds=("digits",))
register_reward("jpeg_incompressibility", lambda **_: JpegSize(1.0), modalities=IMAGE, kinds=("digits",))


def frame_averaged(name: str) -> Callable[..., RewardModel]:
    """The factory of the image reward ``name`` averaged over 4 evenly spaced frames of each video
    (:class:`~treegrpo.rewards.video.FrameAveraged`), named ``<name>_frames``."""

    def factory(**options: Any) -> RewardModel:
        return FrameAveraged(REWARDS[name].factory(**options), name=f"{name}_frames")

    factory.__qualname__ = factory.__name__ = f"{name}_frames"
    return factory


def temporal_consistency(root: Any = None, device: Any = "cpu", **_: Any) -> RewardModel:
    """Consecutive frames' CLIP (``clipscore``'s LAION ViT-H-14) image-embedding cosine, averaged
    (:class:`~treegrpo.rewards.video.TemporalConsistency`)."""
    return TemporalConsistency(clip_models.clipscore(root=root, device=device).image_embeddings)


for _name in ("hpsv2", "clipscore", "imagereward", "pickscore", "aesthetic", "ocr", "jpeg_compressibility",
              "jpeg_incompressibility"):
    register_reward(f"{_name}_frames", frame_averaged(_name), modalities=VIDEO)
register_reward("temporal_consistency", temporal_consistency, modalities=VIDEO)
