"""Write a LoRA task module in PEFT's format (adapter_config.json + adapter_model.safetensors).

PEFT, LoRAX and vLLM load such a directory unchanged. Only LoRA (at attention and/or the FFN) and
the task head fit that format; anything else is refused with the reason.
"""

from __future__ import annotations

import json

import torch

from safetensors.torch import save as save_safetensors

from .errors import ModuleFormatError
from .atomic import write_directory_atomically
from .insertion import LinearWithChanges
from .linear_views import VIEWS_ATTR, FusedQKV
from .sites import head_table

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def export_peft(petl, directory, base_model_name_or_path: str | None = None) -> None:
    cfg = petl.config
    if petl.merged:
        raise ModuleFormatError("cannot export a merged model to PEFT format; export before merge()")
    if cfg.attn_mode not in ("none", "lora") or cfg.ffn_mode not in ("none", "lora") or cfg.full_finetune:
        raise ModuleFormatError(
            f"PEFT's LoRA format holds LoRA only; this module has attn_mode={cfg.attn_mode!r}, "
            f"ffn_mode={cfg.ffn_mode!r}, full_finetune={cfg.full_finetune}")
    tensors, ranks, alphas = {}, {}, {}
    for path, (a, b, scaling) in _lora_weights(petl).items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
        ranks[path] = a.shape[0]
        alphas[path] = scaling * a.shape[0]  # PEFT scales by alpha / r
    if not ranks:
        raise ModuleFormatError("this model has no LoRA weights to export")
    # PEFT's modules_to_save match by module name: the classifier's top-level name, and "pooler" for a
    # trained pooler (train_pooler) inside the backbone.
    pooler = set(petl.pooler_names)
    head_modules = sorted({name.split(".")[0] for name in petl.head_names if name not in pooler}
                          | ({"pooler"} if pooler else set()))
    for name, param in petl.head_parameters().items():
        tensors[f"base_model.model.{name}"] = param
    rank = max(ranks.values(), key=list(ranks.values()).count)  # the most common rank; others by pattern
    config = {
        "peft_type": "LORA",
        "task_type": head_table(petl.model).peft_task_type,
        "base_model_name_or_path": base_model_name_or_path or getattr(petl.model.config, "_name_or_path", None),
        "r": rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": sorted(ranks),
        "rank_pattern": {path: r for path, r in ranks.items() if r != rank},
        "alpha_pattern": {path: a for path, a in alphas.items() if a != cfg.lora_alpha},
        "bias": "none",
        "fan_in_fan_out": VIEWS_ATTR in petl.model.__dict__,  # GPT-2's Conv1D store their weights transposed
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": head_modules or None,
    }
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    files = {PEFT_WEIGHTS_FILE: weights, PEFT_CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    write_directory_atomically(directory, files, marker=PEFT_CONFIG_FILE)


def _lora_weights(petl) -> dict:
    """Module path (as PEFT names it) -> (A, B, scaling). LoRA on views of a fused q/k/v module (GPT-2's
    c_attn) becomes one LoRA on that module: A the views' A stacked, B block-diagonal in their rows (each
    block rescaled to the first view's scaling), so that scaling * B A is each view's own change in its
    rows and zero elsewhere."""
    fused = {path: module for path, module in petl.model.named_modules() if isinstance(module, FusedQKV)}
    out, views = {}, {}
    for path, module in petl.model.named_modules():
        if not (isinstance(module, LinearWithChanges) and module.lora is not None):
            continue
        a, b = module.lora.source.get("lora_A").detach(), module.lora.source.get("lora_B").detach()
        parent, _, name = path.rpartition(".")
        if parent in fused:
            views.setdefault(parent, []).append(("qkv".index(name), a, b, module.lora.scaling))
        else:
            out[path] = (a, b, module.lora.scaling)
    for path, parts in views.items():
        width, scaling = fused[path].q.out_features, parts[0][3]
        a = torch.cat([part[1] for part in parts])
        b = a.new_zeros(3 * width, a.shape[0])
        column = 0
        for index, _, block, own_scaling in parts:
            b[index * width:(index + 1) * width, column:column + block.shape[1]] = block * (own_scaling / scaling)
            column += block.shape[1]
        out[path] = (a, b, scaling)
    return out
