"""Full fine-tuning, the baseline: every backbone weight trains and is stored with the head.

The backbone's weights are the method's parameters, so they change in place; attaching keeps a copy
of them on the CPU so that unload() gives the backbone back as it was. merge() keeps the trained
weights (it drops the copy, and unload() then leaves them in place).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..registry import register_method
from .base import Method


@register_method("full_finetune", True)
class FullFineTuning(Method):
    mergeable = True
    covers_pooler = True

    def attach(self) -> None:
        head = set(self.host.head_names)
        self.original = {name: p.detach().to("cpu", copy=True) for name, p in self.host.model.named_parameters()
                         if name not in head}

    def trains_backbone(self) -> bool:
        return True

    def stored_tensors(self):
        head = set(self.host.head_names)
        return {f"backbone.{name}": p for name, p in self.host.model.named_parameters() if name not in head}

    def byte_kind(self, name):
        return "backbone_bytes" if name.startswith("backbone.") else None

    def mixed_parts(self):
        raise ConfigError("full fine-tuning changes every backbone weight, so its module cannot share a backbone "
                          "with other tasks; serve it alone (unipetl predict --module)")

    def merge(self) -> None:
        self.original = {}

    @torch.no_grad()
    def unload(self) -> None:
        params = dict(self.host.model.named_parameters())
        for name, value in self.original.items():
            params[name].copy_(value)
        self.original = {}
