"""`PetlModel`: a frozen transformers backbone with one design config attached.

Attaching follows the config dimension by dimension (attention, FFN, prompt, bias) on the resolved
sites of the backbone; every method module lives in `PetlModel.methods`, the wrappers inside the
backbone only reference them. Nothing here knows a module name of a backbone family (see sites.py).
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from . import attention as prefix_attention
from . import first_position
from .config import PetlConfig
from .diff import GatedDiff, SparseDiff, decode_indices, diff_layout, encode_indices, project_to_density
from .dropout import disable_fast_dropout, enable_fast_dropout
from .errors import ConfigError, ModuleFormatError
from .forms import (Bottleneck, FlatPrefix, LowRank, OwnedParams, PrefixGenerator, PromptEmbedding,
                    bottleneck_tensors, lowrank_tensors)
from .insertion import BiasDelta, InputCapture, LinearWithChanges, PfeifferLayerNorm, set_module
from .sites import BackboneSites, resolve_sites
from .sources import MaskedPrefix, MaskedPrototype, MaskedView, TaskContext, _Masked


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the task head: those outside `model.base_model` and not tied to it (a trained pooler,
    `PetlConfig.train_pooler`, is added by PetlModel)."""
    base = model.base_model
    if base is model:
        return []
    base_ids = {id(p) for p in base.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in base_ids]


