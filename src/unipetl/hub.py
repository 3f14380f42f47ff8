"""Data sets from the Hugging Face hub, for users who are online.

`datasets` is an optional dependency (`pip install unipetl[hub]`), and an offline machine should hear
at once that the hub is out of reach instead of after the hub client's retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import DataError

HUB_EXTRA = "pip install 'unipetl[hub]'"
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (offline flag set, no connection), or None when it answers."""
    for flag in OFFLINE_FLAGS:
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"${flag} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} is unreachable ({err.__class__.__name__}: {err})"
    return None


def load_hub_split(path: str, config: str | None, split: str, offline_hint: str):
    """One split of a hub data set; ``offline_hint`` tells the user how to give the data locally instead."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading {path!r} from the Hugging Face hub needs the `datasets` package ({HUB_EXTRA}); "
                        f"{offline_hint}") from None
    reason = hub_unreachable_reason()
    if reason is not None:
        raise DataError(f"cannot load {path!r} from the Hugging Face hub: {reason}; {offline_hint}")
    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # renamed repo, missing config: one clear message instead of a hub trace
        raise DataError(f"could not load {path!r} config {config!r} split {split!r} from the Hugging Face hub "
                        f"({type(exc).__name__}: {str(exc)[:300]}); {offline_hint}") from exc
