"""Writes that never leave a half-written file or directory behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModuleFormatError


def write_directory_atomically(directory, files: dict[str, bytes], marker: str) -> None:
    """Write ``files`` into ``directory`` via a temporary sibling directory renamed into place.

    An existing directory is replaced only if it holds ``marker`` (a module we wrote), so a wrong
    path never deletes a user's files.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not (directory / marker).exists())):
        raise ModuleFormatError(f"{directory} exists and is not a module written by unipetl; refusing to overwrite it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json_atomically(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
