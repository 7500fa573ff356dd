"""Each scorer's preprocessing pinned to its official definition (treegrpo.testing.official_preprocessing: PIL,
torchvision, transformers) at square, non-square and half-pixel-offset sizes, for 8-bit and float
images; and the torch reproduction of Pillow's 8-bit bicubic resize against Pillow itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms
from transformers.image_transforms import center_crop, get_resize_output_image_size

from treegrpo.rewards.pil_resize import pil_bicubic_resize, vertical_first
from treegrpo.rewards.preprocess import (
    Preprocess,
    clip_processor_preprocess,
    crop_offset,
    hpsv2_preprocess,
    longer_side_size,
    shorter_side_size,
    torchvision_clip_preprocess,
)
from treegrpo.testing import official_preprocessing as official

STD_LEVELS = torch.tensor(official.OPENAI_STD).view(1, 3, 1, 1) * 255
# (H, W): square, the two non-square SD3 shapes, and half-pixel crop offsets at 224: 227 and 229 px long
# sides (offsets 1.5 and 2.5: floor 1 and 2, torchvision's round 2 and 2) and 520x512, whose long side
# resizes to int(227.5) = 227; 768x512 also pads hpsv2's short side by an odd 75 pixels.
SHAPES = [(512, 512), (768, 512), (512, 640), (227, 224), (224, 229), (520, 512)]


def _smooth(height: int, width: int, seed: int, batch: int = 2) -> torch.Tensor:
    """Smooth random float images in [0, 1] (photographs are smooth; noise is the worst case)."""
    coarse = torch.rand(batch, 3, max(height // 32, 2), max(width // 32, 2), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)


def _levels_apart(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|difference| of normalised pixels in 8-bit levels (the normalisation's std undone)."""
    return (ours - reference).abs() * STD_LEVELS


