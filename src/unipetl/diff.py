"""Diff pruning's parameter sources over the backbone's own weights (Guo et al. 2021; ALGORITHMS.md §4).

The backbone parameters (head excluded) are treated as one flat vector theta_pre; a task changes it
by a diff delta. Two sources give delta:

- `GatedDiff` (L0 stage): a dense diff w and hard-concrete gate logits alpha, one per entry, plus one
  group gate per parameter tensor (the structured variant): delta = z * z_group * w.
- `SparseDiff` (fixed-mask stage, and what a task module stores): values at fixed sorted indices.

`project_to_density` turns the first into the second with a global magnitude threshold. On disk a
sparse diff is the index gaps (uint16 when every gap fits, else uint32) and the values.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import check_density
from .errors import ModuleFormatError
from .heads import head_parameter_names
from .gates import (deterministic_gates, expected_l0, gated_diff, group_noise, open_probability, sample_gates,
                    uniform_noise)


class FlatLayout:
    """Names, shapes and offsets of the diffed tensors inside the flat vector."""

    def __init__(self, named_shapes: list[tuple[str, tuple[int, ...]]]):
        self.names = [n for n, _ in named_shapes]
        self.shapes = [tuple(s) for _, s in named_shapes]
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        self.total = sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: part.view(shape) for n, part, shape in zip(self.names, flat.split(self.sizes), self.shapes)}


class GatedDiff(nn.Module):
    """Dense diff and hard-concrete gates for the L0 stage. ``eval_gates``: 'deterministic' or 'sample'."""

    def __init__(self, layout: FlatLayout, alpha_init: float, limits: tuple[float, float], structured: bool,
                 eval_gates: str = "deterministic"):
        super().__init__()
        self.layout, self.limits, self.eval_gates = layout, tuple(limits), eval_gates
        self.weight = nn.Parameter(torch.zeros(layout.total))
        self.gate_logits = nn.Parameter(torch.full((layout.total,), float(alpha_init)))
        self.group_gate_logits = nn.Parameter(torch.full((len(layout.sizes),), float(alpha_init))) if structured else None
        self._fused_penalty = None  # (expected L0, gate logits' versions) from the last training pass

    def _step_seed(self) -> int:
        return int(torch.randint(1, 2**62, (1,)).item())  # from the seeded global generator

    def delta(self) -> torch.Tensor:
        """The flat diff: a fresh gate sample in training, the evaluation gate otherwise."""
        if self.training:
            parts, _ = gated_diff(self.weight, self.gate_logits, self.group_gate_logits, self._step_seed(), self.limits,
                                  self.layout.sizes)
            return torch.cat(parts)
        with torch.no_grad():
            return self.weight * self.gate_values(self.eval_gates)

    def diffed(self, bases: list[torch.Tensor]) -> list[torch.Tensor]:
        """theta_pre + delta for each diffed tensor. In training the gates are sampled and the same pass
        computes the expected-L0 penalty, which the next `expected_l0` call returns."""
        if not self.training:
            return add_flat_delta(bases, self.delta(), self.layout)
        outputs, penalty = gated_diff(self.weight, self.gate_logits, self.group_gate_logits, self._step_seed(),
                                      self.limits, self.layout.sizes, bases)
        self._fused_penalty = (penalty, self._gate_versions())
        return outputs

    def _gate_versions(self) -> tuple:
        # An optimizer step changes the logits in place and bumps these: a kept penalty is then stale.
        return (self.gate_logits._version,
                None if self.group_gate_logits is None else self.group_gate_logits._version)

    @torch.no_grad()
    def gate_values(self, mode: str) -> torch.Tensor:
        """z * z_group for every entry: 'deterministic' (Louizos' test-time estimator), one fresh 'sample',
        or 'expected': P(z != 0) * P(z_group != 0), the probability that the entry is non-zero."""
        if mode == "expected":
            z = open_probability(self.gate_logits.detach(), self.limits)
            group = None if self.group_gate_logits is None else open_probability(self.group_gate_logits.detach(), self.limits)
        elif mode == "sample":  # the released code samples fresh gates even at evaluation
            seed = int(torch.randint(1, 2**62, (1,)).item())
            z = sample_gates(self.gate_logits, uniform_noise(self.layout.total, seed), self.limits)
            group = None if self.group_gate_logits is None else sample_gates(
                self.group_gate_logits, group_noise(len(self.layout.sizes), seed), self.limits)
        else:
            z = deterministic_gates(self.gate_logits, self.limits)
            group = None if self.group_gate_logits is None else deterministic_gates(self.group_gate_logits, self.limits)
        if group is not None:
            z = z * torch.repeat_interleave(group, torch.tensor(self.layout.sizes))
        return z

    def expected_l0(self) -> torch.Tensor:
        """The expected-L0 penalty: the one computed with the last training pass's gates when the logits
        have not changed since (once), else computed afresh."""
        fused, self._fused_penalty = self._fused_penalty, None
        if fused is not None and fused[1] == self._gate_versions() and torch.is_grad_enabled():
            return fused[0]
        return expected_l0(self.gate_logits, self.limits, self.group_gate_logits, self.layout.sizes)


class SparseDiff(nn.Module):
    """Trainable values at fixed positions of the flat vector; every other entry of the diff is zero."""

    def __init__(self, layout: FlatLayout, indices: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.layout = layout
        check_indices(indices, layout.total, "sparse diff")
        self.register_buffer("indices", indices.to(torch.int64), persistent=False)
        self.values = nn.Parameter(values.detach().clone().to(torch.float32))

    def delta(self) -> torch.Tensor:
        return torch.zeros(self.layout.total, dtype=self.values.dtype, device=self.values.device).index_put(
            (self.indices,), self.values)

    def diffed(self, bases: list[torch.Tensor]) -> list[torch.Tensor]:
        return add_flat_delta(bases, self.delta(), self.layout)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())


def add_flat_delta(bases: list[torch.Tensor], delta: torch.Tensor, layout: FlatLayout) -> list[torch.Tensor]:
    return [base + part.view(base.shape).to(base.dtype) for base, part in zip(bases, delta.split(layout.sizes))]


# ----------------------------------------------------------------------- projection (stage 2)
def magnitude_threshold(magnitudes: torch.Tensor, keep: int, iterations: int = 200) -> float:
    """The smallest threshold t (binary search) with #(|delta| > t) <= keep."""
    if keep >= int((magnitudes > 0).sum()):
        return 0.0
    low, high = 0.0, float(magnitudes.max())
    for _ in range(iterations):
        middle = (low + high) / 2
        if middle in (low, high):  # adjacent floats: the interval cannot shrink further
            break
        if int((magnitudes > middle).sum()) > keep:
            low = middle
        else:
            high = middle
    return high


def project_to_density(diff: GatedDiff, density: float, gates: str = "sample") -> tuple[SparseDiff, dict]:
    """Keep the round(density * N) entries of largest |delta| (global threshold); the kept values
    restart from the raw w of the L0 stage, as in the released fixed-mask fine-tuning.

    ``gates='sample'`` takes delta with one sampled gate draw, as the released pipeline does (its
    checkpoint holds theta_pre + z_sample * w); 'deterministic' uses the test-time gate, which is
    exactly zero wherever alpha <= 0. After a short L0 stage either can leave far fewer non-zeros
    than the target (one sample closes whole tensors through their group gate); 'expected' ranks
    |w| * P(entry non-zero), which is zero only where w is, so it reaches the target whenever w has
    that many non-zero entries.
    """
    check_density(density)
    delta = diff.weight.detach() * diff.gate_values(gates)
    keep = round(density * diff.layout.total)
    threshold = magnitude_threshold(delta.abs(), keep)
    indices = torch.nonzero(delta.abs() > threshold).flatten()
    sparse = SparseDiff(diff.layout, indices, diff.weight.detach()[indices])
    stats = {"target_density": density, "target_entries": keep, "kept_entries": int(indices.numel()),
             "density": indices.numel() / diff.layout.total, "threshold": threshold,
             "nonzero_before": int((delta != 0).sum()), "parameters": diff.layout.total}
    return sparse, stats


def check_indices(indices: torch.Tensor, total: int, source: str) -> None:
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= total):
        raise ModuleFormatError(f"{source}: diff index {int(indices.max())} runs past the parameter vector "
                                f"of {total:,} entries (module from another backbone or corrupted?)")
    if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise ModuleFormatError(f"{source}: diff indices are not strictly increasing")


