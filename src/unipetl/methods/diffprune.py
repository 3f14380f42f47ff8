"""Diff pruning (Guo et al. 2021; ALGORITHMS.md §4) as a method: a diff on every backbone weight.

Stages: L0 training of a gated dense diff (gates at their own learning rate, the expected-L0 penalty
in the loss), projection to ``diff_density`` by magnitude, then fine-tuning the kept entries with the
mask fixed. The backbone's tensors are never written while training: the forward runs the model on
theta_pre + delta (`torch.func.functional_call`). A task module stores the sparse diff as index gaps
and values. merge() writes theta_pre + delta into the backbone.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import scipy.sparse
import torch
import torch.nn.functional as F
from torch import nn

from ..diff import GAP_ESCAPE, GatedDiff, SparseDiff, decode_indices, diff_layout, encode_indices, project_to_density
from ..errors import ConfigError, ModuleFormatError
from ..mixing import MixedOp, Part, rows_of
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

    # ------------------------------------------------------------------ mixed-task batches
    def mixed_parts(self) -> list[Part]:
        """The sparse diff by backbone module: each part holds, per parameter of the module, the kept
        entries' positions in it as the module stores them (uint16 gaps) and their values, so a task bank
        holds about the stored bytes; nothing dense is built per task."""
        if not isinstance(self.diff, SparseDiff):
            raise ConfigError("diff pruning serves its projected sparse diff; this model is still in its L0 stage "
                              "(call project() first)")
        indices, values = self.diff.indices, self.diff.values.detach()
        layout, start = self.diff.layout, 0
        by_module: dict[str, dict] = {}
        for name, size in zip(layout.names, layout.sizes):
            lo, hi = (int(i) for i in torch.searchsorted(indices, torch.tensor([start, start + size])))
            if hi > lo:
                path, _, parameter = name.rpartition(".")
                by_module.setdefault(path, {})[parameter] = (encode_indices((indices[lo:hi] - start).cpu()),
                                                              values[lo:hi].clone())
            start += size
        parts, tied = [], _tied_linears(self.host.model)
        for path, entries in by_module.items():
            module = self.host.model.get_submodule(path)
            op = next((op for kind, op in DIFF_OPS if isinstance(module, kind)), None)
            if op is None and is_rms_norm(module):
                op = DiffRMSNormOp
            if op is DiffEmbeddingOp and path.endswith("relative_attention_bias"):
                op = DiffSharedTableOp  # looked up once for all rows (MPNet, T5): served task by task
            if op is None:
                raise ConfigError(f"diff pruning in a task bank: the diff changes {path} ({type(module).__name__}); "
                                  f"mixed batches apply diffs to Linear, LayerNorm, RMS norm and Embedding modules only")
            parts.append(Part(op, path, "hook", entries))
            weight = getattr(module, "weight", None)
            parts += [Part(DiffLinearOp, other, "hook", {"weight": entries["weight"]})
                      for other in tied.get(id(weight), []) if other != path and "weight" in entries]
        return parts

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self) -> None:
        params = dict(self.host.model.named_parameters())
        for name, part in self.diff.layout.split(self.diff.delta().detach()).items():
            params[name].add_(part.to(params[name].dtype))
        del self.host.methods["diff"]
        self.keys = []


def _tied_linears(model: nn.Module) -> dict[int, list[str]]:
    """id(weight) -> paths of the linears holding that weight: a diff of an embedding table whose weight an LM
    head shares (tied) changes the head too."""
    linears: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            linears.setdefault(id(module.weight), []).append(path)
    return linears


def describe_projection(stats: dict) -> str:
    return (f"projection: kept {stats['kept_entries']:,} of {stats['parameters']:,} entries "
            f"(density {100 * stats['density']:.3f} %, threshold {stats['threshold']:.3g}); "
            f"expected L0 after stage 1: {stats['expected_l0_after_l0_stage']:,.0f}")


# ---------------------------------------------------------------------- mixed-task batches
def _entries(op: MixedOp, parameter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept entries of ``parameter`` for the tasks present: (slot of each entry's task, position in the
    parameter, value), sorted by slot then position. Decoded from the held gaps for all tasks at once."""
    slots = {t: i for i, t in enumerate(op.routing.present)}
    tasks = [t for t in op.active_tasks() if parameter in op.parts[t]]
    if not tasks:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    gaps = [op.parts[t][parameter][0] for t in tasks]
    stored = torch.cat(gaps).to(torch.int64)
    counts = torch.tensor([g.numel() for g in gaps])
    advance = torch.cumsum(torch.where(stored == 0, GAP_ESCAPE, stored), 0)
    before = torch.cat([advance.new_zeros(1), advance[torch.cumsum(counts, 0)[:-1] - 1]])  # each task restarts at -1
    position = advance - torch.repeat_interleave(before, counts) - 1
    slot = torch.repeat_interleave(torch.tensor([slots[t] for t in tasks]), counts)
    real = stored != 0  # a 0 is an escape (a long gap), not an entry
    values = torch.cat([op.parts[t][parameter][1] for t in tasks])
    return slot[real], position[real], values


