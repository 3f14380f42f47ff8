"""What belongs to the task head of a transformers model, and the backbone's identity.

The head is every parameter outside `model.base_model` that is not tied to it, except a causal LM's
pretrained vocabulary projection, which is the backbone's; the pooler (BERT) is
the backbone's own but may train with the head (`PetlConfig.train_pooler`). The fingerprint tells two
checkpoints of one architecture apart, so a task module is never loaded onto the wrong backbone.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .linear_views import original_modules
from .sites import head_table


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the task head: those outside `model.base_model` and not tied to it; none where the head is
    pretrained (a causal LM's vocabulary projection)."""
    base = model.base_model
    if base is model or head_table(model).pretrained:
        return []
    base_ids = {id(p) for p in base.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in base_ids]


def regression_output(model: nn.Module) -> nn.Linear | None:
    """The head's linear layer that outputs a regression value (one output with a bias: BERT's `classifier`,
    RoBERTa's `classifier.out_proj`), or None where the head has no such layer or several."""
    head = set(head_parameter_names(model))
    found = [module for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module.out_features == 1 and f"{name}.bias" in head]
    return found[0] if len(found) == 1 else None


def pooler_parameter_names(model: nn.Module) -> list[str]:
    """The parameters of the backbone's pooler (BERT); none where the backbone has no pooler."""
    pooler = getattr(model.base_model, "pooler", None)
    if not isinstance(pooler, nn.Module):
        return []
    ids = {id(p) for p in pooler.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def backbone_fingerprint(model: nn.Module) -> str:
    """A content hash of the backbone (head excluded): names, shapes, dtypes and a strided sample of values.

    Sampling up to 4,096 values per tensor keeps this fast on base-size models while telling apart
    two checkpoints of the same architecture.
    """
    with original_modules(model):  # the model as given: GPT-2's Conv1D, not the linear views of its tasks
        return _fingerprint(model)


def _fingerprint(model: nn.Module) -> str:
    head = set(head_parameter_names(model))
    digest = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode())
    for name, param in model.named_parameters():
        if name in head:
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(torch.float32).cpu().contiguous()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
