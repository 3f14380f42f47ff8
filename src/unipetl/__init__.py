"""unipetl: parameter-efficient transfer learning in one design space.

The public names below load on first use (PEP 562), so that `import unipetl` and the command line's
argument checks do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "PetlConfig": "config",
    "ConfigError": "errors", "DataError": "errors", "ModuleFormatError": "errors", "UnipetlError": "errors",
    "UnsupportedModelError": "errors",
    "PetlModel": "model", "backbone_fingerprint": "heads", "get_petl_model": "model",
    "PRESETS": "presets", "describe_preset": "config", "list_presets": "presets",
    "supported_model_types": "sites",
    "load_petl_model": "storage",
}

__all__ = [
    "PetlConfig", "PetlModel", "get_petl_model", "load_petl_model", "list_presets", "describe_preset", "PRESETS",
    "backbone_fingerprint", "supported_model_types",
    "UnipetlError", "ConfigError", "DataError", "ModuleFormatError", "UnsupportedModelError",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: unipetl.defaults, ...
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'unipetl' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
