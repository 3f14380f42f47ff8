"""Mixed-task batches: the pieces every method uses to apply itself to rows of many tasks at once.

A task bank (serving/bank.py) holds one backbone and many task modules. Each method says, through
`Method.mixed_parts()`, what it adds to the backbone as `Part`s: a form at a site (a LoRA pair on a
linear, an adapter after an attention output, a prefix at an attention module, a bias delta...). The
bank groups the parts of all its tasks by (op, site, role, signature) into one `MixedOp` each and puts
the ops at their sites (`MixedLinear`, `MixedPfeifferLayerNorm`, forward hooks, the prefix attention).

In a forward, `Routing` says which task each row of the batch belongs to. An op stacks the tensors of
the tasks present in the batch (a task without a part at that site contributes a zero slot), gathers
them per row, and applies them with batched matmuls: no Python loop over tasks layer by layer. An op
whose math does not batch sets ``batched = False``; the bank then serves its tasks' rows one task per
forward (the fallback), and the op applies that task's own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .insertion import WrappedLinear


@dataclass
class Part:
    """One thing a task's method adds at one site of the backbone, for a mixed batch."""

    op: type  # the MixedOp subclass that batches parts of this kind
    site: str  # backbone module path (of the task model); "" for the input (prompts)
    role: str  # where at the site: lora, input, output:<mode>, pfeiffer, prefix, prompt, hook
    payload: Any  # the task's own form or tensors
    capture: str | None = None  # module whose input the part reads (parallel forms)
    signature: tuple = ()  # parts batch together only with equal signatures (activation, LN placement...)


class Routing:
    """The rows of the batch in flight: ``present`` task names (slot order) and each row's slot."""

    def __init__(self):
        self.present: list[str] = []
        self.slot: torch.Tensor | None = None  # (rows,) index into present

    def route(self, row_tasks: list[str], device=None) -> None:
        self.present = list(dict.fromkeys(row_tasks))
        index = {name: i for i, name in enumerate(self.present)}
        self.slot = torch.tensor([index[t] for t in row_tasks], dtype=torch.long, device=device)

    @property
    def rows(self) -> int:
        return 0 if self.slot is None else int(self.slot.numel())


class MixedOp(nn.Module):
    """The parts of several tasks at one site, applied to a mixed batch."""

    batched = True  # False: the bank serves this op's tasks one task per forward

    def __init__(self, routing: Routing, site: str, role: str, signature: tuple):
        super().__init__()
        self.routing, self.site, self.role, self.signature = routing, site, role, signature
        self.parts: dict[str, Any] = {}

    def add(self, task: str, payload: Any) -> None:
        self.parts[task] = payload

    def per_row(self, fetch: Callable[[Any], torch.Tensor], shape: tuple[int, ...] | None = None,
                like: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, *shape): each row's tensor from its task's payload; zeros (of ``shape``, or padded up
        to it) where the task has no part here. Only the tasks present in the batch are fetched."""
        return self.rows_from({t: fetch(self.parts[t]) for t in self.active_tasks()}, shape, like)

    def source_rows(self, name: str, scale: Callable[[Any], Any] | None = None) -> torch.Tensor:
        """(rows, ...): each row's task's ``payload.source.get(name)`` (times ``scale(payload)``). Sources that
        fetch many at once (ProPETL's masked layers: one unpacking of all tasks' bits) do so."""
        tasks = self.active_tasks()
        sources = [self.parts[t].source for t in tasks]
        get_many = getattr(type(sources[0]), "get_many", None)
        if get_many is not None and all(type(s) is type(sources[0]) for s in sources):
            values = get_many(sources, name)
        else:
            values = [source.get(name) for source in sources]
        if scale is not None:
            values = [value * scale(self.parts[t]) for value, t in zip(values, tasks)]
        return self.rows_from(dict(zip(tasks, values)))

    def rows_from(self, tensors: dict[str, torch.Tensor], shape: tuple[int, ...] | None = None,
                  like: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, *shape) from one tensor per task present (`per_row` with the tensors already made)."""
        reference = next(iter(tensors.values())) if tensors else like
        if shape is None:
            shape = tuple(max(t.shape[i] for t in tensors.values()) for i in range(reference.dim()))
        zero = reference.new_zeros(shape)
        stacked = torch.stack([pad_to(tensors[t], shape) if t in tensors else zero for t in self.routing.present])
        return stacked[self.routing.slot]

    def row_active(self, like: torch.Tensor) -> torch.Tensor:
        """(rows,) 1 for rows whose task has a part here, else 0, in ``like``'s dtype."""
        present = torch.tensor([t in self.parts for t in self.routing.present], dtype=like.dtype, device=like.device)
        return present[self.routing.slot]

    def active_tasks(self) -> list[str]:
        return [t for t in self.routing.present if t in self.parts]

    @property
    def idle(self) -> bool:
        """True when no row of the batch belongs to a task with a part here (the site skips the op)."""
        return not any(t in self.parts for t in self.routing.present)

    def only_task(self) -> Any:
        """The payload of the one task in a fallback forward (None where that task has no part here)."""
        tasks = self.active_tasks()
        if len(tasks) > 1 or (tasks and len(self.routing.present) > 1):
            raise RuntimeError(f"{type(self).__name__} at {self.site!r} does not batch tasks; the bank must serve "
                               f"its tasks one per forward")
        return self.parts[tasks[0]] if tasks else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the op's contribution, added by its site
        raise NotImplementedError


