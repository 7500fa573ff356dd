"""``treegrpo.algos``: losses (TreeGRPO, trajectory GRPO, DDPO-PPO, MixGRPO, ...) and the trainer.

Installed as ``treegrpo.algos`` (the folder is ``algos/`` at the repository root). Losses read
per-edge advantages from :mod:`treeadv`; they never walk a tree. Contents arrive with the algos issue.
"""
