"""The shipped families, registered when :mod:`treegrpo.families` is imported."""

# imported in this order, which is the order of their model kinds (and of the kinds an error lists)
from treegrpo.families import sd3  # noqa: I001
from treegrpo.families import flux
from treegrpo.families import sd15
from treegrpo.families import qwen_image
from treegrpo.families import wan

__all__ = ["flux", "qwen_image", "sd3", "sd15", "wan"]