def _dense_rows(op: MixedOp, parameter: str, size: int, like: torch.Tensor) -> torch.Tensor:
    """(rows, size): each row's task's entries of a vector parameter (a bias, an LN weight), dense."""
    slot, position, values = _entries(op, parameter)
    dense = like.new_zeros(len(op.routing.present) * size)
    dense.index_put_(((slot * size + position).to(like.device),), values.to(like.device, like.dtype))
    return dense.view(-1, size)[op.routing.slot]


class DiffLinearOp(MixedOp):
    """A sparse diff on a Linear for many tasks: the base product runs once for the whole batch, and each
    row gets x Delta_t^T + delta b_t for its task t. Each row's Delta is one block of a block-diagonal CSR
    matrix applied to all rows' tokens in one sparse product (its cost is the rows' entries times the
    tokens): no dense copy of a weight per task, and no loop over tasks."""

    def hook(self, module, args, output):
        x = rows_of(args[0], self.routing.rows)  # (rows, tokens, in)
        rows, tokens, d_in = x.shape
        d_out = module.out_features
        out = output.view(rows, tokens, d_out)
        slot, position, values = _entries(self, "weight")  # index work on the CPU, where the held gaps are
        if values.numel():
            # The entries of each row's task, row after row (a task's entries repeat for each of its rows).
            row_slot = self.routing.slot.cpu()
            per_task = torch.bincount(slot, minlength=len(self.routing.present))
            first = torch.cumsum(per_task, 0) - per_task
            counts = per_task[row_slot]
            row = torch.repeat_interleave(torch.arange(rows), counts)
            entry = torch.repeat_interleave(first[row_slot] - (torch.cumsum(counts, 0) - counts), counts)
            entry = entry + torch.arange(entry.numel())
            row_index = row * d_out + torch.div(position[entry], d_in, rounding_mode="floor")
            crow = torch.cat([row_index.new_zeros(1), torch.cumsum(torch.bincount(row_index, minlength=rows * d_out), 0)])
            dense = x.transpose(1, 2).reshape(rows * d_in, tokens)
            product = _csr_product(crow, row * d_in + position[entry] % d_in, values[entry.to(values.device)].to(x.dtype),
                                   (rows * d_out, rows * d_in), dense)
            out += product.view(rows, d_out, tokens).transpose(1, 2)
        if any("bias" in self.parts[t] for t in self.active_tasks()):
            out += _dense_rows(self, "bias", d_out, x)[:, None]
        return output


def _csr_product(crow, col, values, shape, dense: torch.Tensor) -> torch.Tensor:
    """A CSR matrix times ``dense``. On the CPU through scipy.sparse, whose product costs what its
    entries do (several times faster here than torch's CPU sparse product, which costs about as much
    as a dense one at these sizes); elsewhere torch's."""
    if dense.device.type == "cpu" and dense.dtype in (torch.float32, torch.float64):
        matrix = scipy.sparse.csr_matrix((values.cpu().numpy(), col.numpy(), crow.numpy()), shape=shape)
        return torch.from_numpy(matrix @ dense.numpy())
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        blocks = torch.sparse_csr_tensor(crow.to(dense.device), col.to(dense.device), values.to(dense.device), shape,
                                         device=dense.device, check_invariants=False)
    return torch.sparse.mm(blocks, dense)


