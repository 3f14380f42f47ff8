"""Functional forms of a change: bottleneck adapter, low-rank update, prefix, prompt, bias delta.

Plain torch modules; nothing here imports transformers. A form never owns its numbers directly: it
reads them from a *parameter source* (`source.get(name)`), so the same form runs on owned parameters
(plain adapters, LoRA), on a masked shared prototype (ProPETL) or on any other source.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "swish": F.silu, "gelu": F.gelu, "tanh": torch.tanh}


class OwnedParams(nn.Module):
    """The plain parameter source: each layer owns its tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.params = nn.ParameterDict({name: nn.Parameter(t) for name, t in tensors.items()})

    def get(self, name: str) -> torch.Tensor:
        return self.params[name]


def _kaiming(shape: tuple[int, int]) -> torch.Tensor:
    weight = torch.empty(shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def bottleneck_tensors(d_in: int, r: int, d_out: int, init: str) -> dict[str, torch.Tensor]:
    """Initial adapter weights: 'bert' = N(0, 0.02) everywhere; 'lora' = Kaiming down, zero up (identity at init)."""
    if init == "bert":
        down, up = torch.randn(r, d_in) * 0.02, torch.randn(d_out, r) * 0.02
    elif init == "lora":
        down, up = _kaiming((r, d_in)), torch.zeros(d_out, r)
    else:
        raise ValueError(f"unknown adapter init {init!r}")
    return {"down_weight": down, "down_bias": torch.zeros(r), "up_weight": up, "up_bias": torch.zeros(d_out)}


def lowrank_tensors(d_in: int, r: int, d_out: int, init: str) -> dict[str, torch.Tensor]:
    """LoRA factors A (r x in), B (out x r): 'lora' = Kaiming A, zero B (identity at init); 'bert' = N(0, 0.02)."""
    if init == "lora":
        return {"lora_A": _kaiming((r, d_in)), "lora_B": torch.zeros(d_out, r)}
    return {"lora_A": torch.randn(r, d_in) * 0.02, "lora_B": torch.randn(d_out, r) * 0.02}


class Bottleneck(nn.Module):
    """A(x) = s * up(f(down(LN_in(x)))) [-> LN_out]: the adapter of every insertion form."""

    def __init__(self, source, hidden: int, act: str = "relu", dropout: float = 0.0,
                 layernorm: str = "none", scalar: float | str = 1.0):
        super().__init__()
        self.source = source
        self.act = ACTIVATIONS[act]
        self.dropout = nn.Dropout(dropout)
        self.ln_in = nn.LayerNorm(hidden) if layernorm == "in" else None
        self.ln_out = nn.LayerNorm(hidden) if layernorm == "out" else None
        if scalar == "learnable_scalar":
            self.scalar = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("scalar", torch.tensor(float(scalar)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        get = self.source.get
        if self.ln_in is not None:
            x = self.ln_in(x)
        h = self.dropout(self.act(F.linear(x, get("down_weight"), get("down_bias"))))
        # The scale goes into the (d x r) up-projection, not onto the (batch x length x d) output.
        up_bias = get("up_bias")
        h = F.linear(h, get("up_weight") * self.scalar, None if up_bias is None else up_bias * self.scalar)
        if self.ln_out is not None:
            h = self.ln_out(h)
        return h


class _FrozenLinearPlusLowRank(torch.autograd.Function):
    """y = x W^T + b + s (x' A^T) B^T for a frozen W, b, where x' is x or its dropout.

    The same values as F.linear(x, W, b) + LowRank(x), with less memory traffic: the low-rank term is
    accumulated into the base product's output (and its input gradient into x's) in place rather than
    added as a new (tokens x features) tensor, and each thin product is taken in the layout that BLAS
    runs fastest, (N x r) = (N x d) @ (r x d)^T and (r x d) = (N x r)^T @ (N x d); autograd's own
    backward of the two F.linear calls takes two of its four thin products in a layout several times
    slower on the CPU (measured in benchmarks/bench_lora_linear.py).
    """

    @staticmethod
    def forward(ctx, x, lora_input, weight, bias, lora_A, lora_B, scaling):
        tokens = x.reshape(-1, x.shape[-1])
        lora_tokens = tokens if lora_input is None else lora_input.reshape(-1, x.shape[-1])
        hidden = lora_tokens @ lora_A.t()
        out = torch.addmm(bias, tokens, weight.t()) if bias is not None else tokens @ weight.t()
        out.addmm_(hidden, lora_B.t(), alpha=scaling)
        ctx.save_for_backward(lora_tokens, hidden, weight, lora_A, lora_B)
        ctx.scaling, ctx.shared_input, ctx.input_shape = scaling, lora_input is None, x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        lora_tokens, hidden, weight, lora_A, lora_B = ctx.saved_tensors
        grad = grad.reshape(-1, weight.shape[0])
        grad_hidden = (grad @ lora_B.t().contiguous().t()).mul_(ctx.scaling)  # (N x r), B column-major
        grad_A = grad_hidden.t() @ lora_tokens if ctx.needs_input_grad[4] else None
        grad_B = (hidden.t() @ grad).t().mul_(ctx.scaling) if ctx.needs_input_grad[5] else None
        grad_x = grad_lora_input = None
        if ctx.shared_input and ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).addmm_(grad_hidden, lora_A).view(ctx.input_shape)
        else:
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight).view(ctx.input_shape)
            if ctx.needs_input_grad[1]:
                grad_lora_input = (grad_hidden @ lora_A).view(ctx.input_shape)
        return grad_x, grad_lora_input, None, None, grad_A, grad_B, None


class LowRank(nn.Module):
    """Delta(x) = (alpha / r) * B A dropout(x)."""

    def __init__(self, source, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.source = source
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling B (out x r) instead of the output (batch x length x out) saves a full-size pass.
        return F.linear(F.linear(self.dropout(x), self.source.get("lora_A")), self.source.get("lora_B") * self.scaling)

    def add_to(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """linear(x) + self(x), in one pass (_FrozenLinearPlusLowRank) where that gives the same values:
        a plain, hook-free nn.Linear with frozen weights, outside autocast."""
        fusable = (type(linear) is nn.Linear and not linear._forward_hooks and not linear._forward_pre_hooks
                   and not linear.weight.requires_grad and (linear.bias is None or not linear.bias.requires_grad)
                   and not torch.is_autocast_enabled(x.device.type))
        if not fusable:
            return linear(x) + self(x)
        lora_input = self.dropout(x)
        return _FrozenLinearPlusLowRank.apply(x, None if lora_input is x else lora_input, linear.weight, linear.bias,
                                              self.source.get("lora_A"), self.source.get("lora_B"), self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return (self.source.get("lora_B") @ self.source.get("lora_A")) * self.scaling


class PrefixGenerator(nn.Module):
    """Li & Liang's reparameterisation: E (l x d) -> Linear(d, mid) -> tanh -> Linear(mid, n * 2w).

    Row block i of the output is the key/value prefix of attention site i; w, the width of its keys and of
    its values, is d except under grouped-query attention (Llama and others), where k and v are narrower. Outside `one_pass`, a call
    computes only the rows of its site, so every call is independent (nothing to invalidate between
    encoder and decoder calls, or between training steps). Inside `one_pass` (one forward of PetlModel),
    the first call computes every site's rows and later calls take theirs: per-site rows are slices of
    mlp_out's (n * 2d x mid) weight, and each slice's backward fills a gradient of the whole weight.
    """

    def __init__(self, length: int, hidden: int, mid_dim: int, n_sites: int, dropout: float = 0.0,
                 width: int | None = None):
        super().__init__()
        self.width, self.n_sites = width or hidden, n_sites
        self.embedding = nn.Parameter(torch.randn(length, hidden))
        self.mlp_in = nn.Linear(hidden, mid_dim)
        self.mlp_out = nn.Linear(mid_dim, n_sites * 2 * self.width)
        self.dropout = nn.Dropout(dropout)
        self._in_pass = False
        self._all_sites: torch.Tensor | None = None  # (n, l, 2d), inside one_pass only

    def site_prefix(self, index: int) -> torch.Tensor:
        """(l, 2w) key/value prefix of site ``index``."""
        if self._in_pass:
            if self._all_sites is None:
                self._all_sites = self._every_site()
            return self.dropout(self._all_sites[index])
        rows = slice(index * 2 * self.width, (index + 1) * 2 * self.width)
        mid = torch.tanh(self.mlp_in(self.embedding))
        return self.dropout(F.linear(mid, self.mlp_out.weight[rows], self.mlp_out.bias[rows]))

    def _every_site(self) -> torch.Tensor:
        mid = torch.tanh(self.mlp_in(self.embedding))
        return self.mlp_out(mid).view(len(self.embedding), self.n_sites, 2 * self.width).transpose(0, 1)

    @contextmanager
    def one_pass(self):
        """Share one computation of every site's prefix among the calls made inside (one forward)."""
        self._in_pass, self._all_sites = True, None
        try:
            yield
        finally:
            self._in_pass, self._all_sites = False, None

    @torch.no_grad()
    def eject(self) -> torch.Tensor:
        """All sites' prefixes (n, l, 2d): what is stored once training is over."""
        return self._every_site().contiguous()

    def stored_state(self) -> dict[str, torch.Tensor]:
        """A task module stores the generated prefixes, not the MLP (loaded as a `FlatPrefix`)."""
        return {"values": self.eject()}


class FlatPrefix(nn.Module):
    """Prefixes held directly as (n, l, 2d) values: no MLP (prefix_nomlp) or after ejecting the MLP."""

    def __init__(self, values: torch.Tensor, dropout: float = 0.0):
        super().__init__()
        self.values = nn.Parameter(values)
        self.dropout = nn.Dropout(dropout)

    def site_prefix(self, index: int) -> torch.Tensor:
        return self.dropout(self.values[index])


class PromptEmbedding(nn.Module):
    """l learned input embeddings prepended to the token embeddings (prompt tuning)."""

    def __init__(self, length: int, hidden: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, hidden) * 0.02)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        prompt = self.embedding.to(inputs_embeds.dtype).unsqueeze(0).expand(inputs_embeds.shape[0], -1, -1)
        return torch.cat([prompt, inputs_embeds], dim=1)
