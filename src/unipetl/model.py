"""`PetlModel`: a frozen transformers backbone with one design config attached.

It does what a wrapper does: resolve the backbone's sites, run the methods the registry selects for
the config (methods/), freeze, forward, merge and unload. Everything a method decides (what it
attaches, its optimizer groups, extra loss, stages, what it stores) is asked of the method through
the contract in methods/base.py. Nothing here knows a module name of a backbone family (sites.py).
"""

from __future__ import annotations

import copy
import json
from contextlib import ExitStack, nullcontext
from typing import Any

import torch
from torch import nn

from . import attention as prefix_attention
from . import accounting, first_position, methods, module_state  # noqa: F401 - importing methods registers the built-in ones
from .config import PetlConfig
from .dropout import disable_fast_dropout, enable_fast_dropout
from .errors import ConfigError, ModuleFormatError
from .heads import backbone_fingerprint, head_parameter_names, pooler_parameter_names
from .insertion import InputCapture, LinearWithChanges, PfeifferLayerNorm, set_module
from .methods.base import Method, Stage
from .atomic import write_directory_atomically
from .module_format import HEADER_FILE, WEIGHTS_FILE, serialize
from .registry import methods_for, source_for
from .linear_views import install_linear_views, original_modules, remove_linear_views
from .sites import BackboneSites, family_for, resolve_sites

__all__ = ["PetlModel", "get_petl_model", "attached_method", "has_method_attached", "head_parameter_names",
           "pooler_parameter_names", "backbone_fingerprint"]

ATTACHED_MARK = "_unipetl_attached"  # set on a backbone while a PetlModel holds it; unload() removes it


def has_method_attached(model: nn.Module) -> bool:
    """True when a PetlModel's changes sit in ``model`` (wrapped linears, Pfeiffer LNs, prefix attention)."""
    return any(isinstance(m, (LinearWithChanges, PfeifferLayerNorm)) or hasattr(m, prefix_attention.PREFIX_ATTR)
               for m in model.modules())


def attached_method(model: nn.Module) -> str | None:
    """The preset a PetlModel attached to ``model`` and still holds, or None; methods that leave no module
    behind (BitFit's hooks, prompt tuning, diff pruning, full fine-tuning) are known by the mark alone."""
    mark = getattr(model, ATTACHED_MARK, None)
    return mark if mark is not None else "a unipetl method" if has_method_attached(model) else None


