"""Bottleneck adapters (Houlsby, Pfeiffer, parallel, scaled parallel; He et al. 2022, ALGORITHMS.md §1.1):
at the attention output or the FFN, sequential or parallel, their numbers from the parameter source."""

from __future__ import annotations

from ..forms import Bottleneck, bottleneck_tensors
from ..insertion import PfeifferLayerNorm
from ..registry import register_method
from .base import Method


def attach_at_pfeiffer_position(method: Method, layer, module) -> None:
    """Put ``module`` at Pfeiffer's position of ``layer``: y = LN(z + A(LN(z))) after a post-LN block's FFN
    residual; on a pre-LN block (T5), A reads the FFN output plus the FFN input and adds to the output."""
    host = method.host
    if layer.ffn_layernorm is not None:
        host.replace_module(layer.paths["ffn_layernorm"], PfeifferLayerNorm(layer.ffn_layernorm, module))
        return
    wrapper = host.wrap_linear(layer.paths["ffn_out"])
    object.__setattr__(wrapper, "output_adapter", module)
    wrapper.output_mode = "pfeiffer_preln"
    wrapper.output_capture = host.capture(layer.ffn_in[0])


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
                else:  # parallel: reads the attention input, adds to the head outputs before W_o
                    object.__setattr__(wrapper, "input_adapter", adapter)
                    wrapper.input_capture = host.capture(site.module)


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
                attach_at_pfeiffer_position(self, layer, adapter)
                continue
            wrapper = host.wrap_linear(layer.paths["ffn_out"])
            object.__setattr__(wrapper, "output_adapter", adapter)
            if cfg.ffn_option == "sequential":
                wrapper.output_mode = "sequential"
            else:  # parallel: the adapter reads the FFN input
                wrapper.output_mode = "parallel"
                wrapper.output_capture = host.capture(layer.ffn_in[0])
