"""The client of ``treegrpo serve-reward``: a reward scored by a server, named
``remote:http://HOST:PORT/NAME`` in ``model.rewards`` (``NAME``: the reward the server serves).

It is one more reward column: weighted by ``loss.reward_weights`` and normalised like any local
reward. Images travel as 8-bit (``[B, C, H, W]`` in ``[0, 1]`` rounded to uint8, as a saved image),
so the server scores exactly what a local reward would score on the 8-bit image. Options ride in
the URL's query, e.g. ``remote:http://gpu2:8000/pickscore?timeout=120&retries=6``:

- ``timeout`` (seconds per request, default 60), ``retries`` (extra tries after a refused or timed
  out connection or a 502/503/504, default 4), ``backoff`` (seconds before the first retry, doubled
  each time, default 0.5), ``batch`` (most images per request, default 256).

The bearer token comes from the ``TREEGRPO_REWARD_TOKEN`` environment variable, never the config
(configs are saved with every checkpoint). A server that stays down, or answers anything but one
finite score per image, raises :class:`RemoteRewardError` naming the URL: never a made-up score.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from treegrpo.errors import TreegrpoError
from treegrpo.rewards.base import check_batch

PREFIX = "remote:"
TOKEN_ENV = "TREEGRPO_REWARD_TOKEN"
TENSOR_TYPE = "application/x-uint8-tensor"
RETRIED_STATUS = (502, 503, 504)


class RemoteRewardError(TreegrpoError, RuntimeError):
    """A remote reward that could not be scored: the server is down, refused the request, or answered wrongly."""


class RemoteNameError(TreegrpoError, ValueError):
    """A malformed ``remote:`` reward name."""


@dataclass(frozen=True)
class RemoteOptions:
    """Per-request timeout and retry policy (module docstring)."""

    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.5
    batch: int = 256


def parse_remote_name(name: str, field: str = "model.rewards") -> tuple[str, RemoteOptions]:
    """``remote:http://HOST:PORT/NAME[?options]`` to the URL to POST to and its options; a one-line
    error naming ``field`` for anything else."""
    url = name.removeprefix(PREFIX)
    example = "remote:http://127.0.0.1:8000/pickscore"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.path.strip("/"):
        raise RemoteNameError(f"{field}: {name!r} is not remote:http://HOST:PORT/NAME (e.g. {example})")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise RemoteNameError(f"{field}: {name!r} has a bad port; expected e.g. {example}") from None
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    known = {"timeout": float, "retries": int, "backoff": float, "batch": int}
    values = {}
    for key, given in query.items():
        if key not in known:
            raise RemoteNameError(f"{field}: {name!r} has unknown option {key!r}; expected {sorted(known)}")
        try:
            value = known[key](given[-1])
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0 or (key in ("timeout", "batch") and value <= 0):
            raise RemoteNameError(f"{field}: {name!r} option {key}={given[-1]!r}: expected a "
                                  f"{'positive' if key in ('timeout', 'batch') else 'non-negative'} "
                                  f"{known[key].__name__}")
        values[key] = value
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), RemoteOptions(**values)


def to_uint8(images: Tensor) -> Tensor:
    """``[B, C, H, W]`` in ``[0, 1]`` to the uint8 image a sampler would save, on the CPU."""
    if images.dtype == torch.uint8:
        return images.cpu().contiguous()
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()


def encode_request(images: Tensor, prompts: Sequence[str]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one raw uint8 request (:mod:`treegrpo.rewards.serve`'s protocol)."""
    head = json.dumps(list(prompts)).encode("utf-8")
    body = head + to_uint8(images).numpy().tobytes()
    headers = {"Content-Type": TENSOR_TYPE, "X-Shape": ",".join(map(str, images.shape)),
               "X-Prompts-Length": str(len(head))}
    return body, headers


class RemoteReward:
    """``(images [B, C, H, W] in [0, 1], prompts) -> [B]`` scored by a ``treegrpo serve-reward`` server."""

    def __init__(self, url: str, options: RemoteOptions | None = None, *, token: str | None = None) -> None:
        self.url, self.options = url, options or RemoteOptions()
        self.name = PREFIX + url
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None

    @classmethod
    def from_name(cls, name: str, field: str = "model.rewards") -> RemoteReward:
        """The reward ``remote:URL`` (see :func:`parse_remote_name`)."""
        return cls(*parse_remote_name(name, field))

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name, channels=(1, 3))
        scores: list[float] = []
        step = self.options.batch
        for lo in range(0, images.shape[0], step):
            scores += self.post(images[lo:lo + step], list(prompts[lo:lo + step]))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def post(self, images: Tensor, prompts: list[str]) -> list[float]:
        """One request with retries: the ``len(prompts)`` finite scores the server sent, or an error."""
        body, headers = encode_request(images, prompts)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        tries = self.options.retries + 1
        reason = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.options.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    answer = response.read()
                break
            except urllib.error.HTTPError as error:
                message = " ".join(error.read().decode("utf-8", "replace").split())[:300]
                if error.code not in RETRIED_STATUS:
                    raise RemoteRewardError(f"remote reward {self.url}: HTTP {error.code}: {message or error.reason}"
                                            ) from None
                reason = f"HTTP {error.code}: {message or error.reason}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
                cause = getattr(error, "reason", error)
                reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        else:
            raise RemoteRewardError(f"remote reward {self.url}: no answer after {tries} tries over "
                                    f"{self._waited(tries):.1f}s of backoff ({reason}); is `treegrpo serve-reward` "
                                    "running there?")
        return self._scores(answer, len(prompts))

    def _waited(self, tries: int) -> float:
        return sum(self.options.backoff * 2 ** i for i in range(tries - 1))

    def _scores(self, answer: bytes, count: int) -> list[float]:
        try:
            scores = json.loads(answer)["scores"]
            values = [float(s) for s in scores]
        except (ValueError, KeyError, TypeError):
            raise RemoteRewardError(f"remote reward {self.url}: expected JSON {{\"scores\": [{count} numbers]}}, got "
                                    f"{answer[:100]!r}") from None
        if len(values) != count:
            raise RemoteRewardError(f"remote reward {self.url}: sent {count} images, got {len(values)} scores")
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise RemoteRewardError(f"remote reward {self.url}: score {bad} is {values[bad]}; refusing a non-finite "
                                    "reward")
        return values


__all__ = ["PREFIX", "TOKEN_ENV", "RemoteNameError", "RemoteOptions", "RemoteReward", "RemoteRewardError",
           "encode_request", "parse_remote_name", "to_uint8"]
