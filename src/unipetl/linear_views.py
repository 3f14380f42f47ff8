"""Backbones whose projections are not `nn.Linear`: GPT-2's `Conv1D` (the weight stored transposed, in x out)
and its fused `c_attn` (q, k and v in one product).

While a PetlModel holds such a model, each Conv1D is replaced by an `nn.Linear` whose weight and bias are
views of the Conv1D's own tensors (no copy: a change to one is a change to the other), and each fused
q/k/v module by `FusedQKV`, three such linears side by side. Every method then sees q, k and v as the
linears it knows; the site table names them (``attn.c_attn.q``). unload() puts the Conv1D modules back,
holding whatever the views' storage now holds (a merged or fully fine-tuned change included).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` inside ``model``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


VIEWS_ATTR = "_unipetl_linear_views"  # on the model: [(path, original module)] while views are in place


def _linear_view(conv: nn.Module, rows: slice) -> nn.Linear:
    """An nn.Linear over ``rows`` of a Conv1D's outputs, sharing its storage."""
    weight = conv.weight.t()[rows]  # (out, in): a view of the (in, out) Conv1D weight
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=conv.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        linear.bias = nn.Parameter(conv.bias[rows], requires_grad=conv.bias.requires_grad)
    return linear


class FusedQKV(nn.Module):
    """A fused q/k/v Conv1D as three linears (views of its weight); the output is theirs side by side."""

    def __init__(self, conv: nn.Module, width: int):
        super().__init__()
        self.q, self.k, self.v = (_linear_view(conv, slice(i * width, (i + 1) * width)) for i in range(3))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(hidden_states), self.k(hidden_states), self.v(hidden_states)], dim=-1)


def install_linear_views(model: nn.Module, fused_qkv: tuple[str, ...]) -> bool:
    """Replace every transformers Conv1D of ``model`` by linear views; those at paths ending in one of
    ``fused_qkv`` by FusedQKV. True when this call installed views; nothing happens for models without
    Conv1D, or with views already in place (a task bank keeps them for as long as it holds the model)."""
    from transformers.pytorch_utils import Conv1D

    if VIEWS_ATTR in model.__dict__:
        return False
    replaced = []
    for path, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        if path.endswith(fused_qkv):
            view = FusedQKV(module, module.nf // 3)
        else:
            view = _linear_view(module, slice(None))
        set_module(model, path, view)
        replaced.append((path, module))
    if replaced:
        model.__dict__[VIEWS_ATTR] = replaced
    return bool(replaced)


@contextmanager
def original_modules(model: nn.Module):
    """The model as it was given (Conv1D modules, their parameter names) inside; its views back afterwards."""
    replaced = model.__dict__.get(VIEWS_ATTR, [])
    views = [(path, model.get_submodule(path)) for path, _ in replaced]
    for path, original in replaced:
        set_module(model, path, original)
    try:
        yield model
    finally:
        for path, view in views:
            set_module(model, path, view)


def remove_linear_views(model: nn.Module) -> None:
    """Put the original Conv1D modules back (their tensors hold every change made through the views)."""
    for path, original in model.__dict__.pop(VIEWS_ATTR, []):
        set_module(model, path, original)
