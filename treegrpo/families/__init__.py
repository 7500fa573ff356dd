"""Model families: a diffusers pipeline folder loaded as a policy, and the prompts it is trained on.

Each family (SD3/SD3.5, FLUX.1, SD1.5, ...) is one module declaring a :class:`ModelFamily` and
registering it by name (``model.kind``). :mod:`treegrpo.families.pipelines` reads a local
``save_pretrained`` folder of any registered family into a
:class:`~treegrpo.families.pipelines.TextToImageModel` (denoiser, transition, prompt encoder, VAE
decode); :mod:`treegrpo.families.prompts` reads prompt files and caches their embeddings. The
samplers in :mod:`treegrpo.envs` see only the denoiser and the transition.
"""

from treegrpo.families import builtin  # noqa: F401 - importing it registers the shipped families
from treegrpo.families.base import FAMILIES, ModelFamily, families, family, register_family

__all__ = ["FAMILIES", "ModelFamily", "families", "family", "register_family"]
