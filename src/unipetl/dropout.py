"""Dropout for CPU training at under half of torch's cost.

torch's CPU dropout draws one Bernoulli sample per element (`bernoulli_`), most of the time on the
attention probabilities. Here one 64-bit draw from torch's generator gives four 16-bit uniforms, each compared
with round(p * 2^16): an element is dropped with probability p to within 2^-17, and kept ones are scaled
by exactly 1 / P(keep), so the output stays unbiased. torch.manual_seed makes it reproducible, as it
does torch's own. Eval mode, p = 0 and tensors off the CPU go to torch.nn.functional.dropout.
Forward and backward together take 0.45x (attention probabilities) and 0.39x (hidden states) of torch's
time on MiniLM's tensors: `python benchmarks/bench_dropout.py`, benchmarks/results/dropout_cpu.md.

`enable_fast_dropout(model)` switches a model's `nn.Dropout` modules to `FastDropout` (the same
module with another forward) and returns them, so that `disable_fast_dropout` can switch them back.
Dropout inside attention is the attention function's business (unipetl.attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit uniforms
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def drop_threshold(p: float) -> int:
    """How many of the 2^16 uniform levels drop an element."""
    return round(p * _LEVELS)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bool tensor of ``shape``, True with probability 1 - drop_threshold(p) / 2^16."""
    count = shape.numel()
    # random_(from, to) covers all 64 bits (random_() leaves the sign bit at 0).
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(_INT64_MIN, _INT64_MAX)
    uniforms = words.view(torch.int16)[:count].view(shape)  # each in [-2^15, 2^15)
    return uniforms >= drop_threshold(p) - _LEVELS // 2


class _FastDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        # A float mask times x is several times faster on CPU than torch.where or x * bool_mask. It is
        # kept for the backward pass, one pass there, in x's dtype as torch's own CPU dropout keeps its noise.
        scaled_keep = keep_mask(x.shape, p).to(x.dtype).mul_(_LEVELS / (_LEVELS - drop_threshold(p)))
        ctx.save_for_backward(scaled_keep)
        return x * scaled_keep

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scaled_keep,) = ctx.saved_tensors
        return grad * scaled_keep, None


def uses_fast_path(x: torch.Tensor, p: float, training: bool) -> bool:
    return training and p > 0 and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """torch.nn.functional.dropout with the fast CPU sampler (see the module docstring)."""
    if not uses_fast_path(x, p, training):
        return F.dropout(x, p, training)
    if p >= 1:
        return x * 0.0  # as torch's: everything dropped, and a zero gradient
    return _FastDropout.apply(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout with the fast CPU sampler; same state, so a module can switch class and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and uses_fast_path(x, self.p, self.training):
            return x.copy_(dropout(x, self.p, self.training))
        return dropout(x, self.p, self.training)


def enable_fast_dropout(model: nn.Module) -> list[nn.Module]:
    """Switch every plain nn.Dropout in ``model`` to FastDropout; returns the switched modules."""
    switched = [module for module in model.modules() if type(module) is nn.Dropout]
    for module in switched:
        module.__class__ = FastDropout
    return switched


def disable_fast_dropout(modules: list[nn.Module]) -> None:
    for module in modules:
        if type(module) is FastDropout:
            module.__class__ = nn.Dropout
