"""``treegrpo.envs``: denoising wrapped as TorchRL environments, transitions and tree samplers.

Installed as ``treegrpo.envs`` (the folder is ``envs/`` at the repository root). Samplers hand out
:class:`treeadv.Tree` forests; nothing here computes losses. Contents arrive with the envs issue.
"""
