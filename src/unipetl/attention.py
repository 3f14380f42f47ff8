"""Prefix tuning and its cross-attention relatives inside the backbone's own attention.

transformers 5 routes every attention of BERT, RoBERTa, T5 and BART through a registry of attention
functions chosen by `config._attn_implementation`. We register one more function that, for modules
carrying a prefix, attends over the prefix keys/values as well (He et al.'s options: `concat`,
`cross_attn`, `cross_attn_noln`, `cross_attn_relu`, composed by `add` or `gate_add`), and defers to
the original implementation everywhere else. MPNet computes attention by hand, so its attention
forward is replaced by a short equivalent that calls the same function.

Training on the CPU, dropout on the attention probabilities is most of what torch's dropout costs, and
SDPA draws it internally. With `fast_dropout`, attention that would run SDPA's math path with dropout
runs the same math here with unipetl.dropout's sampler (`attend`): prefix sites through their
PrefixSite, and models without a prefix through `dropout_attention`, registered beside SDPA.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import dropout as fast

IMPLEMENTATION = "unipetl_prefix"
DROPOUT_IMPLEMENTATION = "unipetl_dropout"
PREFIX_ATTR = "_unipetl_prefix"
FALLBACK_ATTR = "_unipetl_fallback"


class PrefixSite(nn.Module):
    """The prefix of one attention module: where its keys/values come from and how they compose."""

    def __init__(self, source: nn.Module, index: int, option: str, composition: str, hidden: int,
                 query_proj: nn.Module | None = None, capture=None, fast_dropout: bool = False):
        super().__init__()
        self.fast_dropout = fast_dropout
        # The source (shared by all sites of a stack) is owned by PetlModel.methods and the query
        # projection by the backbone: referenced here, not registered, so each is stored once.
        object.__setattr__(self, "source", source)  # source.site_prefix(index) -> (l, 2d)
        object.__setattr__(self, "query_proj", query_proj)
        self.index, self.option, self.composition = index, option, composition
        # cross_attn and cross_attn_relu read their query from a new LayerNorm of the attention input.
        self.query_ln = nn.LayerNorm(hidden) if option in ("cross_attn", "cross_attn_relu") else None
        self.capture = capture  # InputCapture on the attention module, for those options

    def key_value(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype):
        prefix = self.source.site_prefix(self.index).to(dtype)  # (l, 2d)
        length = prefix.shape[0]
        keys, values = prefix.split(heads * head_dim, dim=-1)
        shape = (1, length, heads, head_dim)
        keys = keys.reshape(shape).transpose(1, 2).expand(batch, -1, -1, -1)
        values = values.reshape(shape).transpose(1, 2).expand(batch, -1, -1, -1)
        return keys, values

    def separate_query(self, heads: int, head_dim: int) -> torch.Tensor:
        x = self.query_ln(self.capture.value)
        q = self.query_proj(x)
        return q.view(*q.shape[:-1], heads, head_dim).transpose(1, 2)


def _token_bias(module, query, key, attention_mask, position_bias, is_causal):
    """Additive float bias over the token keys: padding/causal mask plus T5's position bias."""
    q_len, k_len = query.shape[2], key.shape[2]
    bias = None
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~attention_mask, torch.finfo(query.dtype).min)
        else:
            bias = attention_mask.to(query.dtype)
        bias = bias[..., :k_len]
    elif q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", False)):
        # Bottom-right aligned causal mask (query i sees keys up to its own position).
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        bias = torch.zeros(q_len, k_len, dtype=query.dtype, device=query.device).masked_fill(
            ~allowed, torch.finfo(query.dtype).min)[None, None]
    if position_bias is not None:
        position_bias = position_bias[..., -q_len:, :k_len].to(query.dtype)
        bias = position_bias if bias is None else bias + position_bias
    elif bias is not None and not bias.any():
        bias = None  # no padding: without a mask, SDPA can use its fused kernel
    return bias


