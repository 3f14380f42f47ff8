"""BitFit (Ben Zaken et al. 2022): train every bias of the backbone, held as a delta added to each
Linear's and LayerNorm's output (the same as changing its bias) so the backbone's tensors stay as
they were. Merges by adding the deltas to the biases."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..insertion import BiasDelta
from ..mixing import MixedOp
from ..registry import register_method
from .base import Method


class BiasDeltaOp(MixedOp):
    """BitFit for many tasks at one Linear or LayerNorm: each row's task's bias delta added to the module's
    output (a forward hook; zero for the rows of tasks without BitFit)."""

    def hook(self, module, args, output):
        delta = self.per_row(lambda d: d).to(output.dtype)  # (rows, features)
        return output + delta.view(delta.shape[0], *([1] * (output.dim() - 2)), delta.shape[1])


@register_method("attn_mode", "bitfit")
class BitFit(Method):
    mergeable = True

    def __init__(self, host, config):
        super().__init__(host, config)
        self.hooks: list[BiasDelta] = []

    def attach(self) -> None:
        host = self.host
        head = {name.rpartition(".")[0] for name in host.head_names}
        deltas = nn.ParameterDict()
        for path, module in host.model.named_modules():
            bias = getattr(module, "bias", None)
            if path in head or not isinstance(module, (nn.Linear, nn.LayerNorm)) or bias is None:
                continue
            deltas[path.replace(".", "__")] = nn.Parameter(torch.zeros_like(bias))
            self.hooks.append(host.add_hook(BiasDelta(module, deltas[path.replace(".", "__")])))
            self.part(BiasDeltaOp, path, "hook", deltas[path.replace(".", "__")])
        if not deltas:
            raise ConfigError(f"bitfit trains biases, but this {host.sites.family.family} backbone has no bias parameters")
        self.register("bitfit", deltas)

    @torch.no_grad()
    def merge(self) -> None:
        for hook in self.hooks:
            hook.merge()
            self.host.remove_hook(hook)
        self.hooks = []
        del self.host.methods["bitfit"]
        self.keys = []
