"""Bottleneck adapters (Houlsby, Pfeiffer, parallel, scaled parallel; He et al. 2022, ALGORITHMS.md §1.1):
at the attention output or the FFN, sequential or parallel, their numbers from the parameter source."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..forms import Bottleneck, bottleneck_tensors
from ..insertion import PfeifferLayerNorm
from ..mixing import MixedOp, rows_of
from ..registry import register_method
from .base import Method


class BottleneckOp(MixedOp):
    """Bottleneck adapters of many tasks at one site: each row's down and up projections (and LN
    parameters) gathered from its task, then batched matmuls. Parts batch together when they share the
    activation and LN placement (the signature); ranks that differ are zero-padded, and a task without
    an adapter here has zero weights, so its rows get exactly zero. ProAdapter's masked weights are
    built for the tasks present in the batch only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, layernorm = self.signature
        act = next(iter(self.parts.values())).act  # one activation per signature
        rows = self.routing.rows
        h = rows_of(x, rows)
        if layernorm == "in":
            h = self._layernorm(h, "ln_in")
        down = self.source_rows("down_weight")
        down_bias = self.source_rows("down_bias")
        up = self.source_rows("up_weight", scale=lambda a: a.scalar)
        up_bias = self.per_row(lambda a: _up_bias(a) * a.scalar)
        h = torch.baddbmm(down_bias[:, None], h, down.transpose(1, 2))
        h = torch.baddbmm(up_bias[:, None], act(h), up.transpose(1, 2))
        if layernorm == "out":
            h = self._layernorm(h, "ln_out") * self.row_active(h)[:, None, None]
        return h.view(*x.shape[:-1], h.shape[-1])

    def _layernorm(self, h: torch.Tensor, name: str) -> torch.Tensor:
        ln = next(getattr(a, name) for a in self.parts.values())
        weight = self.per_row(lambda a: getattr(a, name).weight)
        bias = self.per_row(lambda a: getattr(a, name).bias)
        return torch.addcmul(bias[:, None], F.layer_norm(h, h.shape[-1:], eps=ln.eps), weight[:, None])


def _up_bias(adapter: Bottleneck) -> torch.Tensor:
    bias = adapter.source.get("up_bias")
    return bias if bias is not None else adapter.source.get("up_weight").new_zeros(adapter.source.get("up_weight").shape[0])


def signature(adapter: Bottleneck) -> tuple:
    """What must agree for adapters to batch: the activation and where the LN is."""
    layernorm = "in" if adapter.ln_in is not None else "out" if adapter.ln_out is not None else "none"
    return (adapter.act.__name__, layernorm)


def attach_at_pfeiffer_position(method: Method, layer, module, op: type = BottleneckOp, signature: tuple = ()) -> None:
    """Put ``module`` at Pfeiffer's position of ``layer``: y = LN(z + A(LN(z))) after a post-LN block's FFN
    residual; on a pre-LN block (T5), A reads the FFN output plus the FFN input and adds to the output.
    ``op`` and ``signature``: how a task bank batches it (mixing.Part)."""
    host = method.host
    if layer.ffn_layernorm is not None:
        host.replace_module(layer.paths["ffn_layernorm"], PfeifferLayerNorm(layer.ffn_layernorm, module))
        method.part(op, layer.paths["ffn_layernorm"], "pfeiffer", module, signature=signature)
        return
    wrapper = host.wrap_linear(layer.paths["ffn_out"])
    object.__setattr__(wrapper, "output_adapter", module)
    wrapper.output_mode = "pfeiffer_preln"
    wrapper.output_capture = host.capture(layer.ffn_in[0])
    method.part(op, layer.paths["ffn_out"], "output:pfeiffer_preln", module, capture=layer.paths["ffn_in.0"],
                signature=signature)


class _Adapter(Method):
    def adapter(self, key: str, group: str, d: int, r: int, init: str, layernorm: str, scalar) -> Bottleneck:
        cfg = self.config
        source = self.host.source.params(group, lambda: bottleneck_tensors(d, r, d, init), ("down_weight", "up_weight"))
        return self.register(key, Bottleneck(source, d, cfg.adapter_act, cfg.adapter_dropout, layernorm, scalar))


@register_method("attn_mode", "adapter")
class AttentionAdapter(_Adapter):
    def attach(self) -> None:
        cfg, host = self.config, self.host
        d = host.sites.hidden_size
        r = cfg.resolve_bn("attn", d)
        for layer in host.sites.layers:
            for j, site in enumerate(layer.attention):
                # He et al.: the attention adapter always has its own LN on the input, bert init, scalar 1.
                adapter = self.adapter(f"{layer.stack}{layer.index}_attn{j}_adapter", "attn_adapter", d, r, "bert", "in", 1.0)
                wrapper = host.wrap_linear(site.paths["o"])
                if cfg.attn_option == "sequential":
                    object.__setattr__(wrapper, "output_adapter", adapter)
                    wrapper.output_mode = "sequential"
                    self.part(BottleneckOp, site.paths["o"], "output:sequential", adapter, signature=signature(adapter))
                else:  # parallel: reads the attention input, adds to the head outputs before W_o
                    object.__setattr__(wrapper, "input_adapter", adapter)
                    wrapper.input_capture = host.capture(site.module)
                    self.part(BottleneckOp, site.paths["o"], "input", adapter, capture=site.paths["module"],
                              signature=signature(adapter))


@register_method("ffn_mode", "adapter")
class FfnAdapter(_Adapter):
    def attach(self) -> None:
        cfg, host = self.config, self.host
        d = host.sites.hidden_size
        r = cfg.resolve_bn("ffn", d)
        for layer in host.sites.layers:
            adapter = self.adapter(f"{layer.stack}{layer.index}_ffn_adapter", "ffn_adapter", d, r, cfg.ffn_adapter_init_option,
                                   cfg.ffn_adapter_layernorm_option, cfg.ffn_adapter_scalar)
            if cfg.ffn_option == "pfeiffer":
                attach_at_pfeiffer_position(self, layer, adapter, signature=signature(adapter))
                continue
            wrapper = host.wrap_linear(layer.paths["ffn_out"])
            object.__setattr__(wrapper, "output_adapter", adapter)
            if cfg.ffn_option == "sequential":
                wrapper.output_mode = "sequential"
                self.part(BottleneckOp, layer.paths["ffn_out"], "output:sequential", adapter, signature=signature(adapter))
            else:  # parallel: the adapter reads the FFN input
                wrapper.output_mode = "parallel"
                wrapper.output_capture = host.capture(layer.ffn_in[0])
                self.part(BottleneckOp, layer.paths["ffn_out"], "output:parallel", adapter, capture=layer.paths["ffn_in.0"],
                          signature=signature(adapter))