# ----------------------------------------------------------------------- storage encoding
GAP_ESCAPE = 2**16 - 1  # a stored 0 advances the position by this much without an entry


def encode_indices(indices: torch.Tensor) -> torch.Tensor:
    """Sorted indices as uint16 gaps from the previous index (the first from -1, so every gap is >= 1).

    A gap larger than 65535 is written as k zeros, each advancing the position by 65535, then the rest;
    at diff pruning's densities such gaps are rare, so an index costs two bytes.
    """
    gaps = torch.diff(indices.to(torch.int64), prepend=torch.full((1,), -1, dtype=torch.int64))
    escapes = (gaps - 1) // GAP_ESCAPE
    out = torch.zeros(int(gaps.numel() + escapes.sum()), dtype=torch.int64)
    out[torch.cumsum(escapes + 1, 0) - 1] = gaps - escapes * GAP_ESCAPE
    return out.to(torch.uint16)


def decode_indices(gaps: torch.Tensor, total: int, source: str) -> torch.Tensor:
    if gaps.dtype != torch.uint16 or gaps.dim() != 1:
        raise ModuleFormatError(f"{source}: diff index gaps must be a 1-d uint16 tensor, got {gaps.dtype} {tuple(gaps.shape)}")
    stored = gaps.to(torch.int64)
    positions = torch.cumsum(torch.where(stored == 0, GAP_ESCAPE, stored), 0) - 1
    indices = positions[stored != 0]
    check_indices(indices, total, source)
    return indices


# ----------------------------------------------------------------------- applying in place
def diff_layout(model: nn.Module) -> FlatLayout:
    """The diffed tensors of a transformers model: every parameter outside the task head (tied ones once)."""
    head = set(head_parameter_names(model))
    return FlatLayout([(n, tuple(p.shape)) for n, p in model.named_parameters() if n not in head])
