"""treegrpo: online RL post-training of diffusion and flow image models with tree advantages.

Import roots of the one ``treegrpo`` distribution:

- ``treeadv``: per-edge advantages on denoising trees (torch + tensordict only), usable by any loss;
- ``treegrpo.envs``: denoising as environments and samplers that produce trees (folder ``envs/``);
- ``treegrpo.algos``: losses and the trainer (folder ``algos/``);
- ``treegrpo.embedded``: the offline digits default with its shipped weights (folder ``embedded/``);
- ``treegrpo.rewards``: reward models ``score(images, prompts)`` and their registry (folder ``rewards/``).
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"
