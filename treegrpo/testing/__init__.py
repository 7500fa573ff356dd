"""Test fixtures for users and for this project's tests: tiny random-weight pipelines in the real layouts,
and the official reward scorers' preprocessing as references.

Nothing here is used by the library itself. :mod:`treegrpo.testing.pipelines` writes diffusers
pipeline folders (SD3, FLUX.1, SD1.5) small enough for a CPU test, to be loaded back through the
same :func:`treegrpo.families.pipelines.load_pipeline` a user calls on real weights;
:mod:`treegrpo.testing.official_preprocessing` states each scorer's official preprocessing with
PIL, torchvision and transformers, the reference :mod:`treegrpo.rewards.preprocess` is pinned to.
"""
