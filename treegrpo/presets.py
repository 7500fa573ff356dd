"""Per-model starting points: the paper's defaults, adjusted only where a model's scale demands it.

``Config()`` holds the paper's setting (SD3.5-Medium: NFE 10, k = 3, d = 3, lr 1e-5, clip 1e-4).
The embedded CPU problems are thousands of times smaller and train for minutes, so their presets
raise the learning rate and the clip range and set the run length; ``treegrpo train`` starts from
the preset of the resolved ``model.kind`` (see ``--print-config``), and files and flags override it.
"""

from __future__ import annotations

from treegrpo.config import PRESETS, preset_config

__all__ = ["PRESETS", "preset_config"]