def attend(query, key, value, bias, dropout: float, scaling: float, fast_dropout: bool) -> torch.Tensor:
    """softmax(q k^T * scaling + bias) v with dropout on the probabilities: SDPA, or on the CPU in training
    with fast_dropout, SDPA's math path written out with unipetl.dropout's sampler."""
    if not (fast_dropout and fast.uses_fast_path(query, dropout, True)):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling)
    # Scaling the (b, h, q, d) query costs a quarter of scaling the (b, h, q, k) scores at k = 4d.
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if bias is not None:
        scores = scores.add_(bias)  # in place: matmul's backward does not need its output
    return torch.matmul(fast.dropout(scores.softmax(dim=-1), dropout), value)


def dropout_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      position_bias=None, **kwargs):
    """SDPA, except that non-causal attention without a position bias, in training on the CPU with dropout,
    goes through `attend` (the fast dropout sampler). Causal and position-biased attention (decoders, T5)
    keep SDPA's own handling of those."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (module.training and fast.uses_fast_path(query, dropout, True) and position_bias is None
            and (query.shape[2] == 1 or not causal) and not kwargs.get("output_attentions")):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        bias = _token_bias(module, query, key, attention_mask, None, False)  # SDPA's bool mask as a float bias
        return attend(query, key, value, bias, dropout, scaling, True).transpose(1, 2).contiguous(), None
    if position_bias is not None:
        kwargs["position_bias"] = position_bias
    if is_causal is not None:
        kwargs["is_causal"] = is_causal
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)


def _repeat_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, kv_heads, n, d) -> (b, heads, n, d), each key/value head repeated for its group of query heads."""
    groups = heads // states.shape[1]
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     position_bias=None, **kwargs):
    site: PrefixSite | None = getattr(module, PREFIX_ATTR, None)
    if site is None:
        fallback = ALL_ATTENTION_FUNCTIONS.get(getattr(module, FALLBACK_ATTR, "sdpa"))
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        if is_causal is not None:
            kwargs["is_causal"] = is_causal
        return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    batch, heads, q_len, head_dim = query.shape
    scaling = head_dim ** -0.5 if scaling is None else scaling
    bias = _token_bias(module, query, key, attention_mask, position_bias, is_causal)
    # Under grouped-query attention the prefix has the key/value heads; each serves its group of query heads.
    prefix_k, prefix_v = site.key_value(batch, key.shape[1], head_dim, query.dtype)
    key, value, prefix_k, prefix_v = (_repeat_heads(t, heads) for t in (key, value, prefix_k, prefix_v))
    dropout = dropout if module.training else 0.0
    # A task bank's site masks each row's prefix padding (prefixes of several lengths in one batch).
    prefix_bias = getattr(site, "prefix_bias", None)
    prefix_bias = prefix_bias(batch, prefix_k.shape[2], query.dtype) if prefix_bias is not None else None

    if site.option == "concat":
        # Original prefix tuning: one softmax over prefix and token keys (implicitly gated).
        keys, values = torch.cat([prefix_k, key], dim=2), torch.cat([prefix_v, value], dim=2)
        if prefix_bias is not None:
            token_bias = bias.expand(batch, -1, q_len, -1) if bias is not None else query.new_zeros(batch, 1, q_len, key.shape[2])
            bias = torch.cat([prefix_bias.expand(batch, token_bias.shape[1], q_len, -1), token_bias], dim=-1)
        elif bias is not None:
            bias = F.pad(bias.expand(batch, -1, q_len, -1), (prefix_k.shape[2], 0))
        out = attend(query, keys, values, bias, dropout, scaling, site.fast_dropout)
        return out.transpose(1, 2).contiguous(), None

    token_out = attend(query, key, value, bias, dropout, scaling, site.fast_dropout)
    prefix_query = query if site.option == "cross_attn_noln" else site.separate_query(heads, head_dim)
    if site.option == "cross_attn_relu":
        # Multi-head parallel adapter: ReLU instead of softmax, no scaling.
        delta = torch.matmul(F.relu(torch.matmul(prefix_query, prefix_k.transpose(-1, -2))), prefix_v)
        return (token_out + delta).transpose(1, 2).contiguous(), None

    prefix_logits = torch.matmul(prefix_query, prefix_k.transpose(-1, -2)) * scaling
    probs = prefix_logits.softmax(dim=-1)
    probs = fast.dropout(probs, dropout) if site.fast_dropout else F.dropout(probs, p=dropout, training=module.training)
    delta = torch.matmul(probs, prefix_v)
    if site.composition == "add":
        out = token_out + delta
    else:
        # gate_add: lambda = prefix mass / (prefix mass + token mass) of one joint softmax.
        token_logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if bias is not None:
            token_logits = token_logits + bias
        gate = torch.sigmoid(prefix_logits.logsumexp(-1, keepdim=True) - token_logits.logsumexp(-1, keepdim=True))
        out = (1 - gate) * token_out + gate * delta
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    if IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, prefix_attention)
        # Eager masks are additive floats of the full (query, key) shape: one format to extend.
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)
    if DROPOUT_IMPLEMENTATION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(DROPOUT_IMPLEMENTATION, dropout_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(DROPOUT_IMPLEMENTATION, sdpa_mask)  # SDPA's masks, as it falls back to SDPA


def enable_dropout_attention(model: nn.Module) -> str | None:
    """Route an SDPA model's attention through `dropout_attention`; returns the implementation it replaced,
    or None where the model does not use SDPA: its attention keeps its own dropout (MPNet's, computed by hand,
    draws it from an nn.Dropout module, which enable_fast_dropout switches)."""
    _register()
    original = model.config._attn_implementation
    if original != "sdpa":
        return None
    model.set_attn_implementation(DROPOUT_IMPLEMENTATION)
    return original


def enable_prefix_attention(model: nn.Module, attention_modules: list[nn.Module], manual: bool,
                            fast_dropout: bool = False) -> str:
    """Route the model's attention through `prefix_attention`; returns the implementation it replaced."""
    _register()
    original = model.config._attn_implementation
    if original == IMPLEMENTATION:
        return getattr(model, FALLBACK_ATTR, "sdpa")
    fallback = original if original in ALL_ATTENTION_FUNCTIONS else "sdpa"
    if fast_dropout and fallback == "sdpa":
        fallback = DROPOUT_IMPLEMENTATION
    for module in attention_modules:
        object.__setattr__(module, FALLBACK_ATTR, fallback)
        if manual:
            module.forward = types.MethodType(_manual_attention_forward, module)
    object.__setattr__(model, FALLBACK_ATTR, original)
    if not manual:
        model.set_attn_implementation(IMPLEMENTATION)
    return original


def disable_prefix_attention(model: nn.Module, attention_modules: list[nn.Module], original: str,
                             manual: bool) -> None:
    for module in attention_modules:
        for attr in (PREFIX_ATTR, FALLBACK_ATTR):
            module.__dict__.pop(attr, None)
        module.__dict__.pop("forward", None)
    model.__dict__.pop(FALLBACK_ATTR, None)
    if not manual:
        model.set_attn_implementation(original)


def _manual_attention_forward(self, hidden_states, attention_mask=None, position_bias=None,
                              output_attentions=False, **kwargs):
    """MPNet's self-attention (q, k, v, o linears; additive mask plus relative position bias)."""
    batch, length, _ = hidden_states.shape
    head_dim = self.attention_head_size
    shape = (batch, length, -1, head_dim)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    out, _ = prefix_attention(self, q, k, v, attention_mask, dropout=self.dropout.p,
                              scaling=1 / math.sqrt(head_dim), is_causal=False, position_bias=position_bias)
    o = self.o(out.reshape(batch, length, -1))
    return (o, None) if output_attentions else (o,)
