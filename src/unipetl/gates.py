"""Hard-concrete L0 gates as diff pruning uses them (Louizos et al. 2018; ALGORITHMS.md §4.1-4.2).

Temperature 1, log-odds ``alpha`` used directly, stretch limits (l, r):
    s = sigmoid(log u - log(1 - u) + alpha),  u ~ U(eps, 1 - eps)
    z = clamp(s * (r - l) + l, 0, 1)
The deterministic gate (the Louizos estimator, used at evaluation by default) replaces s by
sigmoid(alpha); the probability that a gate is non-zero is sigmoid(alpha - log(-l / r)).

`GatedDelta` computes delta = w * z * z_group for a flat vector of parameters without keeping
anything of parameter size for the backward pass: the noise is regenerated from a seed and the
gates recomputed, so L0 training holds no sampled-gate tensors between forward and backward.
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


class GatedDelta(torch.autograd.Function):
    """delta = w * z(alpha, u) * z_group(group_alpha, u_group) repeated over each group's entries.

    Gradients (by hand, recomputed from the seed): dw = g z z_g; dalpha = g w z_g dz/dalpha;
    dalpha_g = sum over the group of g w z * dz_g/dalpha_g.
    """

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, seed: int, limits, group_sizes):
        ctx.seed, ctx.limits, ctx.group_sizes = seed, limits, group_sizes
        ctx.save_for_backward(w, alpha, group_alpha)
        u, u_group = _noise(w, group_alpha, seed)
        delta = w * sample_gates(alpha, u, limits)
        if group_alpha is not None:
            delta *= torch.repeat_interleave(sample_gates(group_alpha, u_group, limits),
                                             torch.tensor(group_sizes, device=w.device))
        return delta

    @staticmethod
    def backward(ctx, grad):
        w, alpha, group_alpha = ctx.saved_tensors
        u, u_group = _noise(w, group_alpha, ctx.seed)
        z, slope = _gate_and_slope(alpha, u, ctx.limits)
        del u
        grad_w_times_w = grad * w
        grad_group = None
        if group_alpha is not None:
            z_group, slope_group = _gate_and_slope(group_alpha, u_group, ctx.limits)
            sizes = torch.tensor(ctx.group_sizes, device=w.device)
            per_entry_group = torch.repeat_interleave(z_group, sizes)
            summed = torch.stack([part.sum() for part in (grad_w_times_w * z).split(ctx.group_sizes)])
            grad_group = summed * slope_group
            z *= per_entry_group
            slope *= per_entry_group
            del per_entry_group
        grad_alpha = grad_w_times_w.mul_(slope)
        grad_w = grad.mul(z)
        return grad_w, grad_alpha, grad_group, None, None, None


def _noise(w: torch.Tensor, group_alpha: torch.Tensor | None, seed: int):
    u = uniform_noise(w.numel(), seed, w.device)
    u_group = None if group_alpha is None else uniform_noise(group_alpha.numel(), seed + 1, w.device)
    return u, u_group
