"""Hard-concrete L0 gates as diff pruning uses them (Louizos et al. 2018; ALGORITHMS.md §4.1-4.2).

Temperature 1, log-odds ``alpha`` used directly, stretch limits (l, r):
    s = sigmoid(log u - log(1 - u) + alpha),  u ~ U(eps, 1 - eps)
    z = clamp(s * (r - l) + l, 0, 1)
The deterministic gate (the Louizos estimator, used at evaluation by default) replaces s by
sigmoid(alpha); the probability that a gate is non-zero is sigmoid(alpha - log(-l / r)).

`gated_diff` gives, for every backbone tensor, theta_pre + w * z * z_group and, in the same pass, the
expected-L0 penalty. The uniform noise u is a hash of (entry index, step seed), so nothing
parameter-sized is drawn or stored: the backward pass recomputes the gates from the index. On large
diffs both passes run as one compiled kernel per tensor; that keeps the L0 stage's step near full
fine-tuning's on a CPU, where eager PyTorch would make a dozen passes over 22 M entries.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

NOISE_EPS = 1e-4
_MASK32 = 0xFFFFFFFF
_GROUP_STREAM = 0x2545F491  # xor-ed into the seed: the group gates' noise is another stream


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply); constants below 2**31 keep every product inside int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def hashed_uniform(index: torch.Tensor, seed_low, seed_high, dtype=torch.float32) -> torch.Tensor:
    """u ~ U(eps, 1 - eps) per int64 ``index``, a pure function of (index, seed): 24 random bits each."""
    x = _mix32(_mix32((index & _MASK32) ^ seed_low) ^ seed_high ^ (index >> 32))
    return (x >> 8).to(dtype) * (1.0 - 2 * NOISE_EPS) / 2**24 + NOISE_EPS


def _seed_halves(seed: int) -> tuple[int, int]:
    return seed & _MASK32, (seed >> 32) & _MASK32


def uniform_noise(n: int, seed: int, device=None, stream: int = 0) -> torch.Tensor:
    """The noise of entries 0..n-1 for ``seed`` (what `gated_diff` draws for the flat diff's entries),
    hashed chunk by chunk: the int64 temporaries would be eight times the result's size."""
    low, high = _seed_halves(seed)
    out = torch.empty(n, device=device)
    for start in range(0, n, CHUNK):
        index = torch.arange(start, min(n, start + CHUNK), device=device)
        out[start:start + index.numel()] = hashed_uniform(index, low, high ^ stream)
    return out


def group_noise(n: int, seed: int, device=None) -> torch.Tensor:
    """The noise of the ``n`` group (per-tensor) gates for ``seed``."""
    return uniform_noise(n, seed, device, stream=_GROUP_STREAM)


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
    """Expected number of non-zero diff entries.

    Unstructured: sum_i P(z_i != 0). Structured (joint gating, the paper's form): an entry is non-zero
    only when both its own gate and its tensor's gate are open, so sum_g P(z_g != 0) * sum_{i in g} P(z_i != 0).
    Training takes this term from `gated_diff`'s fused pass; this plain form serves everything else.
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


CHUNK = 2**20  # entries per eager chunk: the eager math's temporaries stay this small


def _gate_terms(alpha, first, seed_low, seed_high, low: float, high: float, shift: float):
    """(s, stretched s, p) for consecutive entries from index ``first``; p = P(z != 0).

    One exp serves both: s = sigmoid(logit(u) + alpha) = u / (u + (1 - u) e^-alpha) and
    p = sigmoid(alpha - shift) = 1 / (1 + e^-alpha e^shift).
    """
    index = first + torch.arange(alpha.shape[0], device=alpha.device)
    u = hashed_uniform(index, seed_low, seed_high, alpha.dtype)
    decay = torch.exp(-alpha)
    s = u / (u + (1 - u) * decay)
    return s, s * (high - low) + low, 1 / (1 + decay * math.exp(shift))


def _forward_kernel(alpha, w, base, first, seed_low, seed_high, group_gate, low: float, high: float, shift: float):
    """base + w * z * z_group for one tensor's entries, and the sum of their P(z != 0)."""
    _, stretched, p = _gate_terms(alpha, first, seed_low, seed_high, low, high, shift)
    return base + w * stretched.clamp(0.0, 1.0) * group_gate, p.sum()


def _backward_kernel(grad_w_out, grad_alpha_out, alpha, w, grad, first, seed_low, seed_high, group_gate, group_open,
                     grad_l0, low: float, high: float, shift: float):
    """Writes dw = g z z_g and dalpha = g w z_g dz/dalpha + dL0 P(z_g != 0) p (1 - p) in place; returns
    sum(g w z), the tensor's share of its group gate's gradient. dz/dalpha = 1[0 < s_bar < 1] (r - l) s (1 - s)."""
    s, stretched, p = _gate_terms(alpha, first, seed_low, seed_high, low, high, shift)
    z = stretched.clamp(0.0, 1.0)
    slope = torch.where((stretched > 0) & (stretched < 1), (high - low) * s * (1 - s), torch.zeros_like(s))
    g_w = grad * w
    grad_w_out.copy_(grad * z * group_gate)
    grad_alpha_out.copy_(g_w * group_gate * slope + grad_l0 * group_open * p * (1 - p))
    return (g_w * z).sum()


# Large diffs (a whole backbone) run the kernels compiled: eager PyTorch makes a dozen passes over each
# tensor. Compiling takes ~20 s once per process, so small diffs (tests, tiny models) stay eager.
COMPILE_MIN_ENTRIES = 4_000_000
EAGER_KERNELS = {"forward": _forward_kernel, "backward": _backward_kernel}
_kernels: dict[str, object] = {}


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


def _pieces(sizes, kernels):
    """(tensor, global start, local start, local end) pieces: whole tensors for the compiled kernels
    (they keep no temporaries), CHUNK-sized pieces for the eager math."""
    offset = 0
    for group, size in enumerate(sizes):
        step = size if kernels is not EAGER_KERNELS else CHUNK
        for lo in range(0, size, max(step, 1)):
            yield group, offset, lo, min(size, lo + step)
        offset += size


def _scalar(value, like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype or like.dtype, device=like.device)


class GatedDiffFunction(torch.autograd.Function):
    """Per tensor: base + w * z(alpha, u) * z_group(group_alpha, u_group); last output: the expected L0.

    Gradients by hand: dw = g z z_g; dalpha = g w z_g dz/dalpha (+ the penalty's); dalpha_g = the sum over
    its tensor of g w z * dz_g/dalpha_g (+ the penalty's). Only w, alpha and the group logits are kept for
    the backward pass: the noise is recomputed from the entry index and the seed.
    """

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, seed: int, limits, sizes, *bases):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, alpha, group_alpha)
        low, high = limits
        ctx.sizes = list(sizes)
        # What both passes hand every kernel call; the group gates (one per tensor) are tiny and kept.
        ctx.seed_halves = tuple(_scalar(v, w, torch.int64) for v in _seed_halves(seed))
        ctx.constants = (low, high, math.log(-low / high))
        ctx.z_group, ctx.slope_group, ctx.group_open = _group_gates(group_alpha, seed, tuple(limits), len(sizes), w)
        kernels = _chunk_kernels(w.numel())
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        pieces = [[] for _ in sizes]
        open_sums = [[] for _ in sizes]
        for group, offset, lo, hi in _pieces(sizes, kernels):
            base = bases[group].reshape(-1)[lo:hi] if bases else zero
            start, end = offset + lo, offset + hi
            out, open_sum = kernels["forward"](alpha[start:end], w[start:end], base, _scalar(start, w, torch.int64),
                                               *ctx.seed_halves, ctx.z_group[group], *ctx.constants)
            pieces[group].append(out)
            open_sums[group].append(open_sum)
        ctx.per_group = torch.stack([torch.stack(parts).sum() if parts else zero for parts in open_sums])
        penalty = (ctx.group_open * ctx.per_group).sum()
        outputs = [parts[0] if len(parts) == 1 else torch.cat(parts) if parts else w.new_zeros(0) for parts in pieces]
        if bases:  # the backbone's shapes and dtype (a bf16 backbone gets bf16 tensors)
            outputs = [out.view(base.shape).to(base.dtype) for out, base in zip(outputs, bases)]
        return (*outputs, penalty)

    @staticmethod
    def backward(ctx, *grads):
        w, alpha, group_alpha = ctx.saved_tensors
        *grad_outputs, grad_penalty = grads
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        grad_penalty = zero if grad_penalty is None else grad_penalty
        kernels = _chunk_kernels(w.numel())
        grad_w, grad_alpha = torch.empty_like(w), torch.empty_like(alpha)
        to_group = [[] for _ in ctx.sizes]
        for group, offset, lo, hi in _pieces(ctx.sizes, kernels):
            grad = grad_outputs[group]
            grad = zero if grad is None else grad.reshape(-1)[lo:hi]
            start, end = offset + lo, offset + hi
            to_group[group].append(kernels["backward"](
                grad_w[start:end], grad_alpha[start:end], alpha[start:end], w[start:end], grad,
                _scalar(start, w, torch.int64), *ctx.seed_halves, ctx.z_group[group], ctx.group_open[group],
                grad_penalty, *ctx.constants))
        grad_group = None
        if group_alpha is not None:
            sums = torch.stack([torch.stack(parts).sum() if parts else zero for parts in to_group])
            p_group = ctx.group_open
            grad_group = sums * ctx.slope_group + grad_penalty * ctx.per_group * p_group * (1 - p_group)
        return (grad_w, grad_alpha, grad_group, None, None, None, *[None] * (len(grads) - 1))


def _group_gates(group_alpha, seed: int, limits, groups: int, like: torch.Tensor):
    """Each tensor's sampled gate z_g, dz_g/dalpha_g and P(z_g != 0): z_g = 1 without group gates (the
    unstructured form)."""
    if group_alpha is None:
        ones = torch.ones(groups, dtype=like.dtype, device=like.device)
        return ones, None, ones
    alpha = group_alpha.detach()
    z, slope = _gate_and_slope(alpha, group_noise(alpha.numel(), seed, like.device), limits)
    return z, slope, open_probability(alpha, limits)


def gated_diff(w, alpha, group_alpha, seed: int, limits, sizes, bases=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per tensor, base + w * z * z_group (the bases' shapes; 1-d deltas without bases), and the expected
    L0 of the gates, from one pass. ``seed`` picks the noise; the same seed gives the same gates."""
    outputs = GatedDiffFunction.apply(w, alpha, group_alpha, seed, tuple(limits), tuple(sizes), *(bases or ()))
    return list(outputs[:-1]), outputs[-1]
