"""What a PetlModel costs: parameter counts and the exact bytes its task module takes, with their breakdown."""

from __future__ import annotations

from typing import Any

from .module_format import serialize


def byte_kind(petl, name: str) -> str:
    """The breakdown row of a stored tensor: what a method says, else pooler, head or method bytes."""
    if name.startswith("head.") and name[len("head."):] in petl.pooler_names:
        return "pooler_bytes"  # the trained pooler: what training it (train_pooler) adds to a module
    for plugin in petl.plugins:
        kind = plugin.byte_kind(name)
        if kind is not None:
            return kind
    return "head_bytes" if name.startswith("head.") else "method_bytes"


def report(petl, n_tasks: int = 1) -> dict[str, Any]:
    """Parameter counts and the exact bytes `save` writes, with their breakdown.

    ``family_bytes_per_task``: bytes per task (head excluded) when ``n_tasks`` tasks share the parts a
    family stores once (a ProPETL prototype); equal to the module's bytes without head for other methods.
    """
    head = petl.head_parameters()
    head_ids = {id(p) for p in head.values()}
    backbone_params = sum(p.numel() for p in petl.model.parameters() if id(p) not in head_ids)
    method_params = sum(p.numel() for p in petl.methods.parameters() if p.requires_grad)
    trains_backbone = any(plugin.trains_backbone() for plugin in petl.plugins)
    trainable = method_params + (backbone_params if trains_backbone else 0)
    stored_tensors = petl.stored_tensors()
    header, weights = serialize(petl, petl.task, tensors=stored_tensors)
    breakdown = {"prototype_bytes": 0, "mask_bytes": 0, "head_bytes": 0, "pooler_bytes": 0, "method_bytes": 0,
                 "backbone_bytes": 0}
    shared = 0
    for name, tensor in stored_tensors.items():
        size = tensor.numel() * tensor.element_size()
        breakdown[byte_kind(petl, name)] += size
        shared += size if petl.shares(name) else 0
    stored = len(header) + len(weights)
    breakdown["header_bytes"] = stored - sum(breakdown.values())
    per_task = stored - breakdown["head_bytes"] - breakdown["pooler_bytes"] - shared + shared / n_tasks
    return {
        "preset": petl.config.preset,
        "family": petl.sites.family.family,
        "trainable_params": trainable,
        "head_params": sum(p.numel() for p in head.values()),
        "backbone_params": backbone_params,
        "trainable_percent": 100.0 * trainable / backbone_params,
        "stored_bytes": stored,
        "stored_breakdown": breakdown,
        "n_tasks": n_tasks,
        "family_bytes_per_task": per_task,
    }
