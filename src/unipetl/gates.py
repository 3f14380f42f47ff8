"""Hard-concrete L0 gates as diff pruning uses them (Louizos et al. 2018; ALGORITHMS.md §4.1-4.2).

Temperature 1, log-odds ``alpha`` used directly, stretch limits (l, r):
    s = sigmoid(log u - log(1 - u) + alpha),  u ~ U(eps, 1 - eps)
    z = clamp(s * (r - l) + l, 0, 1)
The deterministic gate (the Louizos estimator, used at evaluation by default) replaces s by
sigmoid(alpha); the probability that a gate is non-zero is sigmoid(alpha - log(-l / r)).

`GatedDelta` computes delta = w * z * z_group for a flat vector of parameters without keeping
anything of parameter size for the backward pass: the noise is regenerated from a seed and the
gates recomputed chunk by chunk, so L0 training holds no sampled-gate tensors between forward and
backward and its temporaries stay chunk-sized. `ExpectedL0` does the same for the penalty.
"""

from __future__ import annotations

import math

import torch

NOISE_EPS = 1e-4


def uniform_noise(n: int, seed: int, device=None) -> torch.Tensor:
    """u ~ U(eps, 1 - eps), reproducible from ``seed``."""
    generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    u = torch.rand(n, generator=generator, device=device)
    return u.mul_(1 - 2 * NOISE_EPS).add_(NOISE_EPS)


def sample_gates(alpha: torch.Tensor, u: torch.Tensor, limits: tuple[float, float]) -> torch.Tensor:
    low, high = limits
    s = torch.sigmoid(torch.log(u) - torch.log1p(-u) + alpha)
    return (s * (high - low) + low).clamp_(0.0, 1.0)


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
    s = torch.sigmoid(torch.log(u) - torch.log1p(-u) + alpha)
    stretched = s * (high - low) + low
    slope = s * (1 - s) * (high - low)
    slope = slope.masked_fill_((stretched <= 0) | (stretched >= 1), 0.0)
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


def _chunk_groups(start: int, end: int, bounds: torch.Tensor) -> torch.Tensor:
    """The group (parameter tensor) of each entry in [start, end)."""
    return torch.searchsorted(bounds, torch.arange(start, end, device=bounds.device), right=True) - 1


class GatedDelta(torch.autograd.Function):
    """delta = w * z(alpha, u) * z_group(group_alpha, u_group) over a flat parameter vector, in chunks.

    Gradients (by hand, from noise regenerated out of the seed): dw = g z z_g; dalpha = g w z_g dz/dalpha;
    dalpha_g = sum over the group of g w z * dz_g/dalpha_g. Only w, alpha and the seed are kept for the
    backward pass, and no temporary is larger than a chunk.
    """

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, seed: int, limits, group_sizes):
        ctx.seed, ctx.limits = seed, limits
        ctx.save_for_backward(w, alpha, group_alpha)
        bounds = torch.tensor([0, *group_sizes], device=w.device).cumsum(0)
        ctx.bounds = bounds
        z_group = None if group_alpha is None else sample_gates(group_alpha, group_noise(group_alpha.numel(), seed, w.device), limits)
        delta = torch.empty_like(w)
        for start in range(0, w.numel(), CHUNK):
            end = min(w.numel(), start + CHUNK)
            part = w[start:end] * sample_gates(alpha[start:end], entry_noise(start, end, seed, w.device), limits)
            if z_group is not None:
                part *= z_group[_chunk_groups(start, end, bounds)]
            delta[start:end] = part
        return delta

    @staticmethod
    def backward(ctx, grad):
        w, alpha, group_alpha = ctx.saved_tensors
        grad_w, grad_alpha = torch.empty_like(w), torch.empty_like(alpha)
        grad_group = None
        if group_alpha is not None:
            z_group, slope_group = _gate_and_slope(group_alpha, group_noise(group_alpha.numel(), ctx.seed, w.device),
                                                   ctx.limits)
            group_sums = torch.zeros_like(group_alpha)
        for start in range(0, w.numel(), CHUNK):
            end = min(w.numel(), start + CHUNK)
            z, slope = _gate_and_slope(alpha[start:end], entry_noise(start, end, ctx.seed, w.device), ctx.limits)
            g_w = grad[start:end] * w[start:end]
            if group_alpha is not None:
                groups = _chunk_groups(start, end, ctx.bounds)
                group_sums.index_add_(0, groups, g_w * z)
                gate = z_group[groups]
                z *= gate
                slope *= gate
            grad_alpha[start:end] = g_w.mul_(slope)
            grad_w[start:end] = grad[start:end] * z
        if group_alpha is not None:
            grad_group = group_sums * slope_group
        return grad_w, grad_alpha, grad_group, None, None, None


class ExpectedL0(torch.autograd.Function):
    """`reference_expected_l0` without keeping a parameter-sized sigmoid for the backward pass."""

    @staticmethod
    def forward(ctx, alpha, group_alpha, limits, group_sizes):
        ctx.limits, ctx.group_sizes = limits, group_sizes
        ctx.save_for_backward(alpha, group_alpha)
        with torch.no_grad():
            return reference_expected_l0(alpha, limits, group_alpha, group_sizes)

    @staticmethod
    def backward(ctx, grad):
        alpha, group_alpha = ctx.saved_tensors
        shift = math.log(-ctx.limits[0] / ctx.limits[1])
        grad_alpha = torch.empty_like(alpha)
        grad_group = None
        if group_alpha is not None:
            p_group = torch.sigmoid(group_alpha - shift)
            bounds = torch.tensor([0, *ctx.group_sizes], device=alpha.device).cumsum(0)
            per_group = torch.zeros_like(group_alpha)
        for start in range(0, alpha.numel(), CHUNK):
            end = min(alpha.numel(), start + CHUNK)
            p = torch.sigmoid(alpha[start:end] - shift)
            slope = p * (1 - p)
            if group_alpha is not None:
                groups = _chunk_groups(start, end, bounds)
                per_group.index_add_(0, groups, p)
                slope *= p_group[groups]
            grad_alpha[start:end] = slope.mul_(grad)
        if group_alpha is not None:
            grad_group = grad * per_group * p_group * (1 - p_group)
        return grad_alpha, grad_group, None, None
