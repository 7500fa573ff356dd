"""One registry of reward models by name, each with the model kinds it scores.

Every entry builds a :class:`~treegrpo.rewards.base.RewardModel` (``(images, prompts) -> [B]``)
from ``root`` (the reward-weights folder, or ``None`` for the default) and ``device``. Text-to-image
rewards are registered here; the embedded digits default registers its own (``classifier``,
``judge``, ``aesthetic_proxy``) when :mod:`treegrpo.embedded` is imported.

    register_reward("my_score", lambda root=None, device="cpu": MyScore(root), kinds=("sd3",))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from treeadv.registry import Registry
from treeadv.registry import same_definition
from treegrpo.errors import TreegrpoError
from treegrpo.rewards import clip_models
from treegrpo.rewards.base import RewardModel
from treegrpo.rewards.imagereward import imagereward
from treegrpo.rewards.ocr import ocr
from treegrpo.rewards.offline import JpegSize
from treegrpo.rewards.remote import PREFIX as REMOTE_PREFIX
from treegrpo.rewards.remote import RemoteReward, parse_remote_name

TEXT_TO_IMAGE = ("sd3", "flux", "sd15")
"""The model kinds a text-to-image reward scores unless it says otherwise."""


class UnknownRewardError(TreegrpoError, ValueError):
    """A reward name that is not registered for the model kind."""


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: how to build it and which model kinds it can score."""

    factory: Callable[..., RewardModel]
    kinds: tuple[str, ...]


REWARDS: Registry[RewardEntry] = Registry("reward", field="model.rewards")
"""Reward name to its :class:`RewardEntry` (a :class:`treeadv.registry.Registry`); :func:`register_reward`
adds, :func:`build_reward` builds."""


def _same_factory(old: RewardEntry | None, new: RewardEntry) -> bool:
    """Whether ``new`` registers ``old`` again: the same kinds, and the same factory or a re-definition
    of it (the same module and name, as when a plugin file is loaded a second time)."""
    return old is not None and old.kinds == new.kinds and same_definition(old.factory, new.factory)


def register_reward(name: str, factory: Callable[..., RewardModel], *,
                    kinds: Sequence[str] = TEXT_TO_IMAGE, replace: bool = False) -> None:
    """Register ``factory(root=..., device=...)`` as the reward ``name`` for ``kinds`` (one factory
    per name: registering it again, or a re-definition of it, replaces it; another factory under a
    taken name needs ``replace=True``)."""
    entry = RewardEntry(factory, tuple(kinds))
    REWARDS.add(name, entry, replace=replace or _same_factory(REWARDS.get(name), entry))


def rewards_for(kind: str) -> list[str]:
    """The reward names registered for model kind ``kind``, sorted."""
    return sorted(name for name, entry in REWARDS.items() if kind in entry.kinds)


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
register_reward("jpeg_compressibility", lambda **_: JpegSize(-1.0), kinds=(*TEXT_TO_IMAGE, "digits"))
register_reward("jpeg_incompressibility", lambda **_: JpegSize(1.0), kinds=(*TEXT_TO_IMAGE, "digits"))
