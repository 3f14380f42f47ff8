"""The bytes of a task module: a JSON header and one safetensors file (see storage.py for the files),
and the rules a header must follow to be read (`check_header`).

Kept apart from storage so that `PetlModel.report()` can count the exact bytes a save writes without
the model depending on the storage layer above it.

Header checksum (format_version 2): ``header_sha256`` is the SHA-256 of the header's canonical JSON
(sorted keys, no whitespace) without that field and without the ``bytes``/``sha256`` of the files it
names (weights, family prototype): those two are checked against the files themselves, and a keyless
checksum could not stop someone who rewrites a file together with its record anyway. What it catches
is an edit of a field nothing else verifies (config.lora_alpha, backbone.num_labels, the task...).
Version 1 headers (written before the checksum) are still read without one; a present checksum must
match in either version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
from typing import Any

from safetensors.torch import save as save_safetensors

from .config import PetlConfig
from .errors import ModuleFormatError

FORMAT = "unipetl-task-module"
FORMAT_VERSION = 2  # 2: header_sha256 added (required from 2 on)
SUPPORTED_VERSIONS = (1, 2)
HEADER_FILE = "unipetl_module.json"
WEIGHTS_FILE = "weights.safetensors"
DIGEST_FIELD = "header_sha256"
MAX_HEADER_BYTES = 2**20  # a real header is a few kB; more is not a header, and is not read


def _library_version() -> str:
    from . import __version__

    return __version__


def serialize(model, task: dict | None = None, family: dict | None = None,
              tensors: dict | None = None) -> tuple[bytes, bytes]:
    """The exact bytes a save writes: (header, weights). With ``family`` (the shared file's identity),
    the tensors the model shares with its family (a ProPETL prototype) are left out: they live once
    in the family directory. ``tensors``: the model's stored tensors, where the caller has them already."""
    tensors = model.stored_tensors() if tensors is None else tensors
    if family is not None:
        tensors = {k: v for k, v in tensors.items() if not model.shares(k)}
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
    header[DIGEST_FIELD] = header_digest(header)
    return (json.dumps(header, indent=1, sort_keys=True) + "\n").encode(), weights


def header_digest(header: dict) -> str:
    """SHA-256 of the header's content, less its own checksum and the file records' bytes and sha256 (see above)."""
    content = {k: v for k, v in header.items() if k != DIGEST_FIELD}
    for key in ("weights", "family_prototype"):
        if isinstance(content.get(key), dict):
            content[key] = {k: v for k, v in content[key].items() if k not in ("bytes", "sha256")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ----------------------------------------------------------------------- reading a header
# The JSON types of each field; None: the field may be null or absent. Unknown fields are left alone.
_TOP = {"library_version": (str, None), "config": (dict,), "backbone": (dict,), "weights": (dict,),
        "task": (dict, None), "family_prototype": (dict, None), "prefix_form": (str, None), "masks": (str, None),
        DIGEST_FIELD: (str, None)}
_BACKBONE = {"model_type": (str,), "fingerprint": (str,), "family": (str, None), "architecture": (str, None),
             "num_labels": (int, None)}
_FILE = {"file": (str,), "bytes": (int,), "sha256": (str,)}
_SOURCE = {"name": (str,), "sha256": (str,), "path": (str, None)}


def _is(value, kind) -> bool:
    if kind is None:
        return value is None
    if kind is float:
        kind = (int, float)
    if kind is tuple:
        kind = list  # a JSON array
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def _check_fields(node: dict, spec: dict, prefix: str, where) -> None:
    for key, kinds in spec.items():
        value = node.get(key)
        if not any(_is(value, kind) for kind in kinds):
            _refuse_type(where, prefix + key, value, kinds)


def _refuse_type(where, field: str, value, kinds) -> None:
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
             bool: "true or false", tuple: "an array", None: "null"}
    expected = " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    if value is None:
        shown = "missing or null"
    else:  # containers by their type only: no deep or long value in a message
        shown = names.get(type(value), type(value).__name__) if isinstance(value, (dict, list)) else repr(value)[:40]
    raise ModuleFormatError(f"{where}: field {field!r} is {shown}, expected {expected}")


@functools.cache
def _config_hints() -> dict:
    return typing.get_type_hints(PetlConfig)


def _check_typed(value, hint, field: str, where) -> None:
    """``value`` (from JSON) against a PetlConfig annotation: unions, Optional, tuple[X, ...], tuple[X, Y]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if not any(_is(value, None if a is type(None) else (typing.get_origin(a) or a)) for a in args):
            _refuse_type(where, field, value, [None if a is type(None) else (typing.get_origin(a) or a) for a in args])
        return
    kind = origin or hint
    if kind is Any:
        return
    if not _is(value, kind):
        _refuse_type(where, field, value, (kind,))
    if kind is tuple and args:  # the elements too
        element_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(element_hints) != len(value):
            raise ModuleFormatError(f"{where}: field {field!r} has {len(value)} entries, expected {len(args)}")
        for i, (item, item_hint) in enumerate(zip(value, element_hints)):
            _check_typed(item, item_hint, f"{field}[{i}]", where)


def _plain_name(value, field: str, where, prefix: str = "") -> None:
    """A file reference must be ``prefix`` + one plain file name: no folder, no '..', not absolute."""
    name = value[len(prefix):] if value.startswith(prefix) else None
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        expected = f"'{prefix}<file name>' (a file in the parent folder)" if prefix else "a file name in the folder"
        raise ModuleFormatError(f"{where}: field {field!r} is {value!r}, expected {expected}")


def check_header(header: dict, where) -> None:
    """Refuse a header whose fields have the wrong JSON type or whose file references leave the module
    (weights: a file in the folder; family prototype: '../<file>'), naming ``where`` and the field.
    Checks types only; `PetlConfig.from_dict` checks the config's values."""
    _check_fields(header, _TOP, "", where)
    _check_fields(header["backbone"], _BACKBONE, "backbone.", where)
    _check_fields(header["weights"], {**_FILE, "file": (str, None)}, "weights.", where)  # file: default name
    file = header["weights"].get("file")
    _plain_name(WEIGHTS_FILE if file is None else file, "weights.file", where)
    if header.get("family_prototype") is not None:
        _check_fields(header["family_prototype"], _FILE, "family_prototype.", where)
        _plain_name(header["family_prototype"]["file"], "family_prototype.file", where, prefix="../")
    hints = _config_hints()
    for key, value in header["config"].items():
        if key in hints:  # an unknown field is PetlConfig.from_dict's to name
            _check_typed(value, hints[key], f"config.{key}", where)
    for i, record in enumerate(header["config"].get("transfer_sources") or ()):
        if not isinstance(record, dict):
            _refuse_type(where, f"config.transfer_sources[{i}]", record, (dict,))
        _check_fields(record, _SOURCE, f"config.transfer_sources[{i}].", where)