PIPELINES = {
    "hpsv2": (hpsv2_preprocess(224), official.hpsv2_transform(224)),
    "torchvision": (torchvision_clip_preprocess(224), official.torchvision_transform(224)),
    "clip_processor": (clip_processor_preprocess({"size": {"shortest_edge": 224}, "crop_size": 224}, 224),
                       official.clip_image_processor(224)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("inputs", ["uint8", "float", "noise"])
def test_exact_mode_equals_the_official_pipeline(pipeline, shape, inputs):
    """Exact mode on the image the official code receives (the 8-bit image) gives its pixels; float
    inputs are quantised first, as saving them to PNG or handing them over as PIL images does."""
    ours, reference = PIPELINES[pipeline]
    images = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(1)) if inputs == "noise" else \
        _smooth(*shape, seed=0)
    if inputs == "uint8":
        images = (images * 255).round() / 255
    expected = official.apply(reference, images)
    pixels = ours(images, exact=True)
    assert pixels.shape == expected.shape == (2, 3, 224, 224)
    assert _levels_apart(pixels, expected).max() < 1e-3  # float rounding only


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_fast_mode_is_within_its_documented_tolerance(pipeline, shape):
    """The training mode skips 8-bit rounding: on smooth float images it is within 3 levels of the
    official pixels (mean under 0.35); hpsv2's, which has no Pillow resize, within 1 level."""
    ours, reference = PIPELINES[pipeline]
    images = _smooth(*shape, seed=2)
    apart = _levels_apart(ours(images), official.apply(reference, images))
    assert apart.max() < (1.0 if pipeline == "hpsv2" else 3.0) and apart.mean() < 0.35


def test_hpsv2_resizes_the_longer_side_and_pads_centred():
    images = torch.ones(1, 3, 768, 512)
    pixels = hpsv2_preprocess(224)(images, exact=True)
    black = torch.tensor([-m / s for m, s in zip(official.OPENAI_MEAN, official.OPENAI_STD)]).view(3, 1)
    # 512 * 224 / 768 = 149.33 -> 149 columns of image, 75 of padding: 37 left, 38 right.
    torch.testing.assert_close(pixels[0, :, :, :37].flatten(1).amax(1), black.flatten())
    torch.testing.assert_close(pixels[0, :, :, 186:].flatten(1).amin(1), black.flatten())
    assert (pixels[0, :, :, 37:186] > black.view(3, 1, 1)).all()


@pytest.mark.parametrize(("shape", "size"), [((512, 512), 224), ((768, 512), 224), ((512, 640), 224), ((227, 224), 224),
                                             ((520, 512), 224), ((245, 224), 32), ((1000, 3), 7), ((3, 1000), 224)])
def test_output_sizes_are_torchvisions_and_transformers(shape, size):
    height, width = shape
    pil = Image.new("L", (width, height))
    resized = transforms.Resize(size, interpolation=transforms.InterpolationMode.NEAREST)(pil)
    assert shorter_side_size(height, width, size) == (resized.height, resized.width)
    array = np.zeros((height, width, 1), dtype=np.uint8)
    assert shorter_side_size(height, width, size) == get_resize_output_image_size(
        array, size, default_to_square=False, input_data_format="channels_last")


def test_longer_side_size_is_hpsv2s_rounding():
    assert longer_side_size(768, 512, 224) == (224, 149)  # 149.33
    assert longer_side_size(512, 640, 224) == (179, 224)  # 179.2
    assert longer_side_size(1000, 12, 224) == (224, 3)  # 2.688
    assert longer_side_size(896, 2, 224) == (224, 0)  # 0.5 rounds to even, as Python's round does


@pytest.mark.parametrize("length", [224, 225, 226, 227, 228, 229, 231, 300])
def test_crop_offsets_are_torchvisions_and_transformers(length):
    index = np.arange(length, dtype=np.int32)[:, None].repeat(3, 1)  # row i holds i
    cropped = transforms.CenterCrop((224, 3))(Image.fromarray(index))  # a 32-bit "I" image
    assert crop_offset(length, 224, "half_even") == np.asarray(cropped)[0, 0]
    hf = center_crop(index[None], (224, 3), input_data_format="channels_first")
    assert crop_offset(length, 224, "floor") == hf[0, 0, 0]


SIZES = [((512, 512), (224, 224)), ((768, 512), (336, 224)), ((512, 640), (224, 280)), ((227, 224), (224, 221)),
         ((224, 227), (224, 227)), ((48, 40), (38, 32)), ((1024, 1024), (224, 224)), ((90, 100), (270, 300)),
         ((31, 17), (5, 3)), ((7, 9), (224, 224))]


@pytest.mark.parametrize(("shape", "size"), SIZES, ids=lambda v: f"{v[0]}x{v[1]}")
@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_pil_bicubic_resize_matches_pillow(shape, size, content, record_property):
    """Two rounded passes in torch against ``Image.resize(BICUBIC)``: measured bit-exact (max 0 levels,
    fraction exact 1.0); the requirement is at most 1 level."""
    generator = torch.Generator().manual_seed(3)
    if content == "noise":
        levels = torch.randint(0, 256, (2, 3, *shape), generator=generator).float()
    else:
        levels = (_smooth(*shape, seed=4) * 255).round()
    apart = (pil_bicubic_resize(levels, size) - official.pil_resize(levels, size)).abs()
    record_property("max_levels", apart.max().item())
    record_property("fraction_exact", (apart == 0).float().mean().item())
    assert apart.max() <= 1 and (apart == 0).float().mean() >= 0.999


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_pil_bicubic_resize_matches_pillow_at_any_size(height, width, out_height, out_width, seed):
    levels = torch.randint(0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(seed)).float()
    apart = (pil_bicubic_resize(levels, (out_height, out_width)) - official.pil_resize(levels, (out_height, out_width)))
    assert apart.abs().max() <= 1


def test_pass_order_follows_the_pillow_version():
    """Pillow 13 resizes vertically first when the height loses more than twice the width's pixels;
    12.2 and 12.3 only for images over 100 times as tall as wide; older Pillows never."""
    assert vertical_first((1024, 448), (512, 224), (13, 0))  # 512 > 2 * 224
    assert not vertical_first((768, 512), (336, 224), (13, 0))  # 432 < 2 * 288
    assert not vertical_first((1024, 448), (512, 224), (12, 3))
    assert vertical_first((20000, 100), (448, 2), (12, 2)) and not vertical_first((20000, 100), (448, 2), (12, 1))
    levels = torch.randint(0, 256, (1, 3, 1024, 448), generator=torch.Generator().manual_seed(6)).float()
    assert not torch.equal(pil_bicubic_resize(levels, (512, 224), (13, 0)), pil_bicubic_resize(levels, (512, 224), (12, 1)))


def test_pil_bicubic_resize_keeps_dtype_device_and_leading_dims():
    levels = torch.randint(0, 256, (2, 2, 3, 20, 30), dtype=torch.uint8)
    out = pil_bicubic_resize(levels, (10, 12))
    assert out.shape == (2, 2, 3, 10, 12) and out.dtype == torch.float32 and out.device == levels.device
    assert torch.equal(pil_bicubic_resize(levels, (20, 30)), levels.float())  # same size: untouched, as Pillow


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_exact_mode_on_cuda_equals_cpu():
    images = _smooth(768, 512, seed=5)
    for ours, _ in PIPELINES.values():
        on_gpu = ours(images.cuda(), exact=True)
        assert on_gpu.is_cuda
        assert _levels_apart(on_gpu.cpu(), ours(images, exact=True)).max() < 1e-3


@pytest.mark.parametrize(("options", "message"), [
    ({"fit": "stretch"}, r"Preprocess.fit: got 'stretch'; expected one of \['crop', 'pad'\]"),
    ({"crop_rounding": "ceil"}, r"Preprocess.crop_rounding: got 'ceil'; expected one of \['half_even', 'floor'\]"),
    ({"resampler": "cv2"}, r"Preprocess.resampler: got 'cv2'; expected one of \['pil', 'tensor'\]"),
    ({"resize": 100}, r"Preprocess.resize: got 100; expected >= size \(224\) or None"),
])
def test_bad_fields_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Preprocess(224, **options)


def test_a_processor_config_other_than_bicubic_is_refused():
    with pytest.raises(ValueError, match=r"preprocessor_config.json resample: got 2; expected 3 \(bicubic\)"):
        clip_processor_preprocess({"resample": 2}, 224)
