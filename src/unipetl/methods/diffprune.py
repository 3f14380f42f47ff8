"""Diff pruning (Guo et al. 2021; ALGORITHMS.md §4) as a method: a diff on every backbone weight.

Stages: L0 training of a gated dense diff (gates at their own learning rate, the expected-L0 penalty
in the loss), projection to ``diff_density`` by magnitude, then fine-tuning the kept entries with the
mask fixed. The backbone's tensors are never written while training: the forward runs the model on
theta_pre + delta (`torch.func.functional_call`). A task module stores the sparse diff as index gaps
and values. merge() writes theta_pre + delta into the backbone.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..diff import GatedDiff, SparseDiff, decode_indices, diff_layout, encode_indices, project_to_density
from ..errors import ConfigError, ModuleFormatError
from ..registry import register_method
from .base import Method, Stage


@register_method("param_source", "gated_diff")
class DiffPruning(Method):
    replaces_design = True
    mergeable = True
    title = "diff pruning"
    resumable = False
    multitask = False
    covers_pooler = True
    exports = ("diff", "project", "diff_written_in")

    def attach(self) -> None:
        cfg, layout = self.config, diff_layout(self.host.model)
        if cfg.diff_stage == "l0":
            self.register("diff", GatedDiff(layout, cfg.gate_init, cfg.gate_limits, cfg.gate_structured, cfg.gate_eval))
        else:  # sized when a module is loaded (load_prepare) or by project()
            self.register("diff", SparseDiff(layout, torch.zeros(0, dtype=torch.int64), torch.zeros(0)))

    @property
    def diff(self) -> GatedDiff | SparseDiff | None:
        return self.host.methods["diff"] if "diff" in self.host.methods else None

    # ------------------------------------------------------------------ training
    def optimizer_rules(self):
        if isinstance(self.diff, GatedDiff):
            return [(lambda name, _: "gate_logits" in name, {"lr": self.config.gate_learning_rate, "weight_decay": 0.0})]
        return []

    def extra_loss(self):
        if isinstance(self.diff, GatedDiff) and self.host.training and self.config.l0_penalty > 0:
            return self.config.l0_penalty * self.diff.expected_l0()
        return None

    def stages(self) -> list[Stage]:
        cfg = self.config
        if not isinstance(self.diff, GatedDiff):
            return [Stage("fixed_mask", learning_rate=cfg.fixmask_learning_rate)]
        # The L0 stage keeps no checkpoints: its last state feeds the projection, as released.
        return [Stage("l0", cfg.diff_l0_fraction, checkpoints=False,
                      summary=f"L0 stage: {self.diff.layout.total:,} gated entries (gates lr {cfg.gate_learning_rate:g}, "
                              f"lambda {cfg.l0_penalty:g})"),
                Stage("fixed_mask", 1 - cfg.diff_l0_fraction, cfg.fixmask_learning_rate, before=self.project,
                      summary="fixed-mask stage", record_as="diff_projection", describe=describe_projection)]

    def project(self, density: float | None = None) -> dict:
        """Stage 2: keep the ``density`` fraction of largest |delta| entries (default: the config's
        diff_density) and switch to the fixed-mask stage. Returns the projection's statistics."""
        if not isinstance(self.diff, GatedDiff):
            raise ConfigError("project() needs a diff in the L0 stage (param_source='gated_diff', diff_stage='l0')")
        density = self.config.diff_density if density is None else density
        with torch.no_grad():
            expected_l0 = float(self.diff.expected_l0())
        sparse, stats = project_to_density(self.diff, density, self.config.projection_gates)
        self.host.methods["diff"] = sparse.to(self.diff.weight.device)
        self.config = self.host.config = self.config.replace(diff_stage="fixed_mask", diff_density=density)
        return {**stats, "expected_l0_after_l0_stage": expected_l0}

    # ------------------------------------------------------------------ running
    def run_backbone(self, model, args, kwargs):
        params = dict(model.named_parameters())
        names = self.diff.layout.names
        diffed = dict(zip(names, self.diff.diffed([params[name] for name in names])))
        return torch.func.functional_call(model, diffed, args, kwargs, strict=False)

    def generate_contexts(self):
        return [self.diff_written_in()]

    @contextmanager
    def diff_written_in(self):
        """Within the block, the backbone's own tensors hold theta_pre + delta (restored bit-exactly after)."""
        params = dict(self.host.model.named_parameters())
        saved = {}
        with torch.no_grad():
            for name, part in self.diff.layout.split(self.diff.delta().detach()).items():
                if bool(part.any()):
                    saved[name] = params[name].detach().clone()
                    params[name].add_(part.to(params[name].dtype))
        try:
            yield self.host.model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    params[name].copy_(original)

    # ------------------------------------------------------------------ storage
    def stored_tensors(self):
        if isinstance(self.diff, SparseDiff):  # sorted positions as gaps, and the values
            return {"methods.diff.index_gaps": encode_indices(self.diff.indices), "methods.diff.values": self.diff.values}
        return super().stored_tensors()

    def load_prepare(self, tensors, source):
        if not isinstance(self.diff, SparseDiff) or "methods.diff.index_gaps" not in tensors:
            return tensors
        indices = decode_indices(tensors["methods.diff.index_gaps"], self.diff.layout.total, source)
        values = tensors.get("methods.diff.values", torch.zeros(0))
        if values.shape != indices.shape:
            raise ModuleFormatError(f"{source}: {values.numel()} diff values for {indices.numel()} indices")
        self.host.methods["diff"] = SparseDiff(self.diff.layout, indices, values)
        return {k: v for k, v in tensors.items() if k != "methods.diff.index_gaps"}

    def load_expected(self, expected: dict) -> dict:
        return {k: v for k, v in expected.items() if k != "methods.diff.index_gaps"}

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self) -> None:
        params = dict(self.host.model.named_parameters())
        for name, part in self.diff.layout.split(self.diff.delta().detach()).items():
            params[name].add_(part.to(params[name].dtype))
        del self.host.methods["diff"]
        self.keys = []


def describe_projection(stats: dict) -> str:
    return (f"projection: kept {stats['kept_entries']:,} of {stats['parameters']:,} entries "
            f"(density {100 * stats['density']:.3f} %, threshold {stats['threshold']:.3g}); "
            f"expected L0 after stage 1: {stats['expected_l0_after_l0_stage']:,.0f}")
