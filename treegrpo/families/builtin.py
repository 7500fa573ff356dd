"""The shipped families, registered when :mod:`treegrpo.families` is imported."""

from treegrpo.families import flux, sd3, sd15

__all__ = ["flux", "sd3", "sd15"]
