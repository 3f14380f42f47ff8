"""ProPETL's parameter source (Zeng et al. 2023; ALGORITHMS.md §2): one prototype per form, shared by
every layer (and task), each layer reading it through its own learned binary mask.

The prototypes are registered once as ``methods.prototype_<group>``; a family of tasks stores them
once. Mask scores train at their own learning rate and weight decay (§2.5) and are stored as packed
bits. With several tasks (ProPETL-m), each task has one mask per prototype shared by all layers,
OR-ed with the layer's (`sources.TaskContext`).
"""

from __future__ import annotations

import hashlib

from torch import nn

from ..errors import ConfigError
from ..forms import OwnedParams
from ..registry import register_source
from ..sources import MaskedPrefix, MaskedPrototype, MaskedView, TaskContext, _Masked
from .base import ParameterSource

PROTOTYPE_PREFIX = "methods.prototype_"
TASK_BANK_PREFIX = "task_masks_"


@register_source("masked_prototype")
class MaskedPrototypeSource(ParameterSource):
    exports = ("freeze_masks", "task_context")

    def __init__(self, host, config):
        super().__init__(host, config)
        tasks = host.options.get("tasks")
        self.task_context = TaskContext(tasks) if tasks else None
        self.frozen = bool(host.options.get("frozen_masks"))

    # ------------------------------------------------------------------ building
    def _prototype(self, group: str, make: callable) -> nn.Module:
        key = f"prototype_{group}"
        if key not in self.host.methods:
            self.register(key, make())
        return self.host.methods[key]

    def task_bank(self, group: str, shapes: dict) -> nn.ModuleList | None:
        """One mask per task for a prototype group, shared by all its layers (created once)."""
        if self.task_context is None:
            return None
        key = f"{TASK_BANK_PREFIX}{group}"
        if key not in self.host.methods:
            self.register(key, nn.ModuleList(MaskedView(shapes, self.config.mask_keep) for _ in self.task_context.tasks))
        return self.host.methods[key]

    def params(self, group, make_tensors, masked):
        prototype = self._prototype(group, lambda: OwnedParams(make_tensors()))
        shapes = {n: tuple(prototype.get(n).shape) for n in masked}
        return MaskedPrototype(prototype, masked, self.config.mask_keep, frozen=self.frozen,
                               task_bank=self.task_bank(group, shapes), context=self.task_context)

    def prefix(self, make_prototype, make_owned, n_sites: int):
        prototype = self._prototype("prefix", make_prototype)
        bank = self.task_bank("prefix", {"prefix": tuple(prototype.site_prefix(0).shape)})
        return MaskedPrefix(prototype, n_sites, self.config.mask_keep, frozen=self.frozen, task_bank=bank,
                            context=self.task_context)

    # ------------------------------------------------------------------ training
    def optimizer_rules(self):
        settings = {"weight_decay": self.config.mask_weight_decay}
        if self.config.mask_learning_rate is not None:
            settings["lr"] = self.config.mask_learning_rate
        return [(lambda name, _: ".scores." in name, settings)]

    def select_task(self, task: str) -> None:
        """Select the task whose masks the next forwards use (multi-task ProPETL-m)."""
        if self.task_context is not None:
            self.task_context.set(task)

    def freeze_masks(self):
        """Fix every mask as bits (inference: masked weights are then computed once, not per forward)."""
        for module in self.host.methods.modules():
            if isinstance(module, MaskedView):
                module.freeze()
        self.frozen = True
        return self.host

    # ------------------------------------------------------------------ mixed-task batches
    def mixed_parts(self):
        """The forms' parts carry this source; for a task bank its frozen masks stay packed bits, unpacked
        when a batch uses them (no dense masked weight is kept per task)."""
        if not self.frozen:
            raise ConfigError("a ProPETL model serves mixed batches with its masks frozen as bits; call freeze_masks() "
                              "first (a saved task module loads that way)")
        for module in self.host.methods.modules():
            if isinstance(module, MaskedView):
                module.keep_as_bits()
            if isinstance(module, MaskedPrototype):
                module._materialized.clear()
        return []

    def share_across_tasks(self, cache: dict) -> None:
        """Tasks of one ProPETL-m family (or one prototype) hold their shared prototype once."""
        for key in [k for k in self.keys if k.startswith("prototype_")]:
            mine = self.host.methods[key]
            digest = hashlib.sha256()
            for name, tensor in sorted(mine.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            shared = cache.setdefault(("propetl", key, digest.hexdigest()), mine)
            if shared is mine:
                continue
            for module in self.host.methods.modules():
                for attribute in ("prototype", "generator"):  # MaskedPrototype, MaskedPrefix
                    if getattr(module, attribute, None) is mine:
                        object.__setattr__(module, attribute, shared)
            self.host.methods[key] = shared

    # ------------------------------------------------------------------ storage
    def _masked_modules(self) -> dict[str, _Masked]:
        return {f"methods.{path}": m for path, m in self.host.methods.named_modules() if isinstance(m, _Masked)}

    def stored_tensors(self):
        return {name: value for name, value in super().stored_tensors().items()
                if not name.startswith(f"methods.{TASK_BANK_PREFIX}")}  # folded into each layer's stored mask

    def filter_stored(self, tensors, task: str | None = None):
        if task is not None:
            self.select_task(task)
        kept = {name: value for name, value in tensors.items() if ".scores." not in name}
        for path, module in self._masked_modules().items():
            for name, bits in module.packed_masks().items():
                kept[f"{path}.mask_bits.{name}"] = bits
        return kept

    def load_consume(self, tensors):
        modules = self._masked_modules()
        for name in [n for n in tensors if ".mask_bits." in n]:
            path, _, mask_name = name.partition(".mask_bits.")
            modules[path].load_packed_masks(mask_name, tensors[name])
        return {name: value for name, value in tensors.items() if ".mask_bits." not in name}

    def shares(self, name):
        return name.startswith(PROTOTYPE_PREFIX)

    def byte_kind(self, name):
        if ".mask_bits." in name:
            return "mask_bytes"
        return "prototype_bytes" if name.startswith(PROTOTYPE_PREFIX) else None
