"""The official scorers' preprocessing, stated with the libraries they run on (PIL, torchvision,
transformers), without their packages: the reference the project's torch pipelines are pinned to.

- hpsv2 (``hpsv2/src/open_clip/transform.py``, ``image_transform(..., is_train=False)`` with
  ``resize_longest_max=True``, what ``hpsv2.score`` builds): RGB, ``ToTensor``, ``ResizeMaxSize``
  (scale ``size / max(h, w)``, each side ``round(n * scale)``, torchvision's bicubic on the float
  tensor, then ``pad([left, top, right, bottom], fill=0)`` with the odd pixel right and bottom; no
  resize or pad when the scale is 1), ``Normalize``.
- open_clip's eval transform (CLIPScore), OpenAI CLIP's (the LAION aesthetic predictor) and
  ImageReward's ``_transform``: ``Resize(size, BICUBIC)``, ``CenterCrop(size)``, ``ToTensor``,
  ``Normalize`` on the PIL image.
- PickScore: transformers' ``CLIPImageProcessor``, the PIL implementation (transformers 4's
  ``CLIPImageProcessor``, transformers 5's ``CLIPImageProcessorPil``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in ``[0, 1]`` -> 8-bit RGB PIL images, rounded as diffusers' ``numpy_to_pil`` does."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def hpsv2_transform(size: int):
    """hpsv2's eval transform, written out from its definition."""
    def resize_max_size(tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[1:]
        scale = size / float(max(height, width))
        if scale == 1.0:
            return tensor
        new = (round(height * scale), round(width * scale))
        tensor = TF.resize(tensor, list(new), transforms.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new[0], size - new[1]
        return TF.pad(tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)

    return transforms.Compose([lambda image: image.convert("RGB"), transforms.ToTensor(), resize_max_size,
                               transforms.Normalize(OPENAI_MEAN, OPENAI_STD)])


def torchvision_transform(size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
    """``Resize(size, BICUBIC)``, ``CenterCrop(size)``, ``ToTensor``, ``Normalize`` on a PIL image."""
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), lambda image: image.convert("RGB"),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def clip_image_processor(size: int, crop: int | None = None, mean=OPENAI_MEAN, std=OPENAI_STD):
    """transformers' PIL ``CLIPImageProcessor`` built from a config dict (no download)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5: the PIL backend
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL implementation
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": crop or size, "width": crop or size},
                     do_center_crop=True, do_resize=True, resample=3, image_mean=list(mean), image_std=list(std))


def apply(transform, images: torch.Tensor) -> torch.Tensor:
    """A per-image official transform (or a transformers processor) on ``[0, 1]`` images via PIL."""
    pil = to_pil(images)
    if callable(getattr(transform, "preprocess", None)):
        return torch.as_tensor(np.stack(transform(images=pil, return_tensors="np")["pixel_values"]))
    return torch.stack([transform(image) for image in pil])


def pil_resize(levels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's ``Image.resize((w, h), BICUBIC)`` of ``[B, 3, H, W]`` uint8 levels, as float levels."""
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).resize(
        (size[1], size[0]), Image.BICUBIC)) for image in levels.to(torch.uint8)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
