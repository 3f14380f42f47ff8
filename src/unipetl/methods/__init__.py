"""The built-in methods and parameter sources; importing this package registers them (registry.py).

One module per method: adapter (attention and FFN bottlenecks), lora, prefix, prompt, bitfit, full,
diffprune, mixture (ScaLearn, AdapterFusion); and per parameter source: owned, propetl. Each
implements the contract in base.py.
"""

from . import adapter, bitfit, diffprune, full, lora, mixture, owned, prefix, prompt, propetl  # noqa: F401
from .base import Method, ParameterSource, Stage

__all__ = ["Method", "ParameterSource", "Stage"]
