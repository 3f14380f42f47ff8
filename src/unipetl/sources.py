"""Parameter sources beyond owned parameters.

`MaskedPrototype` (ProPETL): every layer reads one shared prototype through its own binary mask,
W_l = W ⊙ TopK_keep(|S_l|). Only weights are masked; biases are the prototype's, shared and
unmasked. During training the mask follows the scores (straight-through gradient); `freeze()` turns
it into fixed bits, and then the masked weights are computed once and reused (no per-forward cost).
`MaskedPrefix` applies the same masks to the generated prefix of ProPrefix (§2.4).
"""

from __future__ import annotations

import math

import numpy as np

import torch
from torch import nn

from .masks import mask_or, pack_bits, topk_mask, unpack_bits


class TaskContext:
    """Which task the shared masks serve in the current forward (multi-task ProPETL-m)."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.index = 0

    def set(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this model's tasks: {', '.join(self.tasks)}")
        self.index = self.tasks.index(task)


def init_scores(shape: tuple[int, ...]) -> torch.Tensor:
    """Kaiming-uniform (a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)); only |S| matters, so the first mask is random."""
    scores = torch.empty(shape)
    nn.init.kaiming_uniform_(scores if scores.dim() > 1 else scores.view(1, -1), a=math.sqrt(5))
    return scores


class MaskedView(nn.Module):
    """Scores (training) or frozen bits (after freeze/load) for named tensors of one layer."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], keep: float, frozen: bool = False):
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep={keep} must be in (0, 1]")
        self.keep = keep
        self.shapes = dict(shapes)
        self.scores = nn.ParameterDict({} if frozen else {n: nn.Parameter(init_scores(s)) for n, s in shapes.items()})
        self.frozen: dict[str, torch.Tensor] | None = (
            {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()} if frozen else None)

    def mask(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if self.frozen is not None:
            if self.as_bits:
                return unpack_bits(self.frozen[name], self.shapes[name]).to(device=self._device(), dtype=dtype)
            return self.frozen[name].to(device=self._device(), dtype=dtype)
        return topk_mask(self.scores[name], self.keep).to(dtype)

    as_bits = False  # frozen masks held as packed bits and unpacked at each use (`keep_as_bits`)

    def keep_as_bits(self) -> None:
        """Hold the frozen masks as packed bits (a task bank: memory close to the stored bytes)."""
        if self.frozen is not None and not self.as_bits:
            self.frozen = {n: pack_bits(m) for n, m in self.frozen.items()}
            self.as_bits = True

    def _device(self) -> torch.device:
        return next(iter(self.scores.values())).device if len(self.scores) else torch.device("cpu")

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the current masks as bits; scores are dropped (they are not part of a trained task)."""
        self.frozen = {n: topk_mask(self.scores[n], self.keep).to(torch.bool).cpu() for n in self.shapes}
        self.scores = nn.ParameterDict()

    def packed(self) -> dict[str, torch.Tensor]:
        if self.frozen is not None:
            return dict(self.frozen) if self.as_bits else {n: pack_bits(m) for n, m in self.frozen.items()}
        with torch.no_grad():
            return {n: pack_bits(topk_mask(self.scores[n], self.keep)) for n in self.shapes}

    def load_packed(self, name: str, packed: torch.Tensor) -> None:
        if self.frozen is None:
            raise ValueError("load_packed needs a frozen mask view")
        self.frozen[name] = packed.clone() if self.as_bits else unpack_bits(packed, self.shapes[name])


class _Masked(nn.Module):
    """Shared logic of masked sources: the layer's mask, OR-ed with the current task's mask when a
    task bank is attached (ProPETL-m: M = 1 - (1 - M_task)(1 - M_layer), task masks shared by all
    layers, layer masks shared by all tasks)."""

    def _attach_tasks(self, task_bank, context) -> None:
        object.__setattr__(self, "task_bank", task_bank)  # owned once by PetlModel.methods
        object.__setattr__(self, "context", context)

    def combined_mask(self, view: MaskedView, name: str, dtype: torch.dtype) -> torch.Tensor:
        mask = view.mask(name, dtype)
        if self.task_bank is not None and view.frozen is None:
            mask = mask_or(mask, self.task_bank[self.context.index].mask(name, dtype))
        return mask

    def _views(self) -> dict[str, tuple[MaskedView, str]]:
        raise NotImplementedError

    @torch.no_grad()
    def packed_masks(self) -> dict[str, torch.Tensor]:
        """This layer's masks (combined with the current task's) as bits: what a task module stores."""
        return {key: pack_bits(self.combined_mask(view, name, torch.float32)) for key, (view, name) in self._views().items()}

    def load_packed_masks(self, key: str, packed: torch.Tensor) -> None:
        view, name = self._views()[key]
        view.load_packed(name, packed)


class MaskedPrototype(_Masked):
    """A layer's parameter source: the shared prototype's tensors, weights masked by this layer's masks."""

    def __init__(self, prototype: nn.Module, masked: tuple[str, ...], keep: float, frozen: bool = False,
                 task_bank=None, context: TaskContext | None = None):
        super().__init__()
        object.__setattr__(self, "prototype", prototype)  # owned once by PetlModel.methods
        self.view = MaskedView({n: tuple(prototype.get(n).shape) for n in masked}, keep, frozen)
        self._attach_tasks(task_bank, context)
        self._materialized: dict[str, tuple[tuple, torch.Tensor]] = {}

    def _views(self):
        return {name: (self.view, name) for name in self.view.shapes}

    def get(self, name: str) -> torch.Tensor:
        weight = self.prototype.get(name)
        if name not in self.view.shapes:
            return weight  # biases: shared, unmasked
        if self.view.frozen is None:
            return weight * self.combined_mask(self.view, name, weight.dtype)
        if self.view.as_bits:  # a task bank: no dense product kept per task
            return weight * self.view.mask(name, weight.dtype)
        # Frozen bits: the product changes only when the prototype does; compute it once per version.
        version = (weight.data_ptr(), weight._version, weight.dtype, torch.is_grad_enabled() and weight.requires_grad)
        cached = self._materialized.get(name)
        if cached is None or cached[0] != version:
            product = weight * self.view.mask(name, weight.dtype)
            cached = (version, product if version[3] else product.detach())
            self._materialized[name] = cached
        return cached[1]


    @staticmethod
    def get_many(sources: list["MaskedPrototype"], name: str) -> list[torch.Tensor]:
        """`get(name)` of several layers (of one task or many) at once: where their masks are held as bits,
        the masks of layers sharing a prototype are unpacked together (a task bank's batch)."""
        if name not in sources[0].view.shapes or not all(s.view.as_bits for s in sources):
            return [s.get(name) for s in sources]
        out: list[torch.Tensor | None] = [None] * len(sources)
        groups: dict[int, list[int]] = {}
        for i, source in enumerate(sources):
            groups.setdefault(id(source.prototype), []).append(i)
        shape = sources[0].view.shapes[name]
        for members in groups.values():
            weight = sources[members[0]].prototype.get(name)
            packed = torch.stack([sources[i].view.frozen[name] for i in members]).cpu().numpy()
            bits = np.unpackbits(packed, axis=1, count=math.prod(shape)).reshape(len(members), *shape)
            products = weight * torch.from_numpy(bits).to(weight.device, weight.dtype)
            for j, i in enumerate(members):
                out[i] = products[j]
        return out


class MaskedPrefix(_Masked):
    """ProPrefix: the one generated (l, 2d) prefix, masked per attention site."""

    def __init__(self, generator: nn.Module, n_sites: int, keep: float, frozen: bool = False,
                 task_bank=None, context: TaskContext | None = None):
        super().__init__()
        object.__setattr__(self, "generator", generator)  # owned once by PetlModel.methods
        shape = tuple(generator.site_prefix(0).shape)
        self.views = nn.ModuleList(MaskedView({"prefix": shape}, keep, frozen) for _ in range(n_sites))
        self._attach_tasks(task_bank, context)

    def _views(self):
        return {f"site{i}": (view, "prefix") for i, view in enumerate(self.views)}

    def site_prefix(self, index: int) -> torch.Tensor:
        prefix = self.generator.site_prefix(0)
        return prefix * self.combined_mask(self.views[index], "prefix", prefix.dtype)
