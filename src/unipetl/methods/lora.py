"""LoRA (Hu et al. 2022; ALGORITHMS.md §1.2): W + (alpha / r) B A on the attention projections
(``lora_targets``) or on the FFN linears. Merges into the frozen weight; ProLoRA masks A and B."""

from __future__ import annotations

import torch

from ..forms import LowRank, lowrank_tensors
from ..mixing import MixedOp, rows_of
from ..registry import register_method
from .base import Method


class LowRankOp(MixedOp):
    """LoRA for many tasks at one linear: the linear computes the base product once for the whole batch
    (MixedLinear); this adds each row's low-rank term, x A_t^T (s_t B_t)^T with the A and B of the row's
    task gathered per row (the SGMV/BGMV idea in two batched matmuls). Ranks that differ are zero-padded;
    a task without LoRA here has a zero slot. ProLoRA's masked factors are built for the tasks present."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_into(x.new_zeros(*x.shape[:-1], self._out_features()), x)

    def add_into(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out + each row's low-rank term, accumulated into ``out`` (the base product) in place."""
        down = self.source_rows("lora_A")  # (rows, r, in)
        up = self.source_rows("lora_B")  # (rows, out, r)
        scaling = self.rows_from({t: torch.tensor(self.parts[t].scaling, dtype=x.dtype) for t in self.active_tasks()})
        hidden = torch.bmm(rows_of(x, self.routing.rows), down.transpose(1, 2)) * scaling[:, None, None]
        rows = out.view(self.routing.rows, -1, out.shape[-1])
        rows.baddbmm_(hidden, up.transpose(1, 2))
        return out

    def _out_features(self) -> int:
        return next(iter(self.parts.values())).source.get("lora_B").shape[0]


class _LoRA(Method):
    mergeable = True

    def __init__(self, host, config):
        super().__init__(host, config)
        self.paths: list[str] = []  # the wrapped linears

    def lora(self, key: str, group: str, path: str, linear, rank: int) -> None:
        """LoRA on one linear; ``group`` names the prototype shared by all layers (ProLoRA)."""
        cfg = self.config
        source = self.host.source.params(
            group, lambda: lowrank_tensors(linear.in_features, rank, linear.out_features, cfg.lora_init), ("lora_A", "lora_B"))
        form = self.register(key, LowRank(source, rank, cfg.lora_alpha, cfg.lora_dropout))
        object.__setattr__(self.host.wrap_linear(path), "lora", form)
        self.paths.append(path)
        self.part(LowRankOp, path, "lora", form)

    @torch.no_grad()
    def merge(self) -> None:
        for path in self.paths:
            wrapper = self.host.model.get_submodule(path)
            wrapper.base.weight.add_(wrapper.lora.delta_weight().to(wrapper.base.weight.dtype))
            object.__setattr__(wrapper, "lora", None)
            if wrapper.is_empty:
                self.host.restore_module(path)
        for key in self.keys:
            del self.host.methods[key]
        self.keys, self.paths = [], []


@register_method("attn_mode", "lora")
class AttentionLoRA(_LoRA):
    def attach(self) -> None:
        for layer in self.host.sites.layers:
            for j, site in enumerate(layer.attention):
                for target in self.config.lora_targets:
                    key = f"{layer.stack}{layer.index}_attn{j}_lora_{target}"
                    self.lora(key, f"attn_lora_{target}", site.paths[target], getattr(site, target), self.config.attn_bn)


@register_method("ffn_mode", "lora")
class FfnLoRA(_LoRA):
    def attach(self) -> None:
        for layer in self.host.sites.layers:
            linears = [(f"ffn_in.{i}", m) for i, m in enumerate(layer.ffn_in)] + [("ffn_out", layer.ffn_out)]
            for name, linear in linears:
                key = f"{layer.stack}{layer.index}_ffn_lora_{name.replace('.', '')}"
                self.lora(key, f"ffn_lora_{name.replace('.', '')}", layer.paths[name], linear, self.config.ffn_bn)