class PetlModel(nn.Module):
    """A backbone with a PETL method attached. `forward` takes and returns what the backbone's does.

    Options a method reads (`self.options`): ``flat_prefix`` (prefixes held as values, as loaded),
    ``frozen_masks`` (ProPETL masks as fixed bits), ``tasks`` (ProPETL-m task masks), ``sources``
    (a transfer method's frozen source adapters). ``fast_cpu_dropout``: train on the CPU with
    unipetl.dropout's sampler instead of torch's (the same distribution to within 2^-17 at under half
    the cost; nothing changes on a GPU or in eval mode).
    """

    def __init__(self, model: nn.Module, config: PetlConfig, *, flat_prefix: bool = False, frozen_masks: bool = False,
                 tasks: list[str] | None = None, sources: list | None = None, fast_cpu_dropout: bool = True):
        super().__init__()
        if not isinstance(config, PetlConfig):
            raise ConfigError(f"config must be a PetlConfig, got {type(config).__name__}")
        family = family_for(model)  # raises for unsupported architectures first
        if has_method_attached(model):
            raise ConfigError("this model already has a unipetl method attached; call unload() on that PetlModel first")
        with original_modules(model):  # the model as given (GPT-2: its Conv1D), whatever views it holds
            self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}  # for unload
        self.fingerprint = backbone_fingerprint(model)  # taken before anything is attached
        # GPT-2's Conv1D as linears until unload() (unless a task bank holding the model put them there).
        self._installed_views = install_linear_views(model, family.fused_qkv)
        try:
            self._attach(model, config, flat_prefix, frozen_masks, tasks, sources, fast_cpu_dropout)
        except BaseException:
            if self._installed_views:
                remove_linear_views(model)
            raise

    def _attach(self, model, config, flat_prefix, frozen_masks, tasks, sources, fast_cpu_dropout) -> None:
        self.sites: BackboneSites = resolve_sites(model)
        self.config = config
        method_classes = methods_for(config)
        train_pooler = config.train_pooler
        if train_pooler is None:  # automatic: a head over a pooler trains it, as RoBERTa's head its own dense layer
            train_pooler = bool(pooler_parameter_names(model) and head_parameter_names(model)) and not any(
                cls.covers_pooler for cls in method_classes)
        pooler = pooler_parameter_names(model) if train_pooler else []
        self.head_names = pooler + head_parameter_names(model)
        if config.train_pooler and not pooler:
            raise ConfigError(f"train_pooler=True: {type(model).__name__} has no pooler (its head is "
                              f"{', '.join(self.head_names) or 'empty'}); train_pooler is for heads over a pooler (BERT)")
        # The pooler is the backbone's: training or loading a task writes into it, unload() puts it back.
        self._pooler_original = {name: p.detach().clone() for name, p in model.named_parameters() if name in pooler}
        self.model = model
        self.methods = nn.ModuleDict()  # every method module; the backbone's wrappers only reference them
        self.merged = False
        self.task: dict | None = None  # task metadata carried in the module header
        self.task_name: str | None = None  # the task whose masks stored_tensors() writes (multi-task views)
        self.options = {"flat_prefix": flat_prefix, "frozen_masks": frozen_masks, "tasks": tasks, "sources": sources}
        self.fast_cpu_dropout = fast_cpu_dropout
        # Where the head reads only the first position of the last layer, run that layer's FFN only there
        # (first_position.py): the same logits and gradients, a shorter step. False keeps every position.
        self.first_position_only = True
        self._wrapped: dict[str, nn.Module] = {}  # path -> original module, to unload
        self._hooks: list[Any] = []
        source_class = None if any(c.replaces_design for c in method_classes) else source_for(config)
        self.source = source_class(self, config) if source_class else None
        self.plugins: list[Method] = ([self.source] if self.source else []) + [cls(self, config) for cls in method_classes]
        for plugin in self.plugins:
            plugin.attach()
        self._set_trainable()
        model.__dict__[ATTACHED_MARK] = config.preset or config.param_source
        self._fast_dropouts = enable_fast_dropout(self) if fast_cpu_dropout else []  # to switch back on unload
        self._attention_original = None  # set where attention now runs through dropout_attention
        if fast_cpu_dropout and not any(getattr(p, "owns_attention", False) for p in self.plugins):
            self._attention_original = prefix_attention.enable_dropout_attention(self.model)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        for plugin in self.__dict__.get("plugins", ()):  # what a method offers: petl.project(), petl.diff, ...
            if name in plugin.exports:
                return getattr(plugin, name)
        raise AttributeError(f"{type(self).__name__} with {self.__dict__.get('config') and self.config.preset!r} "
                             f"has no attribute {name!r}")

    # ================================================================= services for the methods
    def register(self, key: str, module: nn.Module) -> nn.Module:
        self.methods[key] = module
        return module

    def wrap_linear(self, path: str) -> LinearWithChanges:
        current = self.model.get_submodule(path)
        if isinstance(current, LinearWithChanges):
            return current
        wrapper = LinearWithChanges(current)
        self.replace_module(path, wrapper)
        return wrapper

    def replace_module(self, path: str, module: nn.Module) -> None:
        self._wrapped[path] = self.model.get_submodule(path)
        set_module(self.model, path, module)

    def restore_module(self, path: str) -> None:
        set_module(self.model, path, self._wrapped.pop(path))

    def capture(self, module: nn.Module) -> InputCapture:
        return self.add_hook(InputCapture(module))

    def add_hook(self, hook):
        self._hooks.append(hook)
        return hook

    def remove_hook(self, hook) -> None:
        self._hooks.remove(hook)

    def _set_trainable(self) -> None:
        full = any(plugin.trains_backbone() for plugin in self.plugins)
        head = set(self.head_names)
        for name, param in self.model.named_parameters():
            param.requires_grad_(full or (name in head and self.config.train_head))
        for param in self.methods.parameters():
            param.requires_grad_(True)

    # ================================================================= running
    def forward(self, *args, **kwargs):
        return self.forward_on(self.model, *args, **kwargs)

    def forward_on(self, model: nn.Module, *args, **kwargs):
        """One call of ``model`` (this backbone, or a multi-task member sharing it) with the methods applied."""
        with ExitStack() as stack:
            stack.enter_context(self.first_position_context(model, kwargs))
            for plugin in self.plugins:
                for context in plugin.forward_contexts():
                    stack.enter_context(context)
            for plugin in self.plugins:
                kwargs = plugin.prepare_inputs(kwargs)
            outputs = next((out for out in (p.run_backbone(model, args, kwargs) for p in self.plugins) if out is not None),
                           None)
            if outputs is None:
                outputs = model(*args, **kwargs)
            for plugin in self.plugins:
                outputs = plugin.finish_outputs(outputs)
            return outputs

    def generate(self, **kwargs):
        with ExitStack() as stack:
            for plugin in self.plugins:
                for context in plugin.generate_contexts():
                    stack.enter_context(context)
            given = kwargs
            for plugin in self.plugins:
                kwargs = plugin.prepare_inputs(kwargs)
            sequences = self.model.generate(**kwargs)
            for plugin in self.plugins:
                sequences = plugin.finish_generation(given, sequences)
            return sequences

    def first_position_context(self, model: nn.Module, kwargs: dict):
        """The context for one call of ``model(**kwargs)`` on this backbone (this model, or a multi-task
        member sharing it): the last layer's FFN at the first position only where that applies."""
        if not self.first_position_only:
            return nullcontext()
        return first_position.first_position_only(model, self.sites, kwargs)

    def set_task(self, task: str) -> None:
        """Select the task the next forwards serve (ProPETL-m's task masks; a no-op for other methods)."""
        for plugin in self.plugins:
            plugin.select_task(task)

    @property
    def generation_config(self):
        return getattr(self.model, "generation_config", None)

    # ================================================================= training hooks
    def parameter_groups(self, learning_rate: float, weight_decay: float, named_parameters=None,
                         head_learning_rate: float | None = None, heads=None) -> list[dict]:
        """Optimizer groups: biases, LayerNorm weights and scalars without weight decay, the rest with it;
        a method's rules (mask scores, gate logits) give its parameters their own rate (first match wins).
        ``named_parameters``: of a model that holds this one (multi-task), default this model's.
        ``head_learning_rate``: the rate of the task head (and a trained pooler), default ``learning_rate``;
        ``heads``: that model's head parameters beside this model's own (multi-task: every task's head)."""
        rules = [rule for plugin in self.plugins for rule in plugin.optimizer_rules()]
        if head_learning_rate is not None:
            head = {id(param) for param in [*self.head_parameters().values(), *(heads or [])]}
            rules.insert(0, (lambda name, param: id(param) in head, {"lr": head_learning_rate}))
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, param in (named_parameters if named_parameters is not None else self.named_parameters()):
            if not param.requires_grad:
                continue
            settings = {"lr": learning_rate, "weight_decay": 0.0 if param.dim() < 2 else weight_decay}
            for predicate, override in rules:
                if predicate(name, param):
                    settings = {**settings, **override}
                    break
            groups.setdefault((settings["lr"], settings["weight_decay"]), []).append(param)
        return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]

    def extra_loss(self) -> torch.Tensor | None:
        """Loss terms the methods add to the task loss (diff pruning's L0 penalty, AdapterFusion's regulariser)."""
        terms = [term for term in (plugin.extra_loss() for plugin in self.plugins) if term is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def training_stages(self) -> list[Stage]:
        """The training stages of the attached method (one plain stage for most)."""
        plain = [Stage("train")]
        staged = [stages for stages in (plugin.stages() for plugin in self.plugins) if stages != plain]
        if len(staged) > 1:
            raise ConfigError(f"two attached methods each have training stages: {[[s.name for s in st] for st in staged]}")
        return staged[0] if staged else plain

    # ================================================================= accounting
    @property
    def pooler_names(self) -> list[str]:
        """The backbone pooler's parameters that train with the head (`train_pooler`); empty otherwise."""
        return list(self._pooler_original)

    @torch.no_grad()
    def pooler_deltas(self) -> dict[str, torch.Tensor]:
        """Trained pooler minus the backbone's own, by parameter name (empty unless `train_pooler`)."""
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() - original for name, original in self._pooler_original.items()}

    def head_parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.head_names if name in params}

    def report(self, n_tasks: int = 1) -> dict[str, Any]:
        """Parameter counts and the exact bytes `save` writes, with their breakdown (accounting.py)."""
        return accounting.report(self, n_tasks)

    def print_trainable_parameters(self) -> None:
        r = self.report()
        print(f"trainable params: {r['trainable_params']:,} (+ head {r['head_params']:,}) || "
              f"backbone params: {r['backbone_params']:,} || trainable%: {r['trainable_percent']:.4f} || "
              f"stored bytes: {r['stored_bytes']:,}")

    # ================================================================= state for storage
    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a task module needs, by name (module_state.py)."""
        return module_state.stored_tensors(self)

    def shares(self, name: str) -> bool:
        """True for a stored tensor that a family of tasks stores once (a ProPETL prototype)."""
        return any(plugin.shares(name) for plugin in self.plugins)

    def shared_tensor_names(self) -> list[str]:
        return [name for name in self.stored_tensors() if self.shares(name)]

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str = "module") -> None:
        """Copy tensors written by `stored_tensors`, after checking every name and shape (module_state.py)."""
        module_state.load_stored_tensors(self, tensors, source)

    # ================================================================= merge / unload
    def merge(self) -> "PetlModel":
        """Fold every method that can merge (LoRA, BitFit, a diff; full keeps its weights) into the backbone
        weights: zero inference overhead. Irreversible; methods that cannot merge stay active."""
        for plugin in [p for p in self.plugins if p.mergeable]:
            plugin.merge()
            self.plugins.remove(plugin)
        self.merged = True
        return self

    def unload(self) -> nn.Module:
        """Detach every change and return the backbone as it was (merged weights stay merged)."""
        self.model.__dict__.pop(ATTACHED_MARK, None)
        for path, original in self._wrapped.items():
            set_module(self.model, path, original)
        self._wrapped.clear()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for plugin in self.plugins:
            plugin.unload()
        disable_fast_dropout(self._fast_dropouts)
        self._fast_dropouts = []
        if self._attention_original is not None:
            self.model.set_attn_implementation(self._attention_original)
            self._attention_original = None
        if self._installed_views:
            remove_linear_views(self.model)
        with original_modules(self.model):  # names as given: views a task bank keeps are left as they are
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, original in self._pooler_original.items():
                    params[name].copy_(original)
            for name, param in params.items():
                param.requires_grad_(self._requires_grad.get(name, True))
        return self.model

    def for_task_model(self, model: nn.Module, task: str | None = None) -> "PetlModel":
        """A view of this PetlModel on another task model that shares its backbone (multi-task heads);
        with ``task``, the view stores that task's masks (ProPETL-m)."""
        view = copy.copy(self)
        view.task_name = task
        view._modules = dict(self._modules)
        view._modules["model"] = model
        view.head_names = self.pooler_names + head_parameter_names(model)  # the pooler is in the shared backbone
        return view

    # ================================================================= persistence
    def save(self, directory, task: dict | None = None) -> dict:
        """Write the task module; ``task`` (name, labels, metrics...) is kept in its header and in ``self.task``."""
        if self.merged:
            raise ModuleFormatError("this model was merged into the backbone; save the task module before merge()")
        if task is not None:
            self.task = task
        header, weights = serialize(self, self.task)
        write_directory_atomically(directory, {WEIGHTS_FILE: weights, HEADER_FILE: header}, marker=HEADER_FILE)
        return json.loads(header)

    def export_peft(self, directory, base_model_name_or_path: str | None = None) -> None:
        from .peft_export import export_peft

        export_peft(self, directory, base_model_name_or_path)


def get_petl_model(model: nn.Module, config: PetlConfig | str, *, fast_cpu_dropout: bool = True) -> PetlModel:
    """Attach a design config (or a preset name) to a transformers model: backbone frozen, method and head trainable.
    ``fast_cpu_dropout=False`` keeps torch's dropout sampler in CPU training (see PetlModel)."""
    if isinstance(config, str):
        config = PetlConfig.from_preset(config)
    return PetlModel(model, config, fast_cpu_dropout=fast_cpu_dropout)
