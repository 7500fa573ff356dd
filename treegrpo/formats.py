"""What a weights file is, read from its first bytes before any parser sees it.

Parsers handed a crafted file fail in their own words (``SafetensorError``, ``UnpicklingError``) as
tracebacks, and a pickle renamed ``*.safetensors`` reaches a parser that trusts the name. These checks
look at the bytes instead: a safetensors file is an 8-byte little-endian header length, a JSON object
of that length whose tensors lie inside the file; a torch checkpoint is a zip archive (or torch's
legacy format, which opens with a pickled magic number); anything else is refused in one line that
names the file and what was expected, never its content.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from treegrpo.errors import TreegrpoError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Suffixes of weights that torch and transformers read with ``pickle``."""
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_ZIP = b"PK\x03\x04"
_TORCH_LEGACY = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickle of torch's magic number


class FileFormatError(TreegrpoError, ValueError):
    """A file is not in the format its use needs; the message is one line naming the file."""


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def check_safetensors(path: str | Path, what: str) -> None:
    """Refuse ``path`` (for ``what``: an option or a component) unless it is a well-formed
    safetensors file: header length ``n`` with ``2 <= n <= min(size - 8, 100 MiB)``, a JSON object of
    ``n`` bytes, each tensor's ``data_offsets`` inside the file."""
    path = Path(path)
    expected = "a safetensors file (8-byte header length, a JSON header, the tensor bytes)"
    try:
        size = path.stat().st_size
        head = _head(path, 8)
    except OSError as error:
        raise FileFormatError(f"{what}: cannot read {path} ({os.strerror(error.errno or 0)})") from None
    if len(head) < 8:
        raise FileFormatError(f"{what}: {path} is not {expected}: it is {size} bytes long")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(size - 8, MAX_HEADER):
        if (head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(_ZIP):
            raise FileFormatError(f"{what}: {path} is a pickle or a torch checkpoint, not {expected}; pickles can "
                                  "run code when loaded and are refused")
        raise FileFormatError(f"{what}: {path} is not {expected}: its header length does not fit the file")
    try:
        header = json.loads(_head(path, 8 + length)[8:].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise FileFormatError(f"{what}: {path} is not {expected}: its header is not a JSON object")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise FileFormatError(f"{what}: {path} is not {expected}: a tensor's bytes lie outside the file")


def check_torch_checkpoint(path: str | Path, what: str) -> None:
    """Refuse ``path`` unless it starts like a ``torch.save`` file (a zip archive, or the legacy
    format's magic number); a bare pickle or anything else is one line. Loading it must still use
    ``torch.load(weights_only=True)``."""
    path = Path(path)
    try:
        head = _head(path, len(_TORCH_LEGACY))
    except OSError as error:
        raise FileFormatError(f"{what}: cannot read {path} ({os.strerror(error.errno or 0)})") from None
    if not (head.startswith(_ZIP) or head == _TORCH_LEGACY):
        raise FileFormatError(f"{what}: {path} is not a torch checkpoint (a torch.save zip archive); a bare pickle "
                              "can run code when loaded and is refused")


def check_weights_file(path: str | Path, what: str) -> None:
    """:func:`check_safetensors` for ``*.safetensors``, :func:`check_torch_checkpoint` otherwise."""
    if str(path).endswith(".safetensors"):
        check_safetensors(path, what)
    else:
        check_torch_checkpoint(path, what)


__all__ = ["PICKLE_SUFFIXES", "FileFormatError", "check_safetensors", "check_torch_checkpoint", "check_weights_file"]