def pooler_parameter_names(model: nn.Module) -> list[str]:
    """The parameters of the backbone's pooler (BERT); none where the backbone has no pooler."""
    pooler = getattr(model.base_model, "pooler", None)
    if not isinstance(pooler, nn.Module):
        return []
    ids = {id(p) for p in pooler.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def backbone_fingerprint(model: nn.Module) -> str:
    """A content hash of the backbone (head excluded): names, shapes, dtypes and a strided sample of values.

    Sampling up to 4,096 values per tensor keeps this fast on base-size models while telling apart
    two checkpoints of the same architecture.
    """
    head = set(head_parameter_names(model))
    digest = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode())
    for name, param in model.named_parameters():
        if name in head:
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(torch.float32).cpu().contiguous()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


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
    """A backbone with a PETL method attached. `forward` takes and returns what the backbone's does."""

    def __init__(self, model: nn.Module, config: PetlConfig, *, flat_prefix: bool = False, frozen_masks: bool = False,
                 tasks: list[str] | None = None, sources: list | None = None, fast_cpu_dropout: bool = True):
        """``fast_cpu_dropout``: train on the CPU with unipetl.dropout's sampler instead of torch's (the same
        distribution to within 2^-17 at under half the cost; nothing changes on a GPU or in eval mode)."""
        super().__init__()
        if not isinstance(config, PetlConfig):
            raise ConfigError(f"config must be a PetlConfig, got {type(config).__name__}")
        self.sites: BackboneSites = resolve_sites(model)  # raises for unsupported architectures first
        if has_method_attached(model):
            raise ConfigError("this model already has a unipetl method attached; call unload() on that PetlModel first")
        self.config = config
        self.fingerprint = backbone_fingerprint(model)  # taken before anything is attached
        pooler = pooler_parameter_names(model) if config.train_pooler else []
        self.head_names = pooler + head_parameter_names(model)
        if config.train_pooler and not pooler:
            raise ConfigError(f"train_pooler=True: {type(model).__name__} has no pooler (its head is "
                              f"{', '.join(self.head_names) or 'empty'}); train_pooler is for heads over a pooler (BERT)")
        # The pooler is the backbone's: training or loading a task writes into it, unload() puts it back.
        self._pooler_original = {name: p.detach().clone() for name, p in model.named_parameters() if name in pooler}
        self.model = model
        self.methods = nn.ModuleDict()
        self.prompt: PromptEmbedding | None = None
        self.merged = False
        self.task: dict | None = None  # task metadata carried in the module header
        self._wrapped: dict[str, nn.Module] = {}  # path -> original module, to unload
        self._hooks: list[Any] = []
        self._prefix_modules: list[nn.Module] = []
        self._prefix_original: str | None = None
        self.flat_prefix = flat_prefix or not config.prefix_mlp
        self.frozen_masks = frozen_masks
        # Multi-task ProPETL-m: task masks shared by all layers, OR-ed with the layer masks.
        self.task_context = TaskContext(tasks) if tasks and config.param_source == "masked_prototype" else None
        self.task_name: str | None = None  # the task whose masks stored_tensors() writes (multi-task views)
        self.group_rules: list = []  # see parameter_groups
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}  # for unload
        self._sources = sources  # frozen source adapters of a transfer method (transfer.py)
        self.fast_cpu_dropout = fast_cpu_dropout
        # Where the head reads only the first position of the last layer, run that layer's FFN only there
        # (first_position.py): the same logits and gradients, a shorter step. False keeps every position.
        self.first_position_only = True
        self._attach()
        self._set_trainable()
        model.__dict__[ATTACHED_MARK] = config.preset or config.param_source
        self._fast_dropouts = enable_fast_dropout(self) if fast_cpu_dropout else []  # to switch back on unload
        self._attention_original = None  # set where attention now runs through dropout_attention
        if fast_cpu_dropout and not self._prefix_modules:  # prefix sites draw their dropout themselves
            self._attention_original = prefix_attention.enable_dropout_attention(self.model)

    # ================================================================= attaching
    def _wrap_linear(self, path: str) -> LinearWithChanges:
        current = self.model.get_submodule(path)
        if isinstance(current, LinearWithChanges):
            return current
        wrapper = LinearWithChanges(current)
        self._wrapped[path] = current
        set_module(self.model, path, wrapper)
        return wrapper

    def _register(self, key: str, module: nn.Module) -> nn.Module:
        self.methods[key] = module
        return module

    @property
    def masked(self) -> bool:
        return self.config.param_source == "masked_prototype"

    def _params(self, group: str, make_tensors, masked: tuple[str, ...]):
        """The parameter source of one layer's form: owned tensors, or a masked view of the group's prototype."""
        if not self.masked:
            return OwnedParams(make_tensors())
        key = f"prototype_{group}"
        if key not in self.methods:
            self._register(key, OwnedParams(make_tensors()))
        shapes = {n: tuple(self.methods[key].get(n).shape) for n in masked}
        return MaskedPrototype(self.methods[key], masked, self.config.mask_keep, frozen=self.frozen_masks,
                               task_bank=self._task_bank(group, shapes), context=self.task_context)

    def _task_bank(self, group: str, shapes: dict) -> nn.ModuleList | None:
        """One mask per task for a prototype group, shared by all its layers (created once)."""
        if self.task_context is None:
            return None
        key = f"task_masks_{group}"
        if key not in self.methods:
            self._register(key, nn.ModuleList(MaskedView(shapes, self.config.mask_keep) for _ in self.task_context.tasks))
        return self.methods[key]

    def set_task(self, task: str) -> None:
        """Select the task whose masks the next forwards use (multi-task ProPETL-m)."""
        if self.task_context is not None:
            self.task_context.set(task)

    def _attach(self) -> None:
        cfg, d = self.config, self.sites.hidden_size
        if cfg.param_source == "gated_diff":
            self._attach_diff()
            return
        if cfg.param_source == "scaled_mixture":
            from .transfer import attach_transfer

            if not self._sources:
                raise ConfigError("param_source='scaled_mixture' needs its source adapters: build it with "
                                  "unipetl.transfer.get_transfer_model(model, sources, method)")
            attach_transfer(self, self._sources)
            return
        if self.masked:
            # Mask scores: their own learning rate and weight decay (ProPETL §2.5).
            mask_lr = {"weight_decay": cfg.mask_weight_decay}
            if cfg.mask_learning_rate is not None:
                mask_lr["lr"] = cfg.mask_learning_rate
            self.group_rules.append((lambda name, _: ".scores." in name, mask_lr))
        if cfg.attn_mode == "lora":
            self._attach_attention_lora()
        elif cfg.attn_mode == "adapter":
            self._attach_attention_adapter()
        elif cfg.attn_mode == "prefix":
            self._attach_prefix()
        elif cfg.attn_mode == "prompt_tuning":
            embed_dim = self.model.get_input_embeddings().embedding_dim
            self.prompt = self._register("prompt", PromptEmbedding(cfg.attn_bn, embed_dim))
        elif cfg.attn_mode == "bitfit":
            self._attach_bitfit()
        if cfg.ffn_mode == "lora":
            self._attach_ffn_lora()
        elif cfg.ffn_mode == "adapter":
            self._attach_ffn_adapter(d)

    def _lora(self, key: str, group: str, path: str, linear: nn.Module, rank: int) -> None:
        """LoRA on one linear; ``group`` names the prototype shared by all layers (masked sources)."""
        cfg = self.config
        source = self._params(group, lambda: lowrank_tensors(linear.in_features, rank, linear.out_features, cfg.lora_init),
                              ("lora_A", "lora_B"))
        form = self._register(key, LowRank(source, rank, cfg.lora_alpha, cfg.lora_dropout))
        object.__setattr__(self._wrap_linear(path), "lora", form)

    def _attach_attention_lora(self) -> None:
        for layer in self.sites.layers:
            for j, site in enumerate(layer.attention):
                for target in self.config.lora_targets:
                    key = f"{layer.stack}{layer.index}_attn{j}_lora_{target}"
                    self._lora(key, f"attn_lora_{target}", site.paths[target], getattr(site, target), self.config.attn_bn)

    def _attach_ffn_lora(self) -> None:
        for layer in self.sites.layers:
            linears = [(f"ffn_in.{i}", m) for i, m in enumerate(layer.ffn_in)] + [("ffn_out", layer.ffn_out)]
            for name, linear in linears:
                key = f"{layer.stack}{layer.index}_ffn_lora_{name.replace('.', '')}"
                self._lora(key, f"ffn_lora_{name.replace('.', '')}", layer.paths[name], linear, self.config.ffn_bn)

    def _adapter(self, key: str, group: str, d: int, r: int, init: str, layernorm: str, scalar) -> Bottleneck:
        cfg = self.config
        source = self._params(group, lambda: bottleneck_tensors(d, r, d, init), ("down_weight", "up_weight"))
        return self._register(key, Bottleneck(source, d, cfg.adapter_act, cfg.adapter_dropout, layernorm, scalar))

    def _capture(self, module: nn.Module) -> InputCapture:
        capture = InputCapture(module)
        self._hooks.append(capture)
        return capture

    def _attach_attention_adapter(self) -> None:
        cfg, d = self.config, self.sites.hidden_size
        r = cfg.resolve_bn("attn", d)
        for layer in self.sites.layers:
            for j, site in enumerate(layer.attention):
                # He et al.: the attention adapter always has its own LN on the input, bert init, scalar 1.
                adapter = self._adapter(f"{layer.stack}{layer.index}_attn{j}_adapter", "attn_adapter", d, r, "bert", "in", 1.0)
                wrapper = self._wrap_linear(site.paths["o"])
                if cfg.attn_option == "sequential":
                    object.__setattr__(wrapper, "output_adapter", adapter)
                    wrapper.output_mode = "sequential"
                else:  # parallel: reads the attention input, adds to the head outputs before W_o
                    object.__setattr__(wrapper, "input_adapter", adapter)
                    wrapper.input_capture = self._capture(site.module)

    def _attach_ffn_adapter(self, d: int) -> None:
        cfg = self.config
        r = cfg.resolve_bn("ffn", d)
        for layer in self.sites.layers:
            adapter = self._adapter(f"{layer.stack}{layer.index}_ffn_adapter", "ffn_adapter", d, r, cfg.ffn_adapter_init_option,
                                    cfg.ffn_adapter_layernorm_option, cfg.ffn_adapter_scalar)
            if cfg.ffn_option == "pfeiffer" and layer.ffn_layernorm is not None:
                wrapper = PfeifferLayerNorm(layer.ffn_layernorm, adapter)
                self._wrapped[layer.paths["ffn_layernorm"]] = layer.ffn_layernorm
                set_module(self.model, layer.paths["ffn_layernorm"], wrapper)
                continue
            wrapper = self._wrap_linear(layer.paths["ffn_out"])
            object.__setattr__(wrapper, "output_adapter", adapter)
            if cfg.ffn_option == "sequential":
                wrapper.output_mode = "sequential"
            else:  # parallel, or Pfeiffer on a pre-LN block: the adapter also reads the FFN input
                wrapper.output_mode = "parallel" if cfg.ffn_option == "parallel" else "pfeiffer_preln"
                wrapper.output_capture = self._capture(layer.ffn_in[0])

    def _attach_prefix(self) -> None:
        cfg, d = self.config, self.sites.hidden_size
        groups: dict[str, list] = {}  # encoder self / decoder self / decoder cross: one generator each
        for layer in self.sites.layers:
            for site in layer.attention:
                groups.setdefault(f"prefix_{layer.stack}_{site.kind}", []).append(site)
        prototype = None
        if self.masked:  # ProPrefix: one generated (l, 2d) prefix for all sites, masked per site
            prototype = self._register("prototype_prefix", FlatPrefix(torch.randn(1, cfg.attn_bn, 2 * d) * 0.02, cfg.prefix_dropout)
                                       if self.flat_prefix else
                                       PrefixGenerator(cfg.attn_bn, d, cfg.mid_dim, 1, cfg.prefix_dropout))
        for key, sites in groups.items():
            if prototype is not None:
                bank = self._task_bank("prefix", {"prefix": tuple(prototype.site_prefix(0).shape)})
                source = MaskedPrefix(prototype, len(sites), cfg.mask_keep, frozen=self.frozen_masks, task_bank=bank,
                                      context=self.task_context)
            elif self.flat_prefix:
                source = FlatPrefix(torch.randn(len(sites), cfg.attn_bn, 2 * d) * 0.02, cfg.prefix_dropout)
            else:
                source = PrefixGenerator(cfg.attn_bn, d, cfg.mid_dim, len(sites), cfg.prefix_dropout)
            self._register(key, source)
            for index, site in enumerate(sites):
                needs_query = cfg.attn_option in ("cross_attn", "cross_attn_relu")
                prefix_site = prefix_attention.PrefixSite(
                    source, index, cfg.attn_option, cfg.attn_composition, d, query_proj=site.q,
                    capture=self._capture(site.module) if needs_query else None, fast_dropout=self.fast_cpu_dropout)
                self._register(f"{key}_site{index}", prefix_site)
                object.__setattr__(site.module, prefix_attention.PREFIX_ATTR, prefix_site)
                self._prefix_modules.append(site.module)
        self._prefix_original = prefix_attention.enable_prefix_attention(
            self.model, self._prefix_modules, self.sites.family.manual_attention, self.fast_cpu_dropout)

    def _attach_diff(self) -> None:
        """Diff pruning: a diff over every backbone weight (head excluded), gated (L0 stage) or sparse."""
        cfg, layout = self.config, diff_layout(self.model)
        if cfg.diff_stage == "l0":
            self._register("diff", GatedDiff(layout, cfg.gate_init, cfg.gate_limits, cfg.gate_structured, cfg.gate_eval))
            self.group_rules.append((lambda name, _: "gate_logits" in name,
                                     {"lr": cfg.gate_learning_rate, "weight_decay": 0.0}))
        else:  # sized when a module is loaded (load_stored_tensors) or by project()
            self._register("diff", SparseDiff(layout, torch.zeros(0, dtype=torch.int64), torch.zeros(0)))

    @property
    def diff(self) -> GatedDiff | SparseDiff | None:
        return self.methods["diff"] if "diff" in self.methods else None

    def _diffed_parameters(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        names = self.diff.layout.names
        return dict(zip(names, self.diff.diffed([params[name] for name in names])))

    @contextmanager
    def diff_written_in(self):
        """Within the block, the backbone's own tensors hold theta_pre + delta (restored bit-exactly after)."""
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            saved = {}
            for name, part in self.diff.layout.split(self.diff.delta().detach()).items():
                if bool(part.any()):
                    saved[name] = params[name].detach().clone()
                    params[name].add_(part.to(params[name].dtype))
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    params[name].copy_(original)

    def project(self, density: float | None = None) -> dict:
        """Diff pruning stage 2: keep the ``density`` fraction of largest |delta| entries (default: the
        config's diff_density) and switch to the fixed-mask stage. Returns the projection's statistics."""
        if not isinstance(self.diff, GatedDiff):
            raise ConfigError("project() needs a diff in the L0 stage (param_source='gated_diff', diff_stage='l0')")
        density = self.config.diff_density if density is None else density
        sparse, stats = project_to_density(self.diff, density, self.config.projection_gates)
        self.methods["diff"] = sparse.to(self.diff.weight.device)
        self.config = self.config.replace(diff_stage="fixed_mask", diff_density=density)
        self.group_rules = [rule for rule in self.group_rules if not rule[0]("gate_logits", None)]
        return stats

    def _attach_bitfit(self) -> None:
        head = {name.rpartition(".")[0] for name in self.head_names}
        deltas = nn.ParameterDict()
        for path, module in self.model.named_modules():
            bias = getattr(module, "bias", None)
            if path in head or not isinstance(module, (nn.Linear, nn.LayerNorm)) or bias is None:
                continue
            deltas[path.replace(".", "__")] = nn.Parameter(torch.zeros_like(bias))
            self._hooks.append(BiasDelta(module, deltas[path.replace(".", "__")]))
        if not deltas:
            raise ConfigError(
                f"bitfit trains biases, but this {self.sites.family.family} backbone has no bias parameters")
        self._register("bitfit", deltas)

    def _set_trainable(self) -> None:
        full = self.config.full_finetune
        head = set(self.head_names)
        for name, param in self.model.named_parameters():
            param.requires_grad_(full or (name in head and self.config.train_head))
        for param in self.methods.parameters():
            param.requires_grad_(True)

    # ================================================================= running
    def forward(self, *args, **kwargs):
        with ExitStack() as stack:
            stack.enter_context(self.first_position_context(self.model, kwargs))
            if self.diff is not None:  # theta_pre + delta, without writing into the frozen backbone
                return torch.func.functional_call(self.model, self._diffed_parameters(), args, kwargs, strict=False)
            for generator in self._prefix_generators:  # every site's prefix computed once per forward
                stack.enter_context(generator.one_pass())
            if self.prompt is not None:
                return self._forward_with_prompt(args, kwargs)
            return self.model(*args, **kwargs)

    def first_position_context(self, model: nn.Module, kwargs: dict):
        """The context for one call of ``model(**kwargs)`` on this backbone (this model, or a multi-task
        member sharing it): the last layer's FFN at the first position only where that applies."""
        if not self.first_position_only:
            return nullcontext()
        return first_position.first_position_only(model, self.sites, kwargs)

    @property
    def _prefix_generators(self) -> list[PrefixGenerator]:
        return [module for module in self.methods.values() if isinstance(module, PrefixGenerator)]

    def _forward_with_prompt(self, args, kwargs):
        kwargs = self._with_prompt(kwargs)
        # Extractive QA: span scores are over the input tokens, so the loss is taken after the prompt's
        # positions are dropped (the head would otherwise also normalise over the prompt).
        starts, ends = kwargs.pop("start_positions", None), kwargs.pop("end_positions", None)
        out = self.model(*args, **kwargs)
        if getattr(out, "start_logits", None) is None:
            return out
        n = self.prompt.embedding.shape[0]
        start_logits, end_logits = out.start_logits[:, n:], out.end_logits[:, n:]
        loss = None
        if starts is not None and ends is not None:
            ignored = start_logits.size(1)  # as the span heads do: targets past the input are ignored
            ce = nn.functional.cross_entropy
            loss = (ce(start_logits, starts.clamp(0, ignored), ignore_index=ignored)
                    + ce(end_logits, ends.clamp(0, ignored), ignore_index=ignored)) / 2
        return type(out)(loss=loss, start_logits=start_logits, end_logits=end_logits,
                         hidden_states=out.hidden_states, attentions=out.attentions)

    def generate(self, **kwargs):
        if self.diff is not None:
            with self.diff_written_in():
                return self.model.generate(**kwargs)
        if self.prompt is not None:
            kwargs = self._with_prompt(kwargs)
        return self.model.generate(**kwargs)

    def _with_prompt(self, kwargs: dict) -> dict:
        """Prompt tuning: run the backbone on [prompt; token embeddings] with the masks extended."""
        kwargs = dict(kwargs)
        input_ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if input_ids is None:
                raise ValueError("prompt tuning needs input_ids or inputs_embeds")
            embeds = self.model.get_input_embeddings()(input_ids)
        if kwargs.get("position_ids") is not None:
            raise ValueError("prompt tuning shifts positions; do not pass position_ids")
        batch, length = embeds.shape[:2]
        n = self.prompt.embedding.shape[0]
        kwargs["inputs_embeds"] = self.prompt(embeds)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        if kwargs.get("token_type_ids") is not None:
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(batch, n), tt], dim=1)
        return kwargs

    # ================================================================= training hooks
    @property
    def generation_config(self):
        return getattr(self.model, "generation_config", None)

    def parameter_groups(self, learning_rate: float, weight_decay: float) -> list[dict]:
        """Optimizer groups: biases, LayerNorm weights and scalars without weight decay, the rest with it.

        Methods with parameters that need their own rate (mask scores, gate logits, scales) add
        (predicate, {"lr": ..., "weight_decay": ...}) rules to ``self.group_rules``; the first match wins.
        """
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            settings = {"lr": learning_rate, "weight_decay": 0.0 if param.dim() < 2 else weight_decay}
            for predicate, override in self.group_rules:
                if predicate(name, param):
                    settings = {**settings, **override}
                    break
            groups.setdefault((settings["lr"], settings["weight_decay"]), []).append(param)
        return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]

    def extra_loss(self) -> torch.Tensor | None:
        """Loss terms a method adds to the task loss: diff pruning's expected-L0 penalty in its L0 stage,
        AdapterFusion's value regulariser."""
        if isinstance(self.diff, GatedDiff) and self.training and self.config.l0_penalty > 0:
            return self.config.l0_penalty * self.diff.expected_l0()
        if self.config.param_source == "scaled_mixture" and self.training:
            from .transfer import transfer_regularizer

            return transfer_regularizer(self)
        return None

    # ================================================================= accounting
    @property
    def pooler_names(self) -> list[str]:
        """The backbone pooler's parameters that train with the head (`train_pooler`); empty otherwise."""
        return list(self._pooler_original)

    def head_parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.head_names if name in params}

    def report(self, n_tasks: int = 1) -> dict[str, Any]:
        """Parameter counts and the exact bytes `save` writes, with their breakdown.

        ``family_bytes_per_task``: bytes per task (head excluded) when ``n_tasks`` tasks share one
        stored prototype (ProPETL); equal to the module's bytes without head for other methods.
        """
        from .storage import serialize

        head = self.head_parameters()
        head_ids = {id(p) for p in head.values()}
        backbone_params = sum(p.numel() for p in self.model.parameters() if id(p) not in head_ids)
        method_params = sum(p.numel() for p in self.methods.parameters() if p.requires_grad)
        trainable = method_params + (backbone_params if self.config.full_finetune else 0)
        header, weights = serialize(self, self.task)
        breakdown = {"prototype_bytes": 0, "mask_bytes": 0, "head_bytes": 0, "method_bytes": 0, "backbone_bytes": 0}
        for name, tensor in self.stored_tensors().items():
            kind = ("mask_bytes" if ".mask_bits." in name else "prototype_bytes" if name.startswith("methods.prototype_")
                    else "head_bytes" if name.startswith("head.") else "backbone_bytes" if name.startswith("backbone.")
                    else "method_bytes")
            breakdown[kind] += tensor.numel() * tensor.element_size()
        stored = len(header) + len(weights)
        breakdown["header_bytes"] = stored - sum(breakdown.values())
        per_task = stored - breakdown["head_bytes"] - breakdown["prototype_bytes"] + breakdown["prototype_bytes"] / n_tasks
        return {
            "preset": self.config.preset,
            "family": self.sites.family.family,
            "trainable_params": trainable,
            "head_params": sum(p.numel() for p in head.values()),
            "backbone_params": backbone_params,
            "trainable_percent": 100.0 * trainable / backbone_params,
            "stored_bytes": stored,
            "stored_breakdown": breakdown,
            "n_tasks": n_tasks,
            "family_bytes_per_task": per_task,
        }

    def print_trainable_parameters(self) -> None:
        r = self.report()
        print(f"trainable params: {r['trainable_params']:,} (+ head {r['head_params']:,}) || "
              f"backbone params: {r['backbone_params']:,} || trainable%: {r['trainable_percent']:.4f} || "
              f"stored bytes: {r['stored_bytes']:,}")

    # ================================================================= state for storage
    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a task module needs: method weights (prefix MLPs ejected, mask scores as packed
        bits), head, and for `full` the backbone."""
        tensors: dict[str, torch.Tensor] = {}
        if self.task_name is not None:
            self.set_task(self.task_name)
        masked = {path: m for path, m in self.methods.named_modules() if isinstance(m, _Masked)}
        for key, module in self.methods.items():
            if key.startswith("task_masks_"):
                continue  # folded into each layer's stored mask (the task's OR the layer's)
            if isinstance(module, PrefixGenerator):
                tensors[f"methods.{key}.values"] = module.eject()
                continue
            if isinstance(module, SparseDiff):  # sorted positions as gaps, and the values
                tensors[f"methods.{key}.index_gaps"] = encode_indices(module.indices)
                tensors[f"methods.{key}.values"] = module.values
                continue
            for name, value in module.state_dict().items():
                if ".scores." not in f".{key}.{name}":
                    tensors[f"methods.{key}.{name}"] = value
        for path, source in masked.items():
            for name, bits in source.packed_masks().items():
                tensors[f"methods.{path}.mask_bits.{name}"] = bits
        for name, param in self.head_parameters().items():
            tensors[f"head.{name}"] = param
        if self.config.full_finetune:
            head = set(self.head_names)
            for name, param in self.model.named_parameters():
                if name not in head:
                    tensors[f"backbone.{name}"] = param
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def freeze_masks(self) -> "PetlModel":
        """Fix every ProPETL mask as bits (inference: masked weights are then computed once, not per forward)."""
        for module in self.methods.modules():
            if isinstance(module, MaskedView):
                module.freeze()
        self.frozen_masks = True
        return self

    @torch.no_grad()
    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str = "module") -> None:
        """Copy tensors written by `stored_tensors` of a flat-prefix model; checks every name and shape first."""
        if isinstance(self.diff, SparseDiff) and "methods.diff.index_gaps" in tensors:  # its size comes from the file
            indices = decode_indices(tensors["methods.diff.index_gaps"], self.diff.layout.total, source)
            values = tensors.get("methods.diff.values", torch.zeros(0))
            if values.shape != indices.shape:
                raise ModuleFormatError(f"{source}: {values.numel()} diff values for {indices.numel()} indices")
            self.methods["diff"] = SparseDiff(self.diff.layout, indices, values)
            tensors = {k: v for k, v in tensors.items() if k != "methods.diff.index_gaps"}
        expected = {k: v.shape for k, v in self.stored_tensors().items() if k != "methods.diff.index_gaps"}
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ModuleFormatError(
                f"{source}: tensors do not match this config and backbone; missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ModuleFormatError(
                    f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)} "
                    "(was the head built with another number of labels?)")
        sources = {f"methods.{path}": m for path, m in self.methods.named_modules() if isinstance(m, _Masked)}
        for name in [n for n in tensors if ".mask_bits." in n]:
            path, _, mask_name = name.partition(".mask_bits.")
            sources[path].load_packed_masks(mask_name, tensors[name])
        tensors = {n: v for n, v in tensors.items() if ".mask_bits." not in n}
        targets = {f"methods.{k}": v for k, v in self.methods.state_dict(keep_vars=True).items()}
        targets.update({f"head.{k}": v for k, v in self.head_parameters().items()})
        targets.update({f"backbone.{k}": v for k, v in self.model.named_parameters()})
        for name, value in tensors.items():
            targets[name].copy_(value)

    # ================================================================= merge / unload
    @torch.no_grad()
    def merge(self) -> "PetlModel":
        """Fold LoRA, BitFit and a diff into the backbone weights (zero inference overhead). Irreversible."""
        if self.diff is not None:
            params = dict(self.model.named_parameters())
            for name, part in self.diff.layout.split(self.diff.delta().detach()).items():
                params[name].add_(part.to(params[name].dtype))
            del self.methods["diff"]
        for path, original in list(self._wrapped.items()):
            wrapper = self.model.get_submodule(path)
            if isinstance(wrapper, LinearWithChanges) and wrapper.lora is not None:
                wrapper.base.weight.add_(wrapper.lora.delta_weight().to(wrapper.base.weight.dtype))
                object.__setattr__(wrapper, "lora", None)
                if wrapper.is_empty:
                    set_module(self.model, path, original)
                    del self._wrapped[path]
        for hook in [h for h in self._hooks if isinstance(h, BiasDelta)]:
            hook.merge()
            self._hooks.remove(hook)
        for key in [k for k, m in self.methods.items() if isinstance(m, LowRank) or k == "bitfit"]:
            del self.methods[key]
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
        if self._prefix_modules:
            prefix_attention.disable_prefix_attention(self.model, self._prefix_modules, self._prefix_original,
                                                      self.sites.family.manual_attention)
            self._prefix_modules = []
        disable_fast_dropout(self._fast_dropouts)
        self._fast_dropouts = []
        if self._attention_original is not None:
            self.model.set_attn_implementation(self._attention_original)
            self._attention_original = None
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
        import copy

        view = copy.copy(self)
        view.task_name = task
        view._modules = dict(self._modules)
        view._modules["model"] = model
        view.head_names = self.pooler_names + head_parameter_names(model)  # the pooler is in the shared backbone
        return view

    # ================================================================= persistence
    def save(self, directory, task: dict | None = None) -> dict:
        """Write the task module; ``task`` (name, labels, metrics...) is kept in its header and in ``self.task``."""
        from .storage import save_module

        if task is not None:
            self.task = task
        return save_module(self, directory, task=self.task)

    def export_peft(self, directory, base_model_name_or_path: str | None = None) -> None:
        from .peft_export import export_peft

        export_peft(self, directory, base_model_name_or_path)


def get_petl_model(model: nn.Module, config: PetlConfig | str, *, fast_cpu_dropout: bool = True) -> PetlModel:
    """Attach a design config (or a preset name) to a transformers model: backbone frozen, method and head trainable.
    ``fast_cpu_dropout=False`` keeps torch's dropout sampler in CPU training (see PetlModel)."""
    if isinstance(config, str):
        config = PetlConfig.from_preset(config)
    return PetlModel(model, config, fast_cpu_dropout=fast_cpu_dropout)
