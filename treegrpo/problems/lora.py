"""Write trained text-to-image weights in the formats diffusers loads.

A LoRA run writes ``pytorch_lora_weights.safetensors`` with its adapter config as metadata, which
a stock pipeline (``StableDiffusion3Pipeline``, ``FluxPipeline``, ``StableDiffusionPipeline``) loads
with ``pipeline.load_lora_weights(folder)``; a full fine-tune writes the
network's ``save_pretrained`` folder (``transformer/`` or ``unet/``), which replaces the
pipeline's own component folder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from treegrpo.errors import ConfigError
from treegrpo.families.pipelines import TextToImageModel
from treegrpo.formats import FileFormatError, check_safetensors

LORA_FILE = "pytorch_lora_weights.safetensors"



def _tuner_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    if "peft" not in sys.modules:  # no adapter exists before peft is imported; importing it costs seconds
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` carries peft adapters."""
    return next(_tuner_layers(model), None) is not None


def save_lora(model: TextToImageModel, directory: str | Path, adapter: str = "default") -> Path:
    """Save the network's peft adapter ``adapter`` as a diffusers LoRA; returns the file."""
    from peft.utils import get_peft_model_state_dict

    network = model.network
    if not has_adapters(network):
        raise ValueError("save_lora: the model has no LoRA adapters (train with train.lora_rank > 0)")
    layers = get_peft_model_state_dict(network, adapter_name=adapter)
    metadata = network.peft_config[adapter].to_dict()
    directory = Path(directory)
    pipeline_class = type(model.pipeline)
    if model.family.network == "transformer":  # SD3 and FLUX.1: their loaders read `transformer_*` keys
        pipeline_class.save_lora_weights(directory, transformer_lora_layers=layers,
                                         transformer_lora_adapter_metadata=metadata, weight_name=LORA_FILE)
    else:
        pipeline_class.save_lora_weights(directory, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata,
                                         weight_name=LORA_FILE)
    return directory / LORA_FILE


def save_network(model: TextToImageModel, directory: str | Path) -> Path:
    """Save the fully fine-tuned network as ``<directory>/transformer`` or ``<directory>/unet``."""
    target = Path(directory) / model.family.network
    model.network.save_pretrained(target)
    return target


def export_trained(model: TextToImageModel, directory: str | Path) -> list[Path]:
    """The LoRA if the network carries one, else the whole network; returns what was written."""
    if has_adapters(model.network):
        return [save_lora(model, directory)]
    return [save_network(model, directory)]


def check_lora_file(path: str | Path) -> tuple[Path, str]:
    """``(folder, file name)`` of the LoRA at ``path`` (a folder with :data:`LORA_FILE` or a
    ``.safetensors`` file); anything else is a one-line error, and a pickle is never loaded."""
    path = Path(path).expanduser()
    folder, weight_name = (path.parent, path.name) if path.is_file() else (path, LORA_FILE)
    if not (folder / weight_name).is_file():
        raise ConfigError(f"model.lora: {folder / weight_name} does not exist; expected a folder with {LORA_FILE} "
                          "(what training writes to <out_dir>/final) or the .safetensors file itself")
    if not weight_name.endswith(".safetensors"):
        raise ConfigError(f"model.lora: {path} is not a .safetensors file; other formats are pickles, which can run "
                          "code when loaded, and are refused")
    try:  # the name is not the format: a renamed pickle is refused by its bytes
        check_safetensors(folder / weight_name, "model.lora")
    except FileFormatError as error:
        raise ConfigError(str(error)) from None
    return folder, weight_name


def fuse_lora(model: TextToImageModel, path: str | Path) -> None:
    """Load diffusers LoRA weights from ``path`` (safetensors only) and fold them into the network's weights."""
    folder, weight_name = check_lora_file(path)
    model.pipeline.load_lora_weights(folder, weight_name=weight_name, adapter_name="fused", use_safetensors=True)
    model.pipeline.fuse_lora(adapter_names=["fused"])
    model.pipeline.unload_lora_weights()