def pad_to(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad ``tensor`` at the end of each axis up to ``shape`` (ranks or prefix lengths that differ)."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    pad = []
    for have, want in zip(reversed(tensor.shape), reversed(shape)):
        pad += [0, want - have]
    return F.pad(tensor, pad)


def rows_of(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` as (rows, tokens, features): a sub-layer input of shape (rows, ..., features)."""
    return x.reshape(rows, -1, x.shape[-1])


# ---------------------------------------------------------------------- sites the bank installs
class MixedLinear(WrappedLinear):
    """A frozen linear of the backbone with the mixed ops of every task at it.

    The order of LinearWithChanges: input ops add to the input, then the base product (once for the
    whole batch, with its hooks: BitFit, diff corrections) plus the low-rank ops, then output ops.
    Each op contributes exactly zero to the rows of tasks without a part there.
    """

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.inputs: list[tuple[MixedOp, Any]] = []  # (op, capture)
        self.lowrank: list[MixedOp] = []
        self.outputs: list[tuple[MixedOp, str, Any]] = []  # (op, mode, capture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op, capture in self.inputs:
            if not op.idle:
                x = x + op(capture.value)
        out = self.base(x)
        for op in self.lowrank:
            if not op.idle:
                out = op.add_into(out, x)  # in place: inference only (a task bank runs without gradients)
        for op, mode, capture in self.outputs:
            if op.idle:
                continue
            if mode == "sequential":
                out = out + op(out)
            elif mode == "parallel":
                out = out + op(capture.value)
            else:  # pre-LN Pfeiffer: the adapter reads FFN output + FFN input
                out = out + op(out + capture.value)
        return out


class MixedPfeifferLayerNorm(nn.Module):
    """y = LN(z + sum of ops(LN(z))): Pfeiffer's position of a post-LN block for every task at once."""

    def __init__(self, layernorm: nn.Module):
        super().__init__()
        self.layernorm = layernorm
        self.ops: list[MixedOp] = []

    @property
    def weight(self) -> torch.Tensor:
        return self.layernorm.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layernorm.bias

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ops = [op for op in self.ops if not op.idle]
        if not ops:
            return self.layernorm(z)
        normed = self.layernorm(z)
        return self.layernorm(z + sum(op(normed) for op in ops))


class LinearDeltaOp(MixedOp):
    """A dense per-task change of a small linear (BERT's pooler, trained with each task's head): each row
    gets x dW_t^T + db_t on top of the shared linear's output. Stored dense by the task anyway."""

    def hook(self, module, args, output):
        x = rows_of(args[0], self.routing.rows)
        weight = self.per_row(lambda delta: delta["weight"])
        bias = self.per_row(lambda delta: delta["bias"])
        return output + torch.baddbmm(bias[:, None], x, weight.transpose(1, 2)).reshape(output.shape)


@dataclass
class Installed:
    """What the bank changed in the backbone, to undo it: replaced modules and hook handles."""

    replaced: dict[str, nn.Module] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    prefix: tuple | None = None  # (attention modules, the attention implementation they replaced)
