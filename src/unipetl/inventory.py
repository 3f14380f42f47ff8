"""`unipetl methods`: every preset with its trainable parameters and stored bytes on one backbone."""

from __future__ import annotations

import copy

from .backbone import load_backbone
from .config import PetlConfig
from .model import get_petl_model
from .presets import PRESETS, default_head_learning_rate, default_learning_rate, list_presets
from .tasks import get_task


def methods_table(model: str | None = None, task: str = "sst2") -> list[dict]:
    backbone = load_backbone(model, get_task(task))
    rows = []
    for name in list_presets():
        petl = get_petl_model(copy.deepcopy(backbone.model), PetlConfig.from_preset(name))
        report = petl.report()
        if len(petl.training_stages()) > 1:  # diff pruning: trains the dense diff and gates, stores the projected diff
            import torch

            with torch.no_grad():
                petl.diff.weight.normal_()
            petl.project()
            report["stored_bytes"] = petl.report()["stored_bytes"]
        rows.append({"preset": name, "summary": PRESETS[name]["summary"], "learning_rate": default_learning_rate(name),
                     "head_learning_rate": default_head_learning_rate(name),
                     **{k: report[k] for k in ("trainable_params", "head_params", "backbone_params", "trainable_percent",
                                               "stored_bytes")}})
    return rows
