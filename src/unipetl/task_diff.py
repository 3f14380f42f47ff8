"""Switch one backbone between diff-pruned tasks in place (ALGORITHMS.md §4.4).

A `TaskDiff` is a stored task's sparse diff and head. ``apply(model)`` writes theta_pre + delta into
the model's own tensors; ``remove(model)`` writes the overwritten values back, so the backbone is
restored bit-exactly. It reads task modules, so it sits above storage.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .diff import FlatLayout, decode_indices, diff_layout
from .errors import ModuleFormatError
from .storage import check_backbone, read_module


class TaskDiff:
    """A stored task: sparse diff over a backbone's parameters plus its dense head.

    ``apply(model)`` writes theta_pre + delta into the model's own tensors (and the head), keeping the
    overwritten values; ``remove(model)`` writes them back, so the backbone is restored bit-exactly
    (adding and subtracting would not be). One backbone can switch between tasks this way.
    """

    def __init__(self, layout: FlatLayout, indices: torch.Tensor, values: torch.Tensor, head: dict[str, torch.Tensor],
                 name: str = "task"):
        self.layout, self.indices, self.values, self.head, self.name = layout, indices, values, head, name
        self._saved: dict | None = None

    @classmethod
    def from_module(cls, model: nn.Module, directory) -> "TaskDiff":
        header, tensors = read_module(directory)
        if header["config"].get("param_source") != "gated_diff":
            raise ModuleFormatError(f"{directory} is not a diff-pruned task module "
                                    f"(param_source={header['config'].get('param_source')!r})")
        check_backbone(model, header, directory)
        layout = diff_layout(model)
        if "methods.diff.index_gaps" not in tensors:
            raise ModuleFormatError(f"{directory}: a diff module from the L0 stage; project it to a density first")
        indices = decode_indices(tensors["methods.diff.index_gaps"], layout.total, str(directory))
        values = tensors["methods.diff.values"]
        if values.shape != indices.shape:
            raise ModuleFormatError(f"{directory}: {values.numel()} diff values for {indices.numel()} indices")
        head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        return cls(layout, indices, values, head, name=(header.get("task") or {}).get("name", str(directory)))

    def _targets(self, model: nn.Module) -> tuple[dict, dict]:
        params = dict(model.named_parameters())
        if [n for n in self.layout.names if n not in params] or diff_layout(model).names != self.layout.names:
            raise ModuleFormatError(f"task {self.name!r}: this model's parameters do not match the diff's layout")
        for name, value in self.head.items():
            if name not in params or params[name].shape != value.shape:
                raise ModuleFormatError(f"task {self.name!r}: head tensor {name!r} of shape {tuple(value.shape)} does not "
                                        f"fit this model ({tuple(params[name].shape) if name in params else 'missing'})")
        return params, {n: params[n] for n in self.head}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        if self._saved is not None:
            raise RuntimeError(f"task {self.name!r} is already applied; remove() it first")
        params, head = self._targets(model)
        saved = {"head": {n: p.detach().clone() for n, p in head.items()}, "diff": []}
        for name, start, local, values in self._per_tensor():
            flat = params[name].data.view(-1)
            saved["diff"].append((name, local, flat[local].clone()))
            flat[local] += values.to(flat.dtype)
        for name, value in self.head.items():
            head[name].copy_(value)
        self._saved = saved

    @torch.no_grad()
    def remove(self, model: nn.Module) -> None:
        if self._saved is None:
            raise RuntimeError(f"task {self.name!r} is not applied")
        params = dict(model.named_parameters())
        for name, local, original in self._saved["diff"]:
            params[name].data.view(-1)[local] = original
        for name, value in self._saved["head"].items():
            params[name].copy_(value)
        self._saved = None

    @contextmanager
    def applied(self, model: nn.Module):
        self.apply(model)
        try:
            yield model
        finally:
            self.remove(model)

    def _per_tensor(self):
        start = 0
        bounds = torch.tensor([0] + self.layout.sizes).cumsum(0)
        for i, name in enumerate(self.layout.names):
            lo, hi = torch.searchsorted(self.indices, bounds[i]), torch.searchsorted(self.indices, bounds[i + 1])
            if hi > lo:
                yield name, start, self.indices[lo:hi] - bounds[i], self.values[lo:hi]
