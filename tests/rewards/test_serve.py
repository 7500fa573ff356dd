"""``treegrpo serve-reward`` and the ``remote:`` client against a real server on localhost, started
in a subprocess: the scores equal the local reward's on the 8-bit image, requests are batched,
bad input is a one-line 400, the token a 401, a full queue a 503 the client retries, and a server
that goes away is a one-line error naming the URL (never a made-up score) in a 2-iteration digits run."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from treegrpo.rewards import build_reward, check_reward_names
from treegrpo.rewards.remote import (
    RemoteNameError,
    RemoteReward,
    RemoteRewardError,
    encode_request,
    parse_remote_name,
)

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[serve]')")

import treegrpo.embedded  # noqa: F401  (registers the digits rewards)

PROMPTS = [f"a photo of the digit {i % 10}" for i in range(16)]
TOKEN = "s3cret"


class Server:
    """``python -m treegrpo serve-reward NAME --port 0 ...`` in a subprocess; ``url`` once it listens."""

    def __init__(self, *args: str, name: str = "classifier", env: dict | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "treegrpo", "serve-reward", name, "--kind", "digits", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()  # blocks until it listens (or exits)
        if "serving reward" not in line:
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.base = line.split(" on ")[1].split()[0].rsplit("/", 1)[0]
        self.url = f"{self.base}/{name}"

    def health(self) -> dict:
        with urllib.request.urlopen(self.base + "/health", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server():
    s = Server("--token", TOKEN, "--max-images", "64", "--max-side", "256", "--max-wait-ms", "50")
    yield s
    s.stop()


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _post(url: str, body: bytes, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _authorised(headers: dict) -> dict:
    return {**headers, "Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------- names and validation (no server)
def test_remote_names_pass_reward_validation_for_every_kind():
    for kind in ("digits", "sd3", "toy2d"):
        check_reward_names(["remote:http://127.0.0.1:8000/classifier"], "model.rewards", kind=kind)
    url, options = parse_remote_name("remote:http://gpu2:9000/pickscore?timeout=5&retries=1&backoff=0.1")
    assert url == "http://gpu2:9000/pickscore" and (options.timeout, options.retries, options.backoff) == (5, 1, 0.1)
    for bad in ("remote:gpu2:9000/x", "remote:http://gpu2:9000", "remote:http://h:1/x?retries=-1",
                "remote:http://h:1/x?speed=2", "remote:http://h:port/x"):
        with pytest.raises(RemoteNameError, match="^model.rewards: "):
            check_reward_names([bad], "model.rewards", kind="digits")


def test_config_accepts_a_remote_reward():
    from treegrpo.config import Config

    config = Config().override(["model.rewards=remote:http://127.0.0.1:8000/classifier,aesthetic_proxy",
                                "loss.reward_weights=0.7,0.3"])
    assert config.model.rewards == ["remote:http://127.0.0.1:8000/classifier", "aesthetic_proxy"]


def test_a_down_server_is_one_line_naming_the_url_after_retries():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = build_reward(f"remote:http://127.0.0.1:{port}/classifier?retries=2&backoff=0.01&timeout=2")
    with pytest.raises(RemoteRewardError, match=rf"^remote reward http://127.0.0.1:{port}/classifier: no answer "
                                                r"after 3 tries .*Connection") as info:
        reward(_images(2), PROMPTS[:2])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- against the server
def test_remote_scores_equal_local_scores_of_the_8_bit_image(server):
    images = _images()
    remote = RemoteReward.from_name(f"remote:{server.url}")
    remote.token = TOKEN
    local = build_reward("classifier", kind="digits")
    eight_bit = (images * 255).round() / 255
    assert torch.equal(remote(images, PROMPTS), local(eight_bit, PROMPTS))


def test_png_requests_score_like_tensors(server):
    images = _images(3)
    pixels = (images * 255).round().to(torch.uint8)
    pngs = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy(), mode="L").save(buffer, format="PNG")
        pngs.append(base64.b64encode(buffer.getvalue()).decode())
    status, text = _post(server.url, json.dumps({"prompts": PROMPTS[:3], "png": pngs}).encode(),
                         _authorised({"Content-Type": "application/json"}))
    assert status == 200, text
    body, headers = encode_request(images, PROMPTS[:3])
    status, tensor_text = _post(server.url, body, _authorised(headers))
    assert json.loads(text)["scores"] == json.loads(tensor_text)["scores"]


def test_concurrent_requests_are_batched_and_answered_their_own_slice(server):
    before = server.health()
    reward = RemoteReward(server.url, token=TOKEN)
    local = build_reward("classifier", kind="digits")
    batches = [_images(2, seed) for seed in range(8)]
    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(lambda x: reward(x, PROMPTS[:2]), batches))
    for images, got in zip(batches, scores, strict=True):
        # another batch size: the same score up to float rounding of the batched kernels
        torch.testing.assert_close(got, local((images * 255).round() / 255, PROMPTS[:2]), rtol=1e-5, atol=1e-7)
    after = server.health()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # the 50 ms window joined some


@pytest.mark.parametrize(("change", "message"), [
    ({"X-Shape": "16,2,16,16"}, "X-Shape: expected B,C,H,W with B >= 1, C 1 or 3"),
    ({"X-Shape": "16,1,16"}, "X-Shape: expected four integers"),
    ({"X-Shape": "16,1,16,15"}, "body: shape 16,1,16,15 needs 3840 image bytes"),
    ({"X-Shape": "65,1,16,16"}, "X-Shape: 65 images is more than --max-images 64"),
    ({"X-Shape": "1,1,300,16"}, "X-Shape: 300x16 images are larger than --max-side 256"),
    ({"X-Prompts-Length": "3"}, "prompts: the first X-Prompts-Length bytes are not UTF-8 JSON"),
    ({"Content-Type": "image/png"}, "Content-Type: expected application/x-uint8-tensor or application/json"),
])
def test_bad_tensor_requests_are_a_one_line_400(server, change, message):
    body, headers = encode_request(_images(), PROMPTS)
    status, text = _post(server.url, body, _authorised({**headers, **change}))
    assert status == 400 and text.startswith(message) and text.count("\n") == 1, text


@pytest.mark.parametrize(("payload", "message"), [
    ({"prompts": ["a photo of the digit 1"], "png": ["bm90IGEgcG5n"]}, "png[0]: cannot decode the image"),
    ({"prompts": ["a photo of the digit 1"], "png": ["@@@"]}, "png[0]: not base64"),
    ({"prompts": [], "png": ["bm90IGEgcG5n"]}, "prompts: expected 1 prompts (one per image), got 0"),
    ({"prompts": ["x"]}, 'body: expected {"prompts"'),
])
def test_bad_png_requests_are_a_one_line_400(server, payload, message):
    status, text = _post(server.url, json.dumps(payload).encode(), _authorised({"Content-Type": "application/json"}))
    assert status == 400 and text.startswith(message) and text.count("\n") == 1, text


def test_a_reward_input_error_is_a_400_for_that_request_only(server):
    body, headers = encode_request(_images(1), ["a photo of no digit"])  # the classifier reads no digit
    status, text = _post(server.url, body, _authorised(headers))
    assert status == 400 and text.startswith("classifier: "), text


def test_the_token_is_required_but_health_is_open(server):
    body, headers = encode_request(_images(2), PROMPTS[:2])
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        status, text = _post(server.url, body, {**headers, **auth})
        assert status == 401 and text.startswith("Authorization: expected 'Bearer <token>'"), text
    reward = RemoteReward(server.url, token="wrong")
    with pytest.raises(RemoteRewardError, match="HTTP 401"):
        reward(_images(2), PROMPTS[:2])
    assert server.health()["status"] == "ok"
    status, text = _post(server.base + "/judge", body, _authorised(headers))
    assert status == 404 and "POST /classifier" in text


def test_a_full_queue_answers_503_and_the_client_retries():
    slow = Server("--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0", "--latency-ms", "150")
    try:
        body, headers = encode_request(_images(1), PROMPTS[:1])
        with ThreadPoolExecutor(6) as pool:
            statuses = [status for status, _ in pool.map(lambda _: _post(slow.url, body, headers), range(6))]
        assert 503 in statuses and 200 in statuses, statuses
        reward = RemoteReward.from_name(f"remote:{slow.url}?retries=8&backoff=0.2")
        with ThreadPoolExecutor(4) as pool:
            scores = list(pool.map(lambda seed: reward(_images(1, seed), PROMPTS[:1]), range(4)))
        assert all(s.shape == (1,) and torch.isfinite(s).all() for s in scores)
    finally:
        slow.stop()


def test_cli_serve_reward_starts():
    """``treegrpo serve-reward`` (the CLI's subcommand) smoke test."""
    process = subprocess.Popen([sys.executable, "-m", "treegrpo", "serve-reward", "classifier", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving reward 'classifier' on http://127.0.0.1:" in line, process.stderr.read()[-2000:]
        base = line.split(" on ")[1].split()[0].rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/health", timeout=10) as response:
            assert json.loads(response.read())["reward"] == "classifier"
    finally:
        process.kill()
        process.wait()


def test_cli_names_an_unknown_served_reward_in_one_line(capsys):
    from treegrpo.cli import main

    assert main(["serve-reward", "nosuch", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("treegrpo: error: serve-reward NAME: unknown reward 'nosuch'") and "\n" not in error


# ---------------------------------------------------------------- training against a served reward
TRAIN = ["--loss.reward_weights", "1", "--sampling.prompts_per_iteration", "2", "--sampling.num_steps", "4",
         "--sampling.depth", "2", "--sampling.branching", "2", "--model.eval_count", "2", "--sampling.chunks", "2"]


def _train(url: str, out: Path, iterations: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "treegrpo", "train", "--model.rewards", f"remote:{url}", *TRAIN,
                           "--train.iterations", str(iterations), "--train.out_dir", str(out)],
                          check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TREEGRPO_REWARD_TOKEN": TOKEN})


def test_two_digits_iterations_train_on_a_served_classifier(server, tmp_path):
    before = server.health()["images"]
    run = _train(server.url, tmp_path / "run", 2)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(float(summary["training"]["final_training_reward"]))
    assert server.health()["images"] > before  # the rewards came from the server


def test_a_server_killed_between_and_during_calls_raises_never_scores():
    doomed = Server("--latency-ms", "1000")
    reward = RemoteReward.from_name(f"remote:{doomed.url}?retries=1&backoff=0.05&timeout=10")
    assert reward(_images(2), PROMPTS[:2]).shape == (2,)
    pending = ThreadPoolExecutor(1).submit(reward, _images(2), PROMPTS[:2])
    time.sleep(0.5)  # the request is in flight, waiting on the reward
    doomed.process.kill()
    doomed.process.wait()
    for call in (pending.result, lambda: reward(_images(2), PROMPTS[:2])):
        with pytest.raises(RemoteRewardError, match=rf"^remote reward {doomed.url}: no answer after 2 tries"):
            call()


@pytest.mark.slow  # ~30 s here: a training run in a subprocess
def test_killing_the_server_mid_run_is_a_one_line_error_never_a_reward(tmp_path):
    doomed = Server("--latency-ms", "1500")
    run = subprocess.Popen([sys.executable, "-m", "treegrpo", "train", "--model.rewards",
                            f"remote:{doomed.url}?retries=2&backoff=0.2&timeout=10", *TRAIN,
                            "--train.iterations", "20", "--train.out_dir", str(tmp_path / "run")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            try:
                if doomed.health()["requests"] >= 1:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        doomed.process.kill()  # mid-run: the next (or in-flight) scoring request finds no server
        _, stderr = run.communicate(timeout=300)
    finally:
        doomed.process.kill()
        if run.poll() is None:
            run.kill()
    errors = [line for line in stderr.splitlines() if line.startswith("treegrpo: error:")]
    assert run.returncode == 2 and len(errors) == 1, stderr[-2000:]
    assert f"remote reward {doomed.url}: " in errors[0] and "Traceback" not in stderr
    assert not (tmp_path / "run" / "summary.json").exists()


# ---------------------------------------------------------------- load (no timing asserts)
def test_load_200_requests_reports_throughput_and_latency(server):
    body, headers = encode_request(_images(4), PROMPTS[:4])
    headers = _authorised(headers)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_):
        start = time.perf_counter()
        status, _ = _post(server.url, body, headers)
        with lock:
            latencies.append(time.perf_counter() - start)
        return status

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(200)))
    wall = time.perf_counter() - start
    assert statuses == [200] * 200
    cuts = statistics.quantiles(latencies, n=100)
    print(f"\nload: 200 requests x 4 images, 16 clients: {200 / wall:.0f} requests/s, "
          f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms")
    assert np.isfinite(wall)
