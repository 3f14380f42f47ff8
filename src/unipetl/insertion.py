"""Insertion forms: how a form's output meets the backbone's hidden states.

- `LinearWithChanges` wraps one frozen linear of the backbone. It carries a low-rank update on its
  weight (LoRA), a delta on its input (the attention parallel adapter, added to the concatenated head
  outputs before W_o) and an adapter on its output (sequential: reads the output; parallel: reads a
  captured sub-layer input; pre-LN Pfeiffer: reads output + captured input).
- `PfeifferLayerNorm` wraps the LN after a post-LN block's FFN residual: y = LN(z + A(LN(z))), which
  is Pfeiffer's placement (adapter input LN(h_ffn + h_in), adapter residual h_ffn, same LN again).
- `InputCapture` remembers the input of a module for a parallel form to read later in the layer.
- `BiasDelta` adds a trained delta to a module's output, which is the same as adding it to the bias
  of a Linear or LayerNorm (BitFit without touching the backbone's tensors).
"""

from __future__ import annotations

import torch
from torch import nn

from .linear_views import set_module  # noqa: F401 - the wrappers' users put modules in place with it


class InputCapture:
    """Forward pre-hook that keeps the latest first input of a module (the sub-layer input x)."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.value = args[0] if args else kwargs["hidden_states"]

    def remove(self) -> None:
        self.handle.remove()
        self.value = None


class WrappedLinear(nn.Module):
    """A module standing in for a frozen nn.Linear (``base``). Code in transformers reads these attributes
    of its linears (e.g. T5 checks `wo.weight.dtype`), so they are the base's."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class LinearWithChanges(WrappedLinear):
    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.lora: nn.Module | None = None
        self.input_adapter: nn.Module | None = None  # adds adapter(capture) to the input
        self.input_capture: InputCapture | None = None
        self.output_adapter: nn.Module | None = None
        self.output_mode: str | None = None  # "sequential" | "parallel" | "pfeiffer_preln"
        self.output_capture: InputCapture | None = None

    @property
    def is_empty(self) -> bool:
        return self.lora is None and self.input_adapter is None and self.output_adapter is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_adapter is not None:
            x = x + self.input_adapter(self.input_capture.value)
        out = self.base(x) if self.lora is None else self.lora.add_to(self.base, x)
        if self.output_adapter is not None:
            if self.output_mode == "sequential":
                out = out + self.output_adapter(out)
            elif self.output_mode == "parallel":
                out = out + self.output_adapter(self.output_capture.value)
            else:  # pre-LN Pfeiffer (T5): the adapter reads FFN output + FFN input
                out = out + self.output_adapter(out + self.output_capture.value)
        return out


class PfeifferLayerNorm(nn.Module):
    def __init__(self, layernorm: nn.Module, adapter: nn.Module):
        super().__init__()
        self.layernorm = layernorm
        object.__setattr__(self, "adapter", adapter)  # owned by PetlModel.methods, referenced here

    @property
    def weight(self) -> torch.Tensor:
        return self.layernorm.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layernorm.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layernorm(z + self.adapter(self.layernorm(z)))


class BiasDelta:
    """Forward hook adding a trained vector to a module's output (equal to training its bias)."""

    def __init__(self, module: nn.Module, delta: nn.Parameter):
        self.module, self.delta = module, delta
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        return output + self.delta.to(output.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        self.module.bias.add_(self.delta.to(self.module.bias.dtype))
        self.handle.remove()

    def remove(self) -> None:
        self.handle.remove()


