"""Make a denoiser ready to train: LoRA adapters (peft), gradient checkpointing, torch.compile.

Each function works on the :class:`~treegrpo.envs.Denoiser` the trainer holds. Diffusers models
inside it (``SD3Transformer2DModel``, ``UNet2DConditionModel``) get their own mechanisms
(``add_adapter``, ``enable_gradient_checkpointing``), so the LoRA they carry saves and loads like any
diffusers LoRA; any other module gets peft's ``inject_adapter_in_model`` and the model's own
checkpointing hook.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from treegrpo.errors import TreegrpoWarning
from treegrpo.problems.lora import _tuner_layers, has_adapters

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
RANK_WIDTHS = 4
"""``train.lora_rank`` may reach this many times the widest targeted layer's width (``max(in, out)``)."""


def _diffusers_models(model: nn.Module) -> list[nn.Module]:
    """The outermost diffusers ``ModelMixin`` submodules of ``model`` (``model`` itself included)."""
    from diffusers import ModelMixin

    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():  # pre-order: an outer model comes before the models it holds
        if isinstance(module, ModelMixin) and id(module) not in inside:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` in ``model``: the default LoRA targets."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]


def _matches(name: str, target: str) -> bool:
    """peft's rule for a string target: the module's full name, or its suffix after a dot."""
    return name == target or name.endswith(f".{target}")


def check_lora(host: nn.Module, rank: int, targets: Sequence[str]) -> None:
    """Refuse, in one line and before peft allocates anything, targets none of which names a module
    of ``host`` (a partial miss is a warning: a family's list on a smaller model) and a ``rank`` above
    :data:`RANK_WIDTHS` times the widest targeted layer: the update ``B A`` has rank at most
    ``min(in, out)``, so such a rank only allocates (a huge one stalls doing so). Up to that, a
    family's rank on a smaller model (a test model) is allowed, as peft allows it."""
    from treegrpo.errors import ConfigError

    modules = [(name, module) for name, module in host.named_modules() if name]
    linear = linear_module_names(host)
    unmatched = [target for target in targets if not any(_matches(name, target) for name, _ in modules)]
    if unmatched and len(unmatched) == len(targets):
        shown = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in linear})[:8])
        raise ConfigError(f"train.lora_targets: {unmatched[0][:80]!r} matches no module of {type(host).__name__}; "
                          f"expected module-name suffixes such as {shown or 'its linear layers'}")
    if unmatched:  # a family's list on a smaller model (SD3's last block has no to_add_out): as peft, go on, but say so
        warnings.warn(f"train.lora_targets: {', '.join(repr(t[:80]) for t in unmatched[:4])} match no module of "
                      f"{type(host).__name__}; the other targets get adapters", TreegrpoWarning, stacklevel=3)
    targeted = [(name, module) for name, module in modules
                if (not targets and isinstance(module, nn.Linear)) or any(_matches(name, t) for t in targets)]
    widths = [(max(getattr(m, "in_features", 0), getattr(m, "out_features", 0)), name, m) for name, m in targeted]
    width, name, module = max(widths, key=lambda w: w[0], default=(0, "", None))
    if module is not None and width and rank > RANK_WIDTHS * width:
        raise ConfigError(f"train.lora_rank: {rank} exceeds {RANK_WIDTHS}x the width of the widest targeted layer "
                          f"{name} ({module.in_features} -> {module.out_features}); a rank above min(in, out) adds "
                          f"memory, not expressiveness; expected an int in [1, {RANK_WIDTHS * width}] for this model")


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str] = (), *, seed: int = 0) -> list[str]:
    """Add rank-``rank`` LoRA adapters and freeze everything else; returns the adapted module names.

    ``targets`` are module-name suffixes as peft matches them (``to_q``, ``attn.to_out.0``); empty
    means every linear layer. The adapters start as the identity (``B = 0``), so the policy is
    unchanged until the first update; they are kept in float32 whatever the base weights' dtype.
    """
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"lora_rank: expected an int >= 1, got {rank!r}")
    inner = _diffusers_models(model)
    hosts = inner or [model]
    adapted: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for host in hosts:
            names = list(targets) or linear_module_names(host)
            if not names:
                raise ValueError(f"lora_targets: {type(host).__name__} has no linear layers to adapt")
            check_lora(host, rank, list(targets))
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, init_lora_weights=True)
            try:
                if hasattr(host, "add_adapter"):
                    host.add_adapter(config)
                else:
                    inject_adapter_in_model(config, host)
            except ValueError as error:
                raise ValueError(f"lora_targets: {list(targets)!r} match no module of {type(host).__name__} "
                                 f"({str(error).splitlines()[0][:120]})") from None
            adapted += [name for name, _ in _tuner_layers(host)]
    adapted_ids = {id(m) for host in hosts for m in host.modules()}
    for module in model.modules():  # anything outside the adapted hosts is frozen too
        if id(module) not in adapted_ids:
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
    for p in model.parameters():  # adapters train in float32 even on a bf16 base (the optimiser's master copy)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return adapted


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model: every peft adapter switched off inside the block."""
    layers = [module for _, module in _tuner_layers(model)]
    if not layers:
        raise ValueError("reference: 'disable_adapter' needs LoRA adapters in the model (set train.lora_rank)")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def kl_reference(model: nn.Module, *, adapters: bool | None = None) -> nn.Module | str:
    """The reference of a KL term to ``model``'s starting weights, as a loss's ``reference=`` takes it.

    With LoRA adapters (``adapters=True``, or found in ``model`` when ``None``) it is the string
    ``"disable_adapter"``: the base model is the model with its adapters off, and no copy is made.
    Otherwise it is a frozen copy of ``model`` (no gradients, eval mode), made now: build it before
    the first optimiser step. The trainer uses this for ``loss.kl_coef > 0``; from Python::

        loss = PPOClipLoss(problem.model, problem.transition, kl_coef=0.04, reference=kl_reference(problem.model))
    """
    if adapters if adapters is not None else has_adapters(model):
        return "disable_adapter"
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute activations in the backward pass; returns how many models were switched.

    Diffusers models use their ``enable_gradient_checkpointing``; other modules may define
    ``enable_gradient_checkpointing()`` themselves. A model with neither is an error, not a no-op.
    """
    switched = 0
    for module in _diffusers_models(model) or [model]:
        hook = getattr(module, "enable_gradient_checkpointing", None)
        if hook is None or getattr(module, "_supports_gradient_checkpointing", True) is False:
            continue
        hook()
        switched += 1
    if not switched:
        raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support it "
                         "(define enable_gradient_checkpointing() or use a diffusers model)")
    return switched


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the model's forward in place (parameter names and state dicts unchanged)."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"train.compile_backend: expected one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}")
    model.compile(backend=backend, dynamic=None)
    return model


def prepare_model(model: nn.Module, train) -> dict[str, object]:  # train: TrainConfig
    """Apply the ``train`` section's LoRA, checkpointing and compile options, in that order."""
    report: dict[str, object] = {}
    if train.lora_rank > 0:
        report["lora_modules"] = apply_lora(model, train.lora_rank, train.lora_alpha, train.lora_targets,
                                            seed=train.seed)
    if train.gradient_checkpointing:
        report["checkpointed_models"] = enable_gradient_checkpointing(model)
    if train.compile:
        compile_model(model, train.compile_backend)
        report["compiled"] = train.compile_backend
    return report
