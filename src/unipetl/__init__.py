"""unipetl: parameter-efficient transfer learning in one design space."""

__version__ = "0.1.0"

from .config import PetlConfig  # noqa: E402
from .errors import ConfigError, DataError, ModuleFormatError, UnipetlError, UnsupportedModelError  # noqa: E402
from .model import PetlModel, backbone_fingerprint, get_petl_model  # noqa: E402
from .presets import PRESETS, describe_preset, list_presets  # noqa: E402
from .sites import supported_model_types  # noqa: E402
from .storage import load_petl_model  # noqa: E402

__all__ = [
    "PetlConfig", "PetlModel", "get_petl_model", "load_petl_model", "list_presets", "describe_preset", "PRESETS",
    "backbone_fingerprint", "supported_model_types",
    "UnipetlError", "ConfigError", "DataError", "ModuleFormatError", "UnsupportedModelError",
]
