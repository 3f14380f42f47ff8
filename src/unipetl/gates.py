"""Hard-concrete L0 gates as diff pruning uses them (Louizos et al. 2018; ALGORITHMS.md §4.1-4.2).

Temperature 1, log-odds ``alpha`` used directly, stretch limits (l, r):
    s = sigmoid(log u - log(1 - u) + alpha),  u ~ U(eps, 1 - eps)
    z = clamp(s * (r - l) + l, 0, 1)
The deterministic gate (the Louizos estimator, used at evaluation by default) replaces s by
sigmoid(alpha); the probability that a gate is non-zero is sigmoid(alpha - log(-l / r)).

`GatedDelta` computes delta = w * z * z_group for a flat vector of parameters keeping only the
uniform noise (one float per entry, drawn from a seed) for the backward pass, where the gates are
recomputed chunk by chunk: L0 training holds no sampled-gate tensors between forward and backward
and its temporaries stay chunk-sized. `ExpectedL0` keeps nothing parameter-sized for the penalty.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import warnings

import torch

NOISE_EPS = 1e-4


def uniform_noise(n: int, seed: int, device=None) -> torch.Tensor:
    """u ~ U(eps, 1 - eps), reproducible from ``seed``."""
    generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    u = torch.rand(n, generator=generator, device=device)
    return u.mul_(1 - 2 * NOISE_EPS).add_(NOISE_EPS)


def sample_gates(alpha: torch.Tensor, u: torch.Tensor, limits: tuple[float, float]) -> torch.Tensor:
    low, high = limits
    s = torch.logit(u.to(alpha.dtype)).add_(alpha).sigmoid_()  # log u - log(1 - u) = logit(u)
    return s.mul_(high - low).add_(low).clamp_(0.0, 1.0)


def deterministic_gates(alpha: torch.Tensor, limits: tuple[float, float]) -> torch.Tensor:
    low, high = limits
    return (torch.sigmoid(alpha) * (high - low) + low).clamp(0.0, 1.0)


def open_probability(alpha: torch.Tensor, limits: tuple[float, float]) -> torch.Tensor:
    """P(z != 0) = sigmoid(alpha - log(-l / r))."""
    low, high = limits
    return torch.sigmoid(alpha - math.log(-low / high))


def expected_l0(alpha: torch.Tensor, limits: tuple[float, float], group_alpha: torch.Tensor | None = None,
                group_sizes: list[int] | None = None) -> torch.Tensor:
    """Expected number of non-zero diff entries (see `reference_expected_l0`), with a chunked backward."""
    return ExpectedL0.apply(alpha, group_alpha, limits, group_sizes)


def reference_expected_l0(alpha: torch.Tensor, limits: tuple[float, float], group_alpha: torch.Tensor | None = None,
                          group_sizes: list[int] | None = None) -> torch.Tensor:
    """Expected number of non-zero diff entries.

    Unstructured: sum_i P(z_i != 0). Structured (joint gating, the paper's form): an entry is non-zero
    only when both its own gate and its tensor's gate are open, so sum_g P(z_g != 0) * sum_{i in g} P(z_i != 0).
    """
    p = open_probability(alpha, limits)
    if group_alpha is None:
        return p.sum()
    per_group = torch.stack([part.sum() for part in p.split(group_sizes)])
    return (open_probability(group_alpha, limits) * per_group).sum()


def _gate_and_slope(alpha: torch.Tensor, u: torch.Tensor, limits: tuple[float, float]):
    """z and dz/dalpha = 1[0 < s_bar < 1] * (r - l) * s * (1 - s)."""
    low, high = limits
    s = torch.logit(u.to(alpha.dtype)).add_(alpha).sigmoid_()
    slope = (1 - s).mul_(s).mul_(high - low)
    stretched = s.mul_(high - low).add_(low)
    slope.masked_fill_((stretched <= 0) | (stretched >= 1), 0.0)
    return stretched.clamp_(0.0, 1.0), slope


CHUNK = 2**20  # entries per chunk: temporaries of the gated diff stay this small


def entry_noise(start: int, end: int, seed: int, device=None) -> torch.Tensor:
    """The per-entry noise of entries [start, end) (chunk-aligned ``start``); chunk k draws from seed + k."""
    return uniform_noise(end - start, seed + start // CHUNK, device)


def group_noise(n: int, seed: int, device=None) -> torch.Tensor:
    return uniform_noise(n, seed - 1, device)


def full_entry_noise(n: int, seed: int, device=None) -> torch.Tensor:
    """The noise `GatedDelta` uses for all ``n`` entries (for tests and the sampled evaluation gate)."""
    return torch.cat([entry_noise(i, min(n, i + CHUNK), seed, device) for i in range(0, n, CHUNK)] or [torch.zeros(0)])


def _segments(start: int, end: int, bounds: list[int]):
    """(group, local start, local end) for each group (parameter tensor) overlapping entries [start, end)."""
    first = bisect.bisect_right(bounds, start) - 1
    for group in range(first, len(bounds) - 1):
        if bounds[group] >= end:
            break
        yield group, max(bounds[group], start) - start, min(bounds[group + 1], end) - start


def _forward_chunk(alpha, u, w, scale, low: float, high: float):
    """w * z * scale for one chunk (scale: each entry's group gate, or 1)."""
    s = torch.sigmoid(torch.logit(u) + alpha)
    return (s * (high - low) + low).clamp(0.0, 1.0) * w * scale


def _backward_chunk(alpha, u, w, grad, scale, low: float, high: float):
    """(g * w * z for the group sums, dalpha, dw) for one chunk; dz/dalpha = 1[0 < s_bar < 1] (r - l) s (1 - s)."""
    s = torch.sigmoid(torch.logit(u) + alpha)
    stretched = s * (high - low) + low
    z = stretched.clamp(0.0, 1.0)
    slope = torch.where((stretched > 0) & (stretched < 1), (high - low) * s * (1 - s), torch.zeros_like(s))
    g_w = grad * w
    return g_w * z, g_w * slope * scale, grad * z * scale


# Large diffs (a whole backbone) run the chunk math as fused kernels: eager PyTorch makes a dozen
# passes over each chunk, and these passes dominate diff pruning's step time on a CPU. Compiling
# takes ~20 s once per process, so small diffs (tests, tiny models) stay eager.
COMPILE_MIN_ENTRIES = 4_000_000
_kernels: dict[str, object] = {}


def _penalty_slope_chunk(alpha, scale, grad, shift: float):
    """d E[L0] / d alpha for one chunk: grad * P(z_group != 0) * p (1 - p), p = sigmoid(alpha - shift)."""
    p = torch.sigmoid(alpha - shift)
    return p * (1 - p) * scale * grad


EAGER_KERNELS = {"forward": _forward_chunk, "backward": _backward_chunk, "penalty": _penalty_slope_chunk}


def _chunk_kernels(total: int) -> dict:
    if total < COMPILE_MIN_ENTRIES or os.environ.get("UNIPETL_EAGER_GATES"):
        return EAGER_KERNELS
    if not _kernels:
        _kernels.update({name: _compiled_or_eager(name, fn) for name, fn in EAGER_KERNELS.items()})
    return _kernels


def _compiled_or_eager(name: str, eager):
    """torch.compile compiles on the first call; if that fails (no C++ toolchain, say), use the eager
    math, which is the same computation, from then on."""
    compiled = torch.compile(eager, dynamic=True)

    def run(*args):
        if _kernels.get(name) is not run:  # already fell back
            return eager(*args)
        try:
            return compiled(*args)
        except Exception as err:
            warnings.warn(f"diff pruning gates run eagerly: torch.compile failed ({type(err).__name__}: {err})")
            _kernels.update(EAGER_KERNELS)
            return eager(*args)

    run.compiled = compiled
    return run


def _group_scale(start: int, end: int, bounds: list[int], gates: list[float] | None, like: torch.Tensor):
    """Each entry's group gate over entries [start, end), or the scalar 1 without groups."""
    if gates is None:
        return torch.ones((), dtype=like.dtype, device=like.device)
    scale = torch.empty(end - start, dtype=like.dtype, device=like.device)
    for group, lo, hi in _segments(start, end, bounds):
        scale[lo:hi] = gates[group]
    return scale


class GatedDelta(torch.autograd.Function):
    """delta = w * z(alpha, u) * z_group(group_alpha, u_group) over a flat parameter vector, in chunks.

    Gradients (by hand, from the forward pass's noise): dw = g z z_g; dalpha = g w z_g dz/dalpha;
    dalpha_g = sum over the group of g w z * dz_g/dalpha_g. w, alpha and the noise (one float per
    entry) are kept for the backward pass; the gates are recomputed chunk by chunk, so no other
    temporary is larger than a chunk.
    """

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, seed: int, limits, group_sizes):
        ctx.seed, ctx.limits = seed, limits
        ctx.save_for_backward(w, alpha, group_alpha)
        bounds = [0, *itertools.accumulate(group_sizes)]
        ctx.bounds = bounds
        z_group = None if group_alpha is None else sample_gates(
            group_alpha.detach(), group_noise(group_alpha.numel(), seed, w.device), limits).tolist()
        forward_chunk = _chunk_kernels(w.numel())["forward"]
        delta = torch.empty_like(w)
        # The noise is kept for the backward pass (one float per entry) when requires_grad: drawing it again
        # would cost as much as the rest of the gate math on a CPU.
        noise = torch.empty_like(w) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        for start in range(0, w.numel(), CHUNK):
            end = min(w.numel(), start + CHUNK)
            u = entry_noise(start, end, seed, w.device).to(w.dtype)
            if noise is not None:
                noise[start:end] = u
            delta[start:end] = forward_chunk(alpha[start:end], u, w[start:end],
                                             _group_scale(start, end, bounds, z_group, w), *limits)
        ctx.noise = noise
        return delta

    @staticmethod
    def backward(ctx, grad):
        w, alpha, group_alpha = ctx.saved_tensors
        grad_w, grad_alpha = torch.empty_like(w), torch.empty_like(alpha)
        grad_group, gates = None, None
        if group_alpha is not None:
            z_group, slope_group = _gate_and_slope(group_alpha, group_noise(group_alpha.numel(), ctx.seed, w.device),
                                                   ctx.limits)
            gates = z_group.tolist()
            group_sums = [0.0] * group_alpha.numel()
        backward_chunk = _chunk_kernels(w.numel())["backward"]
        for start in range(0, w.numel(), CHUNK):
            end = min(w.numel(), start + CHUNK)
            u = ctx.noise[start:end]
            to_group, grad_alpha[start:end], grad_w[start:end] = backward_chunk(
                alpha[start:end], u, w[start:end], grad[start:end], _group_scale(start, end, ctx.bounds, gates, w),
                *ctx.limits)
            if gates is not None:
                for group, lo, hi in _segments(start, end, ctx.bounds):
                    group_sums[group] += float(to_group[lo:hi].sum())
        if group_alpha is not None:
            grad_group = torch.tensor(group_sums, dtype=group_alpha.dtype, device=group_alpha.device) * slope_group
        return grad_w, grad_alpha, grad_group, None, None, None


class ExpectedL0(torch.autograd.Function):
    """`reference_expected_l0` without keeping a parameter-sized sigmoid for the backward pass."""

    @staticmethod
    def forward(ctx, alpha, group_alpha, limits, group_sizes):
        ctx.limits, ctx.group_sizes = limits, group_sizes
        ctx.save_for_backward(alpha, group_alpha)
        with torch.no_grad():
            p = open_probability(alpha, limits)
            if group_alpha is None:
                return p.sum()
            ctx.per_group = torch.stack([part.sum() for part in p.split(group_sizes)])  # kept for backward: tiny
            return (open_probability(group_alpha, limits) * ctx.per_group).sum()

    @staticmethod
    def backward(ctx, grad):
        alpha, group_alpha = ctx.saved_tensors
        shift = math.log(-ctx.limits[0] / ctx.limits[1])
        grad_alpha = torch.empty_like(alpha)
        grad_group, group_open = None, None
        bounds = [0, *itertools.accumulate(ctx.group_sizes)] if group_alpha is not None else None
        if group_alpha is not None:
            p_group = torch.sigmoid(group_alpha - shift)
            group_open = p_group.tolist()
        penalty_chunk = _chunk_kernels(alpha.numel())["penalty"]
        for start in range(0, alpha.numel(), CHUNK):
            end = min(alpha.numel(), start + CHUNK)
            grad_alpha[start:end] = penalty_chunk(alpha[start:end], _group_scale(start, end, bounds, group_open, alpha),
                                                  grad, shift)
        if group_alpha is not None:
            grad_group = grad * ctx.per_group * p_group * (1 - p_group)
        return grad_alpha, grad_group, None, None
