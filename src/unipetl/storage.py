"""Task modules on disk: one directory with a JSON header and one safetensors file.

The header records the format version, the full design config, the backbone fingerprint, the task
and the size and SHA-256 of the weights file, so that a module for another backbone, a truncated or
altered file, or an unknown format version is refused before the backbone is touched. Writes go to a
temporary directory that is renamed into place, so a failed save leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .config import PetlConfig
from .errors import ConfigError, ModuleFormatError

FORMAT = "unipetl-task-module"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER_FILE = "unipetl_module.json"
WEIGHTS_FILE = "weights.safetensors"


def _library_version() -> str:
    from . import __version__

    return __version__


FAMILY_FILE = "unipetl_family.json"
PROTOTYPE_FILE = "prototype.safetensors"
PROTOTYPE_PREFIX = "methods.prototype_"


def serialize(model, task: dict | None = None, family: dict | None = None) -> tuple[bytes, bytes]:
    """The exact bytes `save` writes: (header, weights). With ``family`` (the shared prototype file's
    identity), the prototype tensors are left out: they live once in the family directory."""
    tensors = model.stored_tensors()
    if family is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(PROTOTYPE_PREFIX)}
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


def save_module(model, directory, task: dict | None = None) -> dict:
    if model.merged:
        raise ModuleFormatError("this model was merged into the backbone; save the task module before merge()")
    header, weights = serialize(model, task)
    write_directory_atomically(directory, {WEIGHTS_FILE: weights, HEADER_FILE: header}, marker=HEADER_FILE)
    return json.loads(header)


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


def read_module(directory) -> tuple[dict, dict]:
    """Header and tensors of a saved module, after checking format, version, size and checksum."""
    directory = Path(directory)
    header_path = directory / HEADER_FILE
    if not header_path.is_file():
        raise ModuleFormatError(f"{directory} is not a unipetl task module: {HEADER_FILE} is missing")
    try:
        header = json.loads(header_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModuleFormatError(f"{header_path} is not valid JSON (truncated or altered?): {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModuleFormatError(f"{header_path}: 'format' is {header.get('format') if isinstance(header, dict) else None!r}, expected {FORMAT!r}")
    version = header.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ModuleFormatError(
            f"{header_path}: unknown format_version {version!r}; this unipetl reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade unipetl to read newer modules)")
    for key in ("config", "backbone", "weights"):
        if not isinstance(header.get(key), dict):
            raise ModuleFormatError(f"{header_path}: field {key!r} is missing or not an object")
    weights_path = directory / header["weights"].get("file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise ModuleFormatError(f"{weights_path} is missing")
    data = weights_path.read_bytes()
    if len(data) != header["weights"].get("bytes"):
        raise ModuleFormatError(
            f"{weights_path} has {len(data)} bytes, the header says {header['weights'].get('bytes')} (truncated?)")
    if hashlib.sha256(data).hexdigest() != header["weights"].get("sha256"):
        raise ModuleFormatError(f"{weights_path} does not match the SHA-256 in {HEADER_FILE} (file altered or corrupted)")
    tensors = _load_tensors(weights_path, data)
    family = header.get("family_prototype")
    if family:  # a member of a task family: the shared prototype is stored once, beside the members
        prototype_path = directory / family["file"]
        if not prototype_path.is_file():
            raise ModuleFormatError(f"{directory} belongs to a task family but its prototype {prototype_path} is missing")
        shared = prototype_path.read_bytes()
        if len(shared) != family.get("bytes") or hashlib.sha256(shared).hexdigest() != family.get("sha256"):
            raise ModuleFormatError(f"{prototype_path} does not match the size and SHA-256 recorded in {header_path}")
        tensors.update(_load_tensors(prototype_path, shared))
    return header, tensors


def _load_tensors(path: Path, data: bytes) -> dict:
    try:
        return load_safetensors(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ModuleFormatError(f"{path} is not a valid safetensors file: {err}") from None


def save_family(members: dict, directory) -> dict:
    """Save task modules that share one prototype (multi-task ProPETL): the prototype once, in
    DIRECTORY/prototype.safetensors, and each task in DIRECTORY/<task>/ with its masks and head.

    ``members`` maps task name -> (PetlModel, task metadata); every member must hold the same
    prototype tensors. Each member directory loads alone with `load_petl_model`.
    """
    import torch

    names = list(members)
    first = members[names[0]][0].stored_tensors()
    prototype = {k: v for k, v in first.items() if k.startswith(PROTOTYPE_PREFIX)}
    if not prototype:
        raise ModuleFormatError("save_family needs a shared prototype (param_source='masked_prototype')")
    for name in names[1:]:
        other = members[name][0].stored_tensors()
        if any(not torch.equal(other[k], v) for k, v in prototype.items()):
            raise ModuleFormatError(f"task {name!r} does not share the prototype of task {names[0]!r}")
    shared = save_safetensors(prototype)
    identity = {"file": f"../{PROTOTYPE_FILE}", "bytes": len(shared), "sha256": hashlib.sha256(shared).hexdigest()}
    files = {PROTOTYPE_FILE: shared}
    for name, (model, task) in members.items():
        if task is not None:
            model.task = task
        header, weights = serialize(model, model.task, family=identity)
        files[f"{name}/{WEIGHTS_FILE}"], files[f"{name}/{HEADER_FILE}"] = weights, header
    summary = {"format": "unipetl-task-family", "format_version": FORMAT_VERSION, "tasks": names,
               "prototype": {"file": PROTOTYPE_FILE, "bytes": len(shared), "sha256": identity["sha256"]}}
    files[FAMILY_FILE] = (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode()
    write_directory_atomically(directory, files, marker=FAMILY_FILE)
    return summary


def check_backbone(model, header: dict, directory) -> None:
    """Refuse a module trained on another model type or checkpoint, before the backbone is touched."""
    from .model import backbone_fingerprint

    expected = header["backbone"]
    if model.config.model_type != expected.get("model_type"):
        raise ModuleFormatError(
            f"{directory} was trained on a {expected.get('model_type')!r} backbone, got {model.config.model_type!r}")
    if backbone_fingerprint(model) != expected.get("fingerprint"):
        recorded, actual = expected.get("architecture"), type(model).__name__
        if recorded and recorded != actual and not (recorded.endswith("ForQuestionAnswering")
                                                    == actual.endswith("ForQuestionAnswering")):
            # Same checkpoint, other task type: QA models drop the pooler, so the backbones differ.
            raise ModuleFormatError(
                f"{directory} was trained with a {recorded} and this is a {actual}: extractive-QA models carry no "
                f"pooler, so modules (and ScaLearn/AdapterFusion sources) do not cross between QA and "
                f"classification-type tasks")
        raise ModuleFormatError(
            f"{directory} was trained on another backbone checkpoint (fingerprint "
            f"{str(expected.get('fingerprint'))[:12]}...); load it onto the backbone it was trained on")


def load_petl_model(model, directory, sources: list | None = None):
    """Rebuild a saved task module on ``model`` (a fresh backbone of the same checkpoint).

    A transfer module (ScaLearn, AdapterFusion) also needs its source adapters: ``sources`` (their
    directories, in the recorded order) or, by default, the paths recorded in its header."""
    from .model import PetlModel, attached_method
    from .sites import family_for

    header, tensors = read_module(directory)
    attached = model.config.preset if isinstance(model, PetlModel) else attached_method(model)
    if attached is not None:
        # Checked before the fingerprint, which an attached method changes.
        raise ModuleFormatError(
            f"cannot load {directory}: this backbone already has a method attached ({attached}); load each module "
            f"onto a fresh backbone, or call unload() on the PetlModel that holds it first")
    family_for(model)  # unsupported architecture: refuse before anything else
    check_backbone(model, header, directory)
    try:
        config = PetlConfig.from_dict(header["config"])
    except (ConfigError, TypeError) as err:
        raise ModuleFormatError(f"{Path(directory) / HEADER_FILE}: invalid config: {err}") from None
    loaded_sources = None
    if config.param_source == "scaled_mixture":
        from .transfer import sources_for_module

        loaded_sources = sources_for_module(model, config, directory, sources)
    petl = PetlModel(model, config, flat_prefix=header.get("prefix_form") == "flat",
                     frozen_masks=header.get("masks") == "bits", sources=loaded_sources)
    try:
        petl.load_stored_tensors(tensors, source=str(directory))
    except Exception:
        petl.unload()
        raise
    petl.task = header.get("task")
    return petl
