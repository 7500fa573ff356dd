"""Where reward-model checkpoints live on disk, and the one-line error when one is missing.

Every learned reward reads its files from ``<reward_dir>/<name>/`` (``model.reward_dir``, else the
``TREEGRPO_REWARD_DIR`` environment variable, else ``~/.cache/treegrpo/rewards``). Nothing is
downloaded; :data:`SOURCES` says where each file comes from.
"""

from __future__ import annotations

import os
from pathlib import Path

from treegrpo.errors import TreegrpoError

ENV_VAR = "TREEGRPO_REWARD_DIR"
"""Environment variable naming the reward-weights folder when ``model.reward_dir`` is empty."""
DEFAULT_DIR = Path("~/.cache/treegrpo/rewards")

SOURCES = {
    "hpsv2": "HPS_v2.1_compressed.pt from https://huggingface.co/xswu/HPSv2",
    "imagereward": "ImageReward.pt and med_config.json from https://huggingface.co/THUDM/ImageReward, "
                   "and the bert-base-uncased tokenizer files (vocab.txt, tokenizer_config.json) in bert-base-uncased/",
    "aesthetic": "sac+logos+ava1-l14-linearMSE.pth from https://github.com/christophschuhmann/improved-aesthetic-predictor "
                 "and openai/clip-vit-large-patch14 (a transformers folder) in clip-vit-large-patch14/",
    "clipscore": "open_clip_pytorch_model.bin from https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "pickscore": "yuvalkirstain/PickScore_v1 (a transformers CLIPModel folder) with the tokenizer and "
                 "preprocessor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K copied in",
}


class MissingRewardWeightsError(TreegrpoError, FileNotFoundError):
    """A reward model's file is missing; the message names it, its source and how to point at it."""


def reward_dir(root: str | Path | None = None) -> Path:
    """The reward-weights root: ``root``, else ``$TREEGRPO_REWARD_DIR``, else ``~/.cache/treegrpo/rewards``."""
    return Path(root or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def require(path: Path, reward: str) -> Path:
    """``path`` if it exists, else a :class:`MissingRewardWeightsError` in one line."""
    if not path.exists():
        raise MissingRewardWeightsError(
            f"{reward}: {path} is missing; put {SOURCES[reward]} there "
            f"(the folder is model.reward_dir, or ${ENV_VAR}, default {DEFAULT_DIR})")
    return path
