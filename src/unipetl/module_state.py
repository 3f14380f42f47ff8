"""The tensors of a task module, gathered from and loaded back into a PetlModel.

Each method says what it stores (`Method.stored_tensors`: prefixes as generated, a sparse diff as
index gaps and values, the backbone for `full`); the parameter source rewrites that (ProPETL: mask
scores as bits); the head is added here. Loading checks every name and shape before copying.
"""

from __future__ import annotations

import torch

from .errors import ModuleFormatError


def stored_tensors(petl) -> dict[str, torch.Tensor]:
    """Every tensor a task module needs: what each method stores (prefixes as generated, masks as bits,
    a sparse diff as index gaps and values, the backbone for `full`) and the head."""
    tensors: dict[str, torch.Tensor] = {}
    for plugin in petl.plugins:
        tensors.update(plugin.stored_tensors())
    if petl.source is not None:
        tensors = petl.source.filter_stored(tensors, petl.task_name)
    for name, param in petl.head_parameters().items():
        tensors[f"head.{name}"] = param
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


@torch.no_grad()
def load_stored_tensors(petl, tensors: dict[str, torch.Tensor], source: str = "module") -> None:
    """Copy tensors written by `stored_tensors` (of a flat-prefix model); checks every name and shape first."""
    for plugin in petl.plugins:
        tensors = plugin.load_prepare(tensors, source)
    expected = {k: v.shape for k, v in petl.stored_tensors().items()}
    for plugin in petl.plugins:
        expected = plugin.load_expected(expected)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModuleFormatError(
            f"{source}: tensors do not match this config and backbone; missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ModuleFormatError(
                f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)} "
                "(was the head built with another number of labels?)")
    if petl.source is not None:
        tensors = petl.source.load_consume(tensors)
    targets = {f"methods.{k}": v for k, v in petl.methods.state_dict(keep_vars=True).items()}
    targets.update({f"head.{k}": v for k, v in petl.head_parameters().items()})
    targets.update({f"backbone.{k}": v for k, v in petl.model.named_parameters()})
    for name, value in tensors.items():
        targets[name].copy_(value)
