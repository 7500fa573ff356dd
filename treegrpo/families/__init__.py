"""Model families: loading a diffusers pipeline folder as a policy, and the prompts it is trained on.

:mod:`treegrpo.families.pipelines` reads a local ``save_pretrained`` folder (SD3/SD3.5, FLUX.1,
SD1.5) into a :class:`~treegrpo.families.pipelines.TextToImageModel` (denoiser, transition, prompt
encoder, VAE decode); :mod:`treegrpo.families.prompts` reads prompt files and caches their
embeddings. The samplers in :mod:`treegrpo.envs` see only the denoiser and the transition.
"""
