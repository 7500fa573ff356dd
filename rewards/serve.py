"""Any registered reward behind an HTTP server (``treegrpo serve-reward NAME``), as Flow-GRPO and
ddpo-pytorch serve theirs, so a reward with its own dependencies runs in its own environment or on
its own machine and training reads it with ``model.rewards=remote:http://HOST:PORT/NAME``
(:mod:`treegrpo.rewards.remote`).

Protocol (one reward per server, ``NAME`` its registry name):

- ``POST /NAME`` with ``Content-Type: application/x-uint8-tensor``: headers ``X-Shape: B,C,H,W``
  and ``X-Prompts-Length: n``; the body is ``n`` bytes of UTF-8 JSON (the list of ``B`` prompts)
  followed by the ``B*C*H*W`` bytes of the uint8 images, row-major. The client sends this.
- ``POST /NAME`` with ``Content-Type: application/json``: ``{"prompts": [...], "png": [base64 of an
  8-bit PNG, ...]}`` (grey or RGB; every image of a request the same size), for other languages.
- Answers ``200 {"scores": [B floats]}``; ``400`` (malformed, oversize, undecodable, a reward's
  own input error), ``401`` (``--token`` set and no matching ``Authorization: Bearer``), ``404``
  (another name), ``503`` (queue full: retry later), ``500`` (the reward failed): a one-line
  ``text/plain`` body. ``GET /health`` answers ``{"status": "ok", "reward": NAME, ...}`` without a token.

Requests wait in a bounded queue; one batcher takes the oldest, adds queued requests of the same
image shape until ``max_batch`` images or ``max_wait_ms`` since the first, scores them in one call on
a worker thread (the event loop keeps accepting) and answers each its own slice. A score depends
only on its own image and prompt, so batching never changes it. When a joined batch fails with an
input error, each request is scored alone so only the bad one gets the ``400``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import io
import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from treegrpo.errors import TreegrpoError, renamed_fields

INSTALL_HINT = "pip install -e '.[serve]'"
TENSOR_TYPE = "application/x-uint8-tensor"
TOKEN_ENV = "TREEGRPO_REWARD_TOKEN"
"""The environment variable holding the bearer token (kept out of configs, which are saved with checkpoints)."""


class MissingServeError(TreegrpoError, ImportError):
    """The ``serve`` extra (aiohttp) is not installed."""


class BadRequest(ValueError):
    """A request the server refuses with ``400`` and this one-line message."""


@dataclass
class ServeOptions:
    """How the server batches and what it accepts."""

    max_batch: int = 64
    """Most images scored in one reward call (a single larger request is scored alone)."""
    max_wait_ms: float = 10.0
    """How long the first queued request waits for others to join its batch."""
    max_queue: int = 64
    """Most requests waiting; one more is answered ``503``."""
    max_images: int = 1024
    """Most images in one request."""
    max_side: int = 4096
    """Largest image height or width."""
    max_bytes: int = 256 * 2**20
    """Largest request body."""
    token: str | None = None
    """When set, every scoring request needs ``Authorization: Bearer <token>``."""
    latency_ms: float = 0.0
    """Extra waiting added to every reward call: a stand-in for a slow model or network (benchmarks, tests)."""
    device: str = "cpu"
    """Where images are put before the reward sees them."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_images", "max_side", "max_bytes"):
            if int(getattr(self, name)) < 1:
                raise TreegrpoError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        for name in ("max_wait_ms", "latency_ms"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise TreegrpoError(f"--{name.replace('_', '-')}: expected a finite number >= 0, got {value}")


# ---------------------------------------------------------------- decoding requests
def _prompts(data: Any, count: int | None) -> list[str]:
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise BadRequest("prompts: expected a JSON list of strings")
    if count is not None and len(data) != count:
        raise BadRequest(f"prompts: expected {count} prompts (one per image), got {len(data)}")
    return data


def _check_shape(shape: Sequence[int], options: ServeOptions) -> None:
    b, c, h, w = shape
    if b < 1 or c not in (1, 3) or h < 1 or w < 1:
        raise BadRequest(f"X-Shape: expected B,C,H,W with B >= 1, C 1 or 3 and H, W >= 1, got {','.join(map(str, shape))}")
    if b > options.max_images:
        raise BadRequest(f"X-Shape: {b} images is more than --max-images {options.max_images}; send smaller batches")
    if max(h, w) > options.max_side:
        raise BadRequest(f"X-Shape: {h}x{w} images are larger than --max-side {options.max_side}")


def decode_tensor(body: bytes, shape_header: str | None, prompts_length: str | None,
                  options: ServeOptions) -> tuple[Tensor, list[str]]:
    """A raw uint8 request: ``[B, C, H, W]`` uint8 images and their ``B`` prompts (module docstring)."""
    try:
        shape = [int(part) for part in (shape_header or "").split(",")]
        if len(shape) != 4:
            raise ValueError
    except ValueError:
        raise BadRequest(f"X-Shape: expected four integers B,C,H,W, got {shape_header!r}") from None
    _check_shape(shape, options)
    try:
        n = int(prompts_length or "")
        if not 0 <= n <= len(body):
            raise ValueError
    except ValueError:
        raise BadRequest(f"X-Prompts-Length: expected the byte length of the prompts' JSON (at most the body's "
                         f"{len(body)} bytes), got {prompts_length!r}") from None
    try:
        prompts = _prompts(json.loads(body[:n].decode("utf-8")), shape[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"prompts: the first X-Prompts-Length bytes are not UTF-8 JSON ({error})") from None
    pixels = body[n:]
    expected = math.prod(shape)
    if len(pixels) != expected:
        raise BadRequest(f"body: shape {','.join(map(str, shape))} needs {expected} image bytes after the prompts, "
                         f"got {len(pixels)}")
    images = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(shape)  # [B, C, H, W]
    return images, prompts


def decode_png(image: str, index: int, options: ServeOptions) -> np.ndarray:
    """One base64 PNG to ``[C, H, W]`` uint8 (C = 1 for grey, 3 for RGB; alpha and palettes become RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(image, validate=True)
        with Image.open(io.BytesIO(data)) as png:
            if png.format != "PNG":
                raise BadRequest(f"png[{index}]: expected a PNG, got {png.format}")
            if max(png.size) > options.max_side:
                raise BadRequest(f"png[{index}]: {png.size[1]}x{png.size[0]} is larger than --max-side {options.max_side}")
            if png.mode not in ("L", "RGB"):
                if png.mode in ("I", "I;16", "F"):
                    raise BadRequest(f"png[{index}]: expected an 8-bit PNG, got mode {png.mode}")
                png = png.convert("RGB")
            array = np.asarray(png, dtype=np.uint8)
    except (binascii.Error, ValueError) as error:
        if isinstance(error, BadRequest):
            raise
        raise BadRequest(f"png[{index}]: not base64 ({error})") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise BadRequest(f"png[{index}]: cannot decode the image ({type(error).__name__})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # [C, H, W]


def decode_json(body: bytes, options: ServeOptions) -> tuple[Tensor, list[str]]:
    """A JSON request of base64 PNGs: ``[B, C, H, W]`` uint8 images and their prompts."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"body: not UTF-8 JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("png"), list) or not data["png"]:
        raise BadRequest('body: expected {"prompts": [...], "png": [base64 PNG, ...]} with at least one image')
    if len(data["png"]) > options.max_images:
        raise BadRequest(f"png: {len(data['png'])} images is more than --max-images {options.max_images}")
    prompts = _prompts(data.get("prompts"), len(data["png"]))
    arrays = [decode_png(image, i, options) if isinstance(image, str) else _not_a_string(i)
              for i, image in enumerate(data["png"])]
    if len({a.shape for a in arrays}) > 1:
        raise BadRequest(f"png: every image of a request must have one size and mode, got {sorted({a.shape for a in arrays})}")
    return torch.from_numpy(np.stack(arrays)), prompts  # [B, C, H, W]


def _not_a_string(index: int) -> np.ndarray:
    raise BadRequest(f"png[{index}]: expected a base64 string")


# ---------------------------------------------------------------- batching
@dataclass
class _Pending:
    images: Tensor  # [b, C, H, W] uint8
    prompts: list[str]
    future: asyncio.Future = field(repr=False)


class RewardServer:
    """The aiohttp application around one reward; :meth:`app` builds it, :func:`serve` runs it."""

    def __init__(self, name: str, reward: Any, options: ServeOptions | None = None) -> None:
        self.name, self.reward = name, reward
        self.options = options or ServeOptions()
        self.queue: asyncio.Queue[_Pending] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treegrpo-reward")
        self.served = {"requests": 0, "images": 0, "batches": 0}

    # -- scoring
    def score(self, images: Tensor, prompts: list[str]) -> list[float]:
        """The reward of uint8 ``[B, C, H, W]`` images, as a local reward sees them: floats in ``[0, 1]``."""
        if self.options.latency_ms:
            time.sleep(self.options.latency_ms / 1000)
        with torch.no_grad():
            scores = self.reward(images.to(self.options.device).float() / 255, prompts)
        return [float(s) for s in scores.detach().float().cpu().reshape(-1)]

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        carried: _Pending | None = None
        while True:
            first = carried or await self.queue.get()
            carried = None
            batch, count = [first], first.images.shape[0]
            deadline = loop.time() + self.options.max_wait_ms / 1000
            while count < self.options.max_batch:
                try:
                    item = self.queue.get_nowait() if loop.time() >= deadline else await asyncio.wait_for(
                        self.queue.get(), deadline - loop.time())
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if item.images.shape[1:] != first.images.shape[1:] or count + item.images.shape[0] > self.options.max_batch:
                    carried = item  # another image size, or too many: it starts the next batch
                    break
                batch.append(item)
                count += item.images.shape[0]
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        batch = [p for p in batch if not p.future.done()]  # a client that went away
        if not batch:
            return
        images = torch.cat([p.images for p in batch])  # [sum b, C, H, W]
        prompts = [prompt for p in batch for prompt in p.prompts]
        try:
            scores = await loop.run_in_executor(self.executor, self.score, images, prompts)
        except (ValueError, TypeError) as error:
            if len(batch) > 1:  # find the request at fault; the others are scored alone
                for p in batch:
                    await self._run([p])
                return
            _resolve(batch[0].future, error=BadRequest(f"{self.name}: {_one_line(error)}"))
            return
        except Exception as error:  # noqa: BLE001 -- the reward failed: a 500 naming it, never a made-up score
            for p in batch:
                _resolve(p.future, error=RuntimeError(f"{self.name} failed: {type(error).__name__}: {_one_line(error)}"))
            return
        self.served["batches"] += 1
        start = 0
        for p in batch:
            _resolve(p.future, result=scores[start:start + p.images.shape[0]])
            start += p.images.shape[0]

    # -- HTTP
    def app(self) -> Any:
        """The ``aiohttp.web.Application`` (routes, token check, batcher started with the app)."""
        web = _aiohttp_web()
        app = web.Application(client_max_size=self.options.max_bytes + 1)
        app.router.add_get("/health", self.health)
        app.router.add_post("/{name}", self.handle)

        async def start_batcher(app: Any) -> Any:
            self.queue = asyncio.Queue(self.options.max_queue)
            task = asyncio.create_task(self._batcher())
            yield
            task.cancel()
            self.executor.shutdown(wait=False, cancel_futures=True)

        app.cleanup_ctx.append(start_batcher)
        return app

    async def health(self, request: Any) -> Any:
        web = _aiohttp_web()
        queued = self.queue.qsize() if self.queue else 0
        return web.json_response({"status": "ok", "reward": self.name, "queued": queued,
                                  "max_batch": self.options.max_batch, "token": self.options.token is not None,
                                  **self.served})

    async def handle(self, request: Any) -> Any:
        web = _aiohttp_web()

        def refuse(status: int, message: str) -> Any:
            return web.Response(status=status, text=_one_line(message) + "\n", content_type="text/plain")

        if self.options.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.options.token}".encode()):
                return refuse(401, "Authorization: expected 'Bearer <token>' matching the server's --token")
        if request.match_info["name"] != self.name:
            return refuse(404, f"this server scores {self.name!r}; POST /{self.name}")
        if (request.content_length or 0) > self.options.max_bytes:
            return refuse(400, f"body: {request.content_length} bytes is more than --max-bytes {self.options.max_bytes}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return refuse(400, f"body: more than --max-bytes {self.options.max_bytes}")
        try:
            if request.content_type == TENSOR_TYPE:
                images, prompts = decode_tensor(body, request.headers.get("X-Shape"),
                                                request.headers.get("X-Prompts-Length"), self.options)
            elif request.content_type == "application/json":
                images, prompts = decode_json(body, self.options)
            else:
                raise BadRequest(f"Content-Type: expected {TENSOR_TYPE} or application/json, got "
                                 f"{request.content_type!r}")
        except BadRequest as error:
            return refuse(400, str(error))
        assert self.queue is not None
        pending = _Pending(images, prompts, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(pending)
        except asyncio.QueueFull:
            return refuse(503, f"queue full ({self.options.max_queue} requests waiting); retry later")
        try:
            scores = await pending.future
        except BadRequest as error:
            return refuse(400, str(error))
        except RuntimeError as error:
            return refuse(500, str(error))
        finally:
            pending.future.cancel()  # no-op when resolved; a dropped client's request is skipped
        self.served["requests"] += 1
        self.served["images"] += len(scores)
        return web.json_response({"scores": scores})


def _resolve(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _aiohttp_web() -> Any:
    try:
        from aiohttp import web
    except ImportError as error:
        raise MissingServeError(f"serve-reward: needs aiohttp ({error}); install it with {INSTALL_HINT}") from None
    return web


def serve(name: str, reward: Any, options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``reward`` as ``name`` until interrupted; prints one line with the address once listening
    (``port=0`` picks a free port, whose number that line gives)."""
    web = _aiohttp_web()

    async def run() -> None:
        runner = web.AppRunner(RewardServer(name, reward, options).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"serving reward {name!r} on http://{shown}:{bound}/{name} (client: "
              f"--model.rewards remote:http://{shown}:{bound}/{name})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as error:
        raise TreegrpoError(f"--port: cannot listen on {host}:{port} ({error.strerror or error})") from None


# ---------------------------------------------------------------- the `treegrpo serve-reward` command
def add_serve_reward_parser(commands: Any) -> Any:
    """Add ``serve-reward NAME`` to the ``treegrpo`` subcommands (``commands``: argparse's subparsers)."""
    parser = commands.add_parser("serve-reward", help="serve a registered reward over HTTP for "
                                 "--model.rewards remote:http://HOST:PORT/NAME (needs the serve extra)")
    defaults = ServeOptions()
    parser.add_argument("name", metavar="NAME", help="the reward's registry name (e.g. ocr, pickscore, classifier)")
    parser.add_argument("--kind", default=None, help="model kind whose reward NAME is (default: any kind)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed; default: 8000)")
    parser.add_argument("--reward-dir", default=None, help="reward weights folder (default: the reward's own)")
    parser.add_argument("--device", default=defaults.device, help="device the reward runs on (default: cpu)")
    parser.add_argument("--token", default=None,
                        help="require 'Authorization: Bearer TOKEN' (clients: TREEGRPO_REWARD_TOKEN); "
                             "default: the TREEGRPO_REWARD_TOKEN environment variable, else none")
    for name in ("max_batch", "max_wait_ms", "max_queue", "max_images", "max_side", "max_bytes", "latency_ms"):
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{_FIELD_HELP[name]} (default: {default})")
    return parser


_FIELD_HELP = {
    "max_batch": "most images per reward call",
    "max_wait_ms": "milliseconds a request waits for others to join its batch",
    "max_queue": "most waiting requests; more are answered 503",
    "max_images": "most images per request",
    "max_side": "largest image height or width",
    "max_bytes": "largest request body in bytes",
    "latency_ms": "milliseconds of waiting added to each reward call (benchmarks, tests)",
}


def serve_reward_command(config: Any, args: argparse.Namespace) -> int:
    """``treegrpo serve-reward``: build the reward ``args.name`` and serve it until interrupted."""
    import os

    from treegrpo.rewards.registry import build_reward

    _aiohttp_web()  # a missing extra is reported before a large reward loads
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    options = ServeOptions(**{name: getattr(args, name) for name in _FIELD_HELP}, token=token, device=args.device)
    with renamed_fields({"model.rewards": "serve-reward NAME"}):
        reward = build_reward(args.name, kind=args.kind, root=args.reward_dir, device=args.device)
    serve(args.name, reward, options, host=args.host, port=args.port)
    return 0


__all__ = [
    "INSTALL_HINT",
    "TENSOR_TYPE",
    "TOKEN_ENV",
    "BadRequest",
    "MissingServeError",
    "RewardServer",
    "ServeOptions",
    "add_serve_reward_parser",
    "decode_json",
    "decode_png",
    "decode_tensor",
    "serve",
    "serve_reward_command",
]
