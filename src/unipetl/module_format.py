"""The bytes of a task module: a JSON header and one safetensors file (see storage.py for the files).

Kept apart from storage so that `PetlModel.report()` can count the exact bytes a save writes without
the model depending on the storage layer above it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from safetensors.torch import save as save_safetensors

FORMAT = "unipetl-task-module"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER_FILE = "unipetl_module.json"
WEIGHTS_FILE = "weights.safetensors"


def _library_version() -> str:
    from . import __version__

    return __version__


def serialize(model, task: dict | None = None, family: dict | None = None) -> tuple[bytes, bytes]:
    """The exact bytes a save writes: (header, weights). With ``family`` (the shared file's identity),
    the tensors the model shares with its family (a ProPETL prototype) are left out: they live once
    in the family directory."""
    tensors = model.stored_tensors()
    if family is not None:
        shared = set(model.shared_tensor_names())
        tensors = {k: v for k, v in tensors.items() if k not in shared}
    weights = save_safetensors(tensors)
    config = model.config.to_dict()
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "config": config,
        "prefix_form": "flat" if config["attn_mode"] == "prefix" else None,
        "masks": "bits" if config["param_source"] == "masked_prototype" else None,
        "backbone": {
            "model_type": model.model.config.model_type,
            "family": model.sites.family.family,
            "architecture": type(model.model).__name__,
            "fingerprint": model.fingerprint,
            "num_labels": getattr(model.model.config, "num_labels", None),
        },
        "task": task,
        "family_prototype": family,
        "weights": {"file": WEIGHTS_FILE, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
    }
    return (json.dumps(header, indent=1, sort_keys=True) + "\n").encode(), weights
