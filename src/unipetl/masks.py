"""Binary masks over a shared prototype (ProPETL): top-k selection with a straight-through gradient,
and bit packing for storage.

`keep` is the fraction of entries kept (the released ProPETL code calls it "sparsity", but it is
the fraction kept: sparsity=0.5 keeps half the entries, sparsity=0.1 keeps a tenth).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def kept_count(numel: int, keep: float) -> int:
    """Entries a mask keeps: all but the floor((1 - keep) * n) smallest scores, as the released code does."""
    return numel - math.floor((1.0 - keep) * numel)


class TopKStraightThrough(torch.autograd.Function):
    """Forward: 1 for the `keep` fraction of entries with the largest |score|, per tensor, else 0.
    Backward: the gradient reaching the mask goes to the scores unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: float) -> torch.Tensor:
        flat = scores.detach().abs().flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, kept_count(flat.numel(), keep), sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def topk_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    return TopKStraightThrough.apply(scores, keep)


def mask_or(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable logical OR of two {0, 1} masks: 1 - (1 - a)(1 - b) (ProPETL-m's task/layer union)."""
    return a + b - a * b


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A {0, 1} mask as uint8, eight entries per byte (row-major, big-endian bit order as numpy's packbits)."""
    return torch.from_numpy(np.packbits(mask.detach().to(torch.bool).cpu().numpy().reshape(-1)))


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(numel / 8):
        raise ValueError(f"packed mask has {packed.numel()} bytes of {packed.dtype}, expected {math.ceil(numel / 8)} uint8")
    bits = np.unpackbits(packed.cpu().numpy(), count=numel)
    return torch.from_numpy(bits.astype(np.bool_)).view(shape)
