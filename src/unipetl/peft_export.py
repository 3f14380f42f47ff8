"""Write a LoRA task module in PEFT's format (adapter_config.json + adapter_model.safetensors).

PEFT, LoRAX and vLLM load such a directory unchanged. Only LoRA (at attention and/or the FFN) and
the task head fit that format; anything else is refused with the reason.
"""

from __future__ import annotations

import json

from safetensors.torch import save as save_safetensors

from .errors import ModuleFormatError
from .atomic import write_directory_atomically
from .insertion import LinearWithChanges
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
    tensors, ranks = {}, {}
    for path, module in petl.model.named_modules():
        if isinstance(module, LinearWithChanges) and module.lora is not None:
            tensors[f"base_model.model.{path}.lora_A.weight"] = module.lora.source.get("lora_A")
            tensors[f"base_model.model.{path}.lora_B.weight"] = module.lora.source.get("lora_B")
            ranks[path] = module.lora.source.get("lora_A").shape[0]
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
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": head_modules or None,
    }
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    files = {PEFT_WEIGHTS_FILE: weights, PEFT_CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    write_directory_atomically(directory, files, marker=PEFT_CONFIG_FILE)
