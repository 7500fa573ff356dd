"""Prompt lists from files, and their text embeddings computed once and cached.

:func:`load_prompts` reads one prompt per line (``.txt``), a JSON list (of strings or of HPDv2
records with a ``"prompt"`` key), a JSON object of splits (``{"train": [...], "test": [...]}``), or
a folder with ``<split>.json`` / ``<split>.txt`` (HPDv2's ``train.json`` and ``test.json``).
Prompts are stripped, empty ones dropped and repeats kept once, in first-seen order (HPDv2 lists
each prompt once per annotated image pair).

:class:`PromptEmbeddings` puts a cache in front of a text encoder: an LRU in memory and, if given a
folder, one safetensors file per prompt on disk, so encoders run once per prompt ever and can be
released after :meth:`PromptEmbeddings.precompute`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tensordict import TensorDict

from treegrpo.errors import TreegrpoError

__all__ = [
    "SPLITS",
    "PromptEmbeddings",
    "PromptFileError",
    "load_prompts",
]

MAX_FILE_BYTES = 1 << 30
"""Largest prompt file read (HPDv2's train.json is a few hundred MB): a bigger one is refused before reading."""
MAX_PROMPT_CHARS = 4096
"""Longest prompt: text encoders read 77 (CLIP) to 512 (T5) tokens; a longer line is a wrong file, and
tokenising megabytes of one line stalls for minutes."""

SPLITS = ("train", "test")
"""The splits :func:`load_prompts` reads from a folder (``train.json``, ``test.json``)."""


class PromptFileError(TreegrpoError, ValueError):
    """A prompt file or folder that cannot be read as prompts; the message is one line naming it."""


def _records(data: object, source: str) -> list[str]:
    if not isinstance(data, list):
        raise PromptFileError(f"prompts: {source} must hold a list of prompts, got {type(data).__name__}")
    texts = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str):
            raise PromptFileError(f"prompts: {source} item {i} is neither a string nor a record with a 'prompt' string")
        texts.append(item)
    return texts


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PromptFileError(f"prompts: {path} is {size} bytes; expected a prompt file of at most "
                                  f"{MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PromptFileError(f"prompts: {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise PromptFileError(f"prompts: cannot read {path} ({os.strerror(error.errno or 0)})") from None


def _clean(texts: Sequence[str], source: Path) -> list[str]:
    """Stripped, non-empty, first-seen-once prompts; one over :data:`MAX_PROMPT_CHARS` is refused."""
    long = next((i for i, t in enumerate(texts) if len(t) > MAX_PROMPT_CHARS), None)
    if long is not None:
        raise PromptFileError(f"prompts: {source} prompt {long + 1} is {len(texts[long])} characters long; expected at "
                              f"most {MAX_PROMPT_CHARS} (one prompt per line)")
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def load_prompts(path: str | Path, split: str | None = "train") -> list[str]:
    """The prompts of ``split`` in ``path`` (a file of the file's only list when it has no splits)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for suffix in (".json", ".txt"):
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                return load_prompts(candidate, None)
        raise FileNotFoundError(f"prompts: {path} has no {split}.json or {split}.txt (HPDv2 layout: train.json, "
                                "test.json)")
    if not path.is_file():
        raise FileNotFoundError(f"prompts: {path} does not exist; expected a .txt (one prompt per line), a .json "
                                "file, or a folder with train.json and test.json")
    if path.suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as error:
            raise PromptFileError(f"prompts: {path} is not valid JSON (line {error.lineno}: {error.msg})") from None
        except RecursionError:
            raise PromptFileError(f"prompts: {path} nests too deep; expected a list of prompts") from None
        if isinstance(data, dict):
            if split not in data:
                raise PromptFileError(f"prompts: {path} has splits {sorted(data)}, not {split!r}")
            data = data[split]
        texts = _clean(_records(data, str(path)), path)
    else:
        texts = _clean(_read_text(path).splitlines(), path)
    if not texts:
        raise PromptFileError(f"prompts: {path} holds no prompts")
    return texts


class PromptEmbeddings:
    """Conditioning for prompts, encoded at most once: memory LRU, then disk, then the encoder.

    Args:
        encode: ``prompts -> TensorDict [B]`` (e.g. :meth:`TextToImageModel.encode`).
        identity: what the embeddings depend on (model folder, encoder settings); keys the disk cache.
        cache_dir: optional folder for the on-disk cache (``<cache_dir>/<model hash>/<ab>/<prompt hash>``).
        max_in_memory: most prompts kept in the in-memory LRU (0 = no memory cache).
        device: where returned conditioning lives (the memory cache stays on the CPU).
        batch_size: prompts per encoder call.
    """

    def __init__(self, encode: Callable[[list[str]], TensorDict], identity: str, *,
                 cache_dir: str | Path | None = None, max_in_memory: int = 1024,
                 device: torch.device | str = "cpu", batch_size: int = 32,
                 can_encode: Callable[[], bool] = lambda: True) -> None:
        self._encode, self.can_encode = encode, can_encode
        self.model_key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.cache_dir = Path(cache_dir) / self.model_key if cache_dir else None
        self.max_in_memory, self.device, self.batch_size = max_in_memory, torch.device(device), batch_size
        self._memory: OrderedDict[str, TensorDict] = OrderedDict()
        self.stats = {"memory": 0, "disk": 0, "encoded": 0}

    def _file(self, prompt: str) -> Path:
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.safetensors"  # type: ignore[operator]

    def _lookup(self, prompt: str) -> TensorDict | None:
        if prompt in self._memory:
            self._memory.move_to_end(prompt)
            self.stats["memory"] += 1
            return self._memory[prompt]
        if self.cache_dir is not None and self._file(prompt).is_file():
            self.stats["disk"] += 1
            row = TensorDict(load_file(self._file(prompt)), batch_size=[])
            self._remember(prompt, row)
            return row
        return None

    def _remember(self, prompt: str, row: TensorDict) -> None:
        if self.max_in_memory <= 0:
            return
        self._memory[prompt] = row
        self._memory.move_to_end(prompt)
        while len(self._memory) > self.max_in_memory:
            self._memory.popitem(last=False)

    def _store(self, prompt: str, row: TensorDict) -> None:
        if self.cache_dir is not None:
            target = self._file(prompt)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            os.close(fd)
            save_file({key: value.contiguous() for key, value in row.items()}, tmp, metadata={"prompt": prompt})
            os.replace(tmp, target)
        self._remember(prompt, row)

    def _rows(self, prompts: Sequence[str]) -> dict[str, TensorDict]:
        """One CPU row per distinct prompt: cached ones looked up once, the rest encoded in batches."""
        rows: dict[str, TensorDict] = {}
        for prompt in dict.fromkeys(prompts):
            found = self._lookup(prompt)
            if found is not None:
                rows[prompt] = found
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        if missing and not self.can_encode():
            raise KeyError(f"prompts: {len(missing)} prompt(s) are not cached and the text encoders were "
                           f"released (first: {missing[0]!r}); precompute them before releasing")
        for lo in range(0, len(missing), self.batch_size):
            chunk = missing[lo: lo + self.batch_size]
            encoded = self._encode(chunk).to("cpu")
            self.stats["encoded"] += len(chunk)
            for i, prompt in enumerate(chunk):
                row = encoded[i].clone()
                self._store(prompt, row)
                rows[prompt] = row
        return rows

    def __call__(self, prompts: Sequence[str]) -> TensorDict:
        """Conditioning ``[B]`` for ``prompts``, on :attr:`device`, in the order given."""
        prompts = list(prompts)
        rows = self._rows(prompts)
        return torch.stack([rows[p] for p in prompts]).to(self.device)

    def _is_cached(self, prompt: str) -> bool:
        return prompt in self._memory or (self.cache_dir is not None and self._file(prompt).is_file())

    def precompute(self, prompts: Sequence[str], progress: bool = False) -> None:
        """Encode every prompt not yet cached, in batches; needs ``cache_dir`` or enough memory."""
        from tqdm.auto import tqdm

        unique = list(dict.fromkeys(prompts))
        if self.cache_dir is None and len(unique) > self.max_in_memory:
            raise ValueError(f"model.embedding_cache: {len(unique)} prompts exceed the in-memory cache of "
                             f"{self.max_in_memory}; give a cache folder")
        for lo in tqdm(range(0, len(unique), self.batch_size), desc="encoding prompts", disable=not progress):
            todo = [p for p in unique[lo: lo + self.batch_size] if not self._is_cached(p)]
            if todo:
                self._rows(todo)
