"""The ``ocr`` reward: target extraction, the edit distance against an independent recursion, the
score formula on hand-computed cases, the prompt-file loader, and real OCR on text rendered with PIL."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from treegrpo.problems.ocr import load_ocr_prompts
from treegrpo.rewards import build_reward, rewards_for
from treegrpo.rewards.ocr import (
    MissingOcrError,
    OcrReward,
    OcrTargetError,
    levenshtein,
    ocr_score,
    ocr_target,
)

HAS_RAPIDOCR = importlib.util.find_spec("rapidocr_onnxruntime") is not None
needs_rapidocr = pytest.mark.skipif(not HAS_RAPIDOCR, reason="rapidocr-onnxruntime is not installed "
                                    "(pip install -e '.[ocr]'); CI installs the extra")


# ---------------------------------------------------------------- targets and the formula
@pytest.mark.parametrize(("prompt", "target"), [
    ('A neon sign that says "Open 24 Hours" above a door', "Open 24 Hours"),
    ('"first" and "second"', "first"),            # the first quoted span
    ('a banner reading "unclosed text', "unclosed text"),  # unclosed: to the end, as split('"')[1]
    ('""x"', None),                               # empty first span
    ("no quotes at all", None),
    ('spaces only "   "', None),
])
def test_ocr_target_is_the_first_quoted_span(prompt, target):
    if target is None:
        with pytest.raises(OcrTargetError, match="^ocr: prompt"):
            ocr_target(prompt)
    else:
        assert ocr_target(prompt) == target


def _reference_distance(a: str, b: str) -> int:
    """The textbook recursion, memoised: independent of the two-row programme under test."""
    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
    return d(len(a), len(b))


def test_levenshtein_matches_the_recursion():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = ("".join(rng.choice(list("abc"), size=rng.integers(0, 9))) for _ in range(2))
        assert levenshtein(a, b) == _reference_distance(a, b) == levenshtein(b, a), (a, b)
    for a, b in itertools.product(["", "a", "ab", "ba", "abc"], repeat=2):
        assert levenshtein(a, b) == _reference_distance(a, b)


@pytest.mark.parametrize(("recognised", "target", "score"), [
    ("Hello World", "hello world", 1.0),       # spaces and case ignored
    ("HelloWorld!!", "Hello World", 1.0),      # the target inside the text read: distance 0
    ("Helo World", "Hello World", 0.9),        # one deletion in 10 characters
    ("", "abcd", 0.0),                         # nothing read
    ("zzzzzzzzzzzz", "abcd", 0.0),             # the distance is capped at the target's length
    ("abxd", "abcd", 0.75),
])
def test_ocr_score_is_one_minus_the_capped_normalised_distance(recognised, target, score):
    assert ocr_score(recognised, target) == pytest.approx(score)


class _FixedReader:
    """An engine stand-in returning rapidocr's result shape: ``([[box, text, score], ...] | None, times)``."""

    def __init__(self, texts):
        self.texts, self.calls = list(texts), 0

    def __call__(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        text = self.texts[self.calls]
        self.calls += 1
        return ([[None, text, 0.9]] if text else None), None


def test_reward_scores_each_image_against_its_prompt_on_the_images_device():
    reward = OcrReward(engine=_FixedReader(["STOP", "", "Sale 50%"]))
    images = torch.rand(3, 3, 8, 8)
    scores = reward(images, ['a "stop" sign', 'a "cat"', 'a poster "SALE 40%"'])
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([1.0, 0.0, 6 / 7])  # sale40%: 1 of 7 off


def test_reward_refuses_a_prompt_without_quotes_before_reading_any_image():
    engine = _FixedReader(["x", "y"])
    with pytest.raises(OcrTargetError, match="quotes no text"):
        OcrReward(engine=engine)(torch.rand(2, 3, 8, 8), ['"ok"', "no quotes"])
    assert engine.calls == 0


def test_missing_extra_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # import raises ImportError
    with pytest.raises(MissingOcrError, match=r"pip install -e '\.\[ocr\]'") as info:
        build_reward("ocr", kind="sd3")
    assert "\n" not in str(info.value)


def test_registered_for_text_to_image_not_digits():
    assert all("ocr" in rewards_for(kind) for kind in ("sd3", "flux", "sd15"))
    assert "ocr" not in rewards_for("digits")


def test_prompt_loader_reads_flow_grpo_layout(tmp_path: Path):
    (tmp_path / "train.txt").write_text('A sign "Open"\n\nA mug with "Best Dad" printed on it\n')
    (tmp_path / "test.txt").write_text('A cake reading "Happy Birthday"\n')
    assert load_ocr_prompts(tmp_path, "train") == ['A sign "Open"', 'A mug with "Best Dad" printed on it']
    assert load_ocr_prompts(tmp_path / "test.txt", None) == ['A cake reading "Happy Birthday"']
    (tmp_path / "bad.txt").write_text('A sign "Open"\nA plain prompt\n')
    with pytest.raises(OcrTargetError, match=r"bad\.txt: prompt 2 .*quotes no text"):
        load_ocr_prompts(tmp_path / "bad.txt", None)


# ---------------------------------------------------------------- real OCR on rendered text
def _font(size: int = 48):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"):
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)  # a TrueType font in Pillow >= 10.1


def render(text: str, width: int = 512, height: int = 128) -> torch.Tensor:
    """``text`` in black on white, ``[3, H, W]`` in ``[0, 1]``."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((20, 30), text, fill="black", font=_font())
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def ocr_reward():
    return build_reward("ocr", kind="sd3")


@needs_rapidocr
def test_rendered_text_scores_high_wrong_text_low_blank_zero(ocr_reward):
    images = torch.stack([render("Hello World"), render("Spring 2024"), render("Banana"), torch.ones(3, 128, 512)])
    prompts = ['A sign that says "Hello World"', 'a runway backdrop reading "spring 2024"',
               'a sign that says "Hello World"', 'a sign "Hello World"']
    scores = ocr_reward(images, prompts).tolist()
    print("ocr scores (right, right, wrong, blank):", [round(s, 3) for s in scores])
    assert scores[0] >= 0.9 and scores[1] >= 0.9
    assert scores[2] <= 0.2
    assert scores[3] == 0.0


@needs_rapidocr
def test_uint8_and_grey_images_read_alike(ocr_reward):
    image = render("TreeGRPO")
    as_uint8 = (image * 255).round().to(torch.uint8)[None]
    grey = image.mean(0, keepdim=True)[None]
    prompt = ['a logo "TreeGRPO"']
    assert ocr_reward(as_uint8, prompt).item() >= 0.9
    assert ocr_reward(grey, prompt).item() >= 0.9
