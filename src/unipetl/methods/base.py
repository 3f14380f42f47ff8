"""The contract every method and parameter source implements.

`PetlModel` (the host) resolves the backbone's sites and offers attaching services: `register` a
module under `host.methods`, `wrap_linear`, `replace_module`, `capture` a sub-layer input, `add_hook`.
Everything else it asks its methods through the hooks below and never branches on which method it
holds. Every hook but `attach` has a harmless default, so a method implements only what it does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..mixing import Part

GroupRule = tuple[Callable[[str, Any], bool], dict]  # (parameter name, parameter) -> own lr / weight decay


@dataclass
class Stage:
    """One training stage: its share of the budget, its learning rate (None: the run's) and what to do
    before it starts (diff pruning projects its diff before the fixed-mask stage)."""

    name: str
    fraction: float = 1.0
    learning_rate: float | None = None
    before: Callable[[], Any] | None = None
    checkpoints: bool = True  # False: the stage's last state feeds the next one (no best-checkpoint selection)
    summary: str = ""  # logged as the stage starts
    record_as: str | None = None  # the results.json key for what ``before`` returns
    describe: Callable[[dict], str] | None = None  # the log line for what ``before`` returns


class Method:
    """One change to a frozen backbone (adapter, LoRA, prefix, prompt, BitFit, full, diff, mixture)."""

    selected_by: tuple[str, Any] = ("", None)  # set by registry.register_method
    replaces_design = False  # True: the whole change on its own (no parameter source, no other method)
    mergeable = False  # merge() folds it into the backbone's weights
    exports: tuple[str, ...] = ()  # attribute names PetlModel forwards to this method (petl.project(), ...)
    title = "this method"  # how messages name it
    resumable = True  # False: its training stages run in one go (an interrupted run starts again)
    multitask = True  # False: one task at a time (a diff per task)
    covers_pooler = False  # True: the method itself trains the backbone's pooler (diff pruning, full)

    def __init__(self, host, config):
        self.host, self.config = host, config
        self.keys: list[str] = []  # this method's entries in host.methods
        self.parts: list[Part] = []  # what it adds at each site, for mixed-task batches (`part`)

    def register(self, key: str, module: nn.Module) -> nn.Module:
        self.keys.append(key)
        return self.host.register(key, module)

    def modules(self) -> dict[str, nn.Module]:
        return {key: self.host.methods[key] for key in self.keys if key in self.host.methods}

    # ------------------------------------------------------------------ attaching and training
    def attach(self) -> None:
        """Create the method's modules and put them at the backbone's sites."""
        raise NotImplementedError

    def trains_backbone(self) -> bool:
        """True where the backbone's own weights are the method's parameters (full fine-tuning)."""
        return False

    def optimizer_rules(self) -> list[GroupRule]:
        """Parameters that need their own learning rate or weight decay (mask scores, gates, ...)."""
        return []

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the task loss in training (the L0 penalty, the fusion value regulariser)."""
        return None

    def stages(self) -> list[Stage]:
        """The method's training stages; one plain stage unless it says otherwise."""
        return [Stage("train")]

    # ------------------------------------------------------------------ running
    def forward_contexts(self) -> list[AbstractContextManager]:
        """Contexts held around one forward of the backbone."""
        return []

    def generate_contexts(self) -> list[AbstractContextManager]:
        """Contexts held around one call of the backbone's generate()."""
        return []

    def prepare_inputs(self, kwargs: dict) -> dict:
        """The backbone's keyword inputs, changed where the method adds inputs (prompt tuning)."""
        return kwargs

    def finish_outputs(self, outputs):
        """The backbone's outputs, changed where the method added positions (prompt tuning)."""
        return outputs

    def finish_generation(self, kwargs: dict, sequences: torch.Tensor) -> torch.Tensor:
        """generate()'s sequences for the caller's ``kwargs``, where the method changed how the backbone was
        called (prompt tuning hands a decoder embeddings, and transformers returns the new tokens only)."""
        return sequences

    def run_backbone(self, model: nn.Module, args, kwargs):
        """Run ``model`` itself where the method changes how it is called (diff pruning); None: not needed."""
        return None

    def select_task(self, task: str) -> None:
        """The task the next forwards serve, where the method keeps per-task state (ProPETL-m)."""

    # ------------------------------------------------------------------ mixed-task batches
    def part(self, op: type, site: str, role: str, payload, capture: str | None = None, signature: tuple = ()) -> None:
        """Record, while attaching, one thing this method adds at a site (mixing.Part) so that a task bank
        can apply it to the rows of this task in a batch that mixes tasks."""
        self.parts.append(Part(op, site, role, payload, capture, signature))

    def mixed_parts(self) -> list[Part]:
        """What this task's method adds to the backbone, as parts a task bank batches across tasks
        (serving/bank.py; default: the parts recorded by `part` while attaching)."""
        return list(self.parts)

    def share_across_tasks(self, cache: dict) -> None:
        """Hold what several tasks share (a ProPETL prototype) once in a task bank: replace this task's copy
        by the one in ``cache`` when the contents are equal, else put it there."""

    # ------------------------------------------------------------------ storage
    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """What a task module holds of this method, by name (default: its modules' state)."""
        tensors = {}
        for key, module in self.modules().items():
            # A module may store less than its state (a prefix MLP stores the prefixes it generates).
            state = module.stored_state() if hasattr(module, "stored_state") else module.state_dict()
            tensors.update({f"methods.{key}.{name}": value for name, value in state.items()})
        return tensors

    def load_prepare(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Take from a module's tensors what sizes the method before loading (a sparse diff's indices);
        returns the tensors left for the generic copy."""
        return tensors

    def load_expected(self, expected: dict) -> dict:
        """The stored names and shapes a module must hold, less those `load_prepare` consumed."""
        return expected

    def shares(self, name: str) -> bool:
        """True for a stored tensor that a family of tasks shares and stores once (a ProPETL prototype)."""
        return False

    def byte_kind(self, name: str) -> str | None:
        """The breakdown row of a stored tensor (None: the generic method_bytes)."""
        return None

    # ------------------------------------------------------------------ merge and unload
    def merge(self) -> None:
        """Fold the change into the backbone's weights (only where ``mergeable``)."""
        raise NotImplementedError

    def unload(self) -> None:
        """Undo what attach() did beyond the host's bookkeeping (wrappers and hooks the host removes)."""


class ParameterSource(Method):
    """Where a form's numbers come from: owned per layer, or a masked view of a shared prototype."""

    def attach(self) -> None:
        pass

    def params(self, group: str, make_tensors: Callable[[], dict], masked: tuple[str, ...]) -> nn.Module:
        """One layer's parameter holder for a form; ``group`` names the prototype its layers share."""
        raise NotImplementedError

    def prototype(self, group: str, make: Callable[[], nn.Module]) -> nn.Module | None:
        """A module shared by every site of ``group`` (None for owned parameters)."""
        return None

    def filter_stored(self, tensors: dict[str, torch.Tensor], task: str | None = None) -> dict[str, torch.Tensor]:
        """The methods' stored tensors as this source stores them (mask scores as bits; ``task``: whose
        task masks, for a multi-task view)."""
        return tensors

    def load_consume(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Load what the source stores itself (mask bits); returns the rest."""
        return tensors
