"""The shipped families, registered when :mod:`treegrpo.families` is imported."""

from treegrpo.families import flux, qwen_image, sd3, sd15, wan

__all__ = ["flux", "qwen_image", "sd3", "sd15", "wan"]
