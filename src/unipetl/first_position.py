"""Run the last layer's FFN at the first position only, where the head reads nothing else.

A sequence-classification or multiple-choice head of an encoder reads the last layer's output at the
first position ([CLS] / <s>, directly or through the pooler). That layer's attention must still see
every position (its keys and values come from all of them), but everything after it (the attention
output's residual and LN already applied) works position by position: the FFN, the adapters at the FFN
and the layer's output LN. Slicing the attention block's output to the first position therefore leaves
the logits and every gradient as they were and skips about two thirds of the last layer's products:
about a ninth of a 6-layer model's training step, for full fine-tuning and every method alike.

It applies only where nothing else reads the other positions: a head class listed in the family's
`first_position_heads`, no `output_hidden_states`, and no gradient checkpointing (a recomputed layer
would run without the slice).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from torch import nn

from .sites import BackboneSites


def _keep_first_position(module, args, output):
    if isinstance(output, tuple):
        return (output[0][:, :1],) + output[1:]
    return output[:, :1]


def applies(model: nn.Module, sites: BackboneSites, kwargs: dict) -> bool:
    """Whether only the first position of the last layer is read in this call of ``model(**kwargs)``."""
    if type(model).__name__ not in sites.family.first_position_heads:
        return False
    if kwargs.get("output_hidden_states", getattr(model.config, "output_hidden_states", False)):
        return False
    # transformers 5 renamed the property; the old name warns that it will go
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(model, name, False):
        return False
    return sites.layers[-1].attention_block is not None


def register(sites: BackboneSites):
    """Slice the last layer's attention output to the first position from now on; returns the hook handle."""
    return sites.layers[-1].attention_block.register_forward_hook(_keep_first_position)


@contextmanager
def _registered(sites: BackboneSites):
    handle = register(sites)
    try:
        yield
    finally:
        handle.remove()


def first_position_only(model: nn.Module, sites: BackboneSites, kwargs: dict):
    """A context for one call of ``model(**kwargs)``: the slice where it `applies`, nothing elsewhere."""
    return _registered(sites) if applies(model, sites, kwargs) else nullcontext()