class DiffLayerNormOp(MixedOp):
    """A sparse diff on a LayerNorm's weight and bias for many tasks: LN(x) + norm(x) * dgamma_t + dbeta_t,
    added to the output (other hooks at the same module, BitFit's, keep theirs)."""

    def hook(self, module, args, output):
        x = rows_of(args[0], self.routing.rows)
        width = x.shape[-1]
        gamma = _dense_rows(self, "weight", width, x)[:, None]
        beta = _dense_rows(self, "bias", width, x)[:, None]
        normed = F.layer_norm(x, (width,), eps=module.eps)
        return output + torch.addcmul(beta, normed, gamma).view(output.shape)


def is_rms_norm(module: nn.Module) -> bool:
    """An RMS norm (Llama's, Qwen's, Mistral's, T5's, torch's): weight * x / rms(x), with no bias."""
    return isinstance(module, nn.RMSNorm) or type(module).__name__.endswith(("RMSNorm", "T5LayerNorm"))


class DiffRMSNormOp(MixedOp):
    """A sparse diff on an RMS norm's weight for many tasks: RMSNorm(x) + (x / rms(x)) * dgamma_t."""

    def hook(self, module, args, output):
        x = rows_of(args[0], self.routing.rows)
        gamma = _dense_rows(self, "weight", x.shape[-1], x)[:, None]
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None) or 1e-6)
        states = x.float()
        normed = (states * torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        return output + (normed * gamma).view(output.shape)


class DiffEmbeddingOp(MixedOp):
    """A sparse diff on an embedding table for many tasks: each looked-up row of the table gets its task's
    kept entries of that table row, found by binary search in the tasks' sorted positions."""

    def hook(self, module, args, output):
        ids = args[0]
        rows = self.routing.rows
        ids = ids.expand(rows, -1) if ids.shape[0] != rows else ids  # position ids come as (1, length)
        vocabulary, width = module.weight.shape
        slot, position, values = _entries(self, "weight")
        keys = (slot * (vocabulary * width) + position).to(ids.device)  # sorted: by task, then by position
        values = values.to(ids.device)
        token_keys = (self.routing.slot[:, None] * vocabulary + ids).reshape(-1) * width
        start, end = torch.searchsorted(keys, token_keys), torch.searchsorted(keys, token_keys + width)
        counts = end - start
        token = torch.repeat_interleave(torch.arange(token_keys.numel(), device=ids.device), counts)
        first = torch.repeat_interleave(start - (torch.cumsum(counts, 0) - counts), counts)
        entry = first + torch.arange(token.numel(), device=ids.device)
        delta = output.new_zeros(token_keys.numel(), width).index_put_((token, keys[entry] % width),
                                                                        values[entry].to(output.dtype), accumulate=True)
        return output + delta.view(rows, ids.shape[1], width)


class DiffSharedTableOp(MixedOp):
    """A sparse diff on a table that a layer looks up once for every row (a relative-position bias): rows
    of different tasks would need different tables, so the bank serves such a task's rows in forwards of
    their own, where this adds the task's diff to the lookup."""

    batched = False

    def hook(self, module, args, output):
        _, position, values = _entries(self, "weight")
        table = torch.zeros(module.weight.numel(), dtype=output.dtype, device=output.device)
        table = table.index_put_((position.to(output.device),), values.to(output.device, output.dtype)).view_as(module.weight)
        return output + F.embedding(args[0], table)


DIFF_OPS = ((nn.Linear, DiffLinearOp), (nn.LayerNorm, DiffLayerNormOp), (nn.Embedding, DiffEmbeddingOp))
