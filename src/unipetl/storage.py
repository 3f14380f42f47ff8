"""Task modules on disk: one directory with a JSON header and one safetensors file (module_format.py).

The header records the format version, the full design config, the backbone fingerprint, the task
and the size and SHA-256 of the weights file, so that a module for another backbone, a truncated or
altered file, or an unknown format version is refused before the backbone is touched; a header
checksum covers the other fields, and file references may not leave the module (module_format.py).
Writes go to a temporary directory swapped into place under a lock (atomic.py), so a failed or
concurrent save leaves the old or the new module, never half of one. A transfer module (ScaLearn,
AdapterFusion) is loaded over the source modules it records.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
import torch
from torch import nn

from .atomic import moved_aside, write_directory_atomically
from .config import PetlConfig
from .errors import ConfigError, ModuleFormatError
from .heads import backbone_fingerprint
from .methods.mixture import SourceAdapter
from .model import PetlModel, attached_method
from .module_format import (DIGEST_FIELD, FORMAT, FORMAT_VERSION, HEADER_FILE, MAX_HEADER_BYTES, SUPPORTED_VERSIONS,
                            WEIGHTS_FILE, check_header, header_digest, serialize)
from .sites import family_for, head_table_for, resolve_sites

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_FILE", "WEIGHTS_FILE", "FAMILY_FILE", "PROTOTYPE_FILE", "serialize",
           "save_module", "read_module", "save_family", "check_backbone", "load_petl_model", "load_source",
           "sources_for_module", "write_directory_atomically"]

FAMILY_FILE = "unipetl_family.json"
PROTOTYPE_FILE = "prototype.safetensors"


def save_module(model, directory, task: dict | None = None) -> dict:
    return model.save(directory, task)


def read_module(directory) -> tuple[dict, dict]:
    """Header and tensors of a saved module, after checking format, version, field types, file references,
    header checksum, sizes and the files' checksums.

    The folder is opened once and its files read relative to it, so a save replacing it meanwhile (atomic.py)
    cannot mix two versions; if it was replaced (or is between the two renames of a save without exchange),
    the read starts again, for up to ``READ_RETRY_S``."""
    directory = Path(directory)
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        try:
            folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if _DIR_FD else None
        except OSError as err:
            # A save between its two renames (an old module aside), or just past them (the name is back).
            gap = isinstance(err, FileNotFoundError) and (moved_aside(directory) or os.path.isdir(directory))
            if gap and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            raise ModuleFormatError(f"{directory} is not a unipetl task module: {HEADER_FILE} is missing"
                                    + _interrupted_hint(directory)) from None
        try:
            return _read_module(directory, folder)
        except ModuleFormatError:
            if folder is not None and _replaced(directory, folder) and time.monotonic() < deadline:
                continue
            raise
        finally:
            if folder is not None:
                os.close(folder)


READ_RETRY_S = 5.0
# Reading files relative to an open folder pins one version of it (Linux, macOS).
_DIR_FD = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


def _read_module(directory: Path, folder: int | None) -> tuple[dict, dict]:
    header_path = directory / HEADER_FILE
    try:
        data = _read_capped(directory, HEADER_FILE, MAX_HEADER_BYTES, folder)
    except ModuleFormatError as err:
        raise ModuleFormatError(
            f"{directory} is not a unipetl task module: {err}" + _interrupted_hint(directory)) from None
    if data is None:
        raise ModuleFormatError(f"{header_path} is larger than the {MAX_HEADER_BYTES}-byte limit of a module header")
    try:
        header = json.loads(data.decode())
    except RecursionError:
        raise ModuleFormatError(f"{header_path} is not a module header: its JSON is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ModuleFormatError(f"{header_path} is not valid JSON (truncated or altered?): {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModuleFormatError(f"{header_path}: 'format' is {header.get('format') if isinstance(header, dict) else None!r}, expected {FORMAT!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModuleFormatError(f"{header_path}: field 'format_version' is {version!r}, expected an integer")
    if version not in SUPPORTED_VERSIONS:
        raise ModuleFormatError(
            f"{header_path}: unknown format_version {version!r}; this unipetl reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade unipetl to read newer modules)")
    check_header(header, header_path)
    try:
        PetlConfig.from_dict(header["config"])
    except (ConfigError, TypeError, ValueError) as err:
        raise ModuleFormatError(f"{header_path}: invalid config: {err}") from None
    # Checked after the fields, whose errors say more than "altered"; before anything is read by them.
    recorded = header.get(DIGEST_FIELD)
    if recorded is None and version >= 2:
        raise ModuleFormatError(f"{header_path}: field {DIGEST_FIELD!r} is missing (format_version {version} headers "
                                "carry one): header altered")
    try:
        altered = recorded is not None and recorded != header_digest(header)
    except RecursionError:
        raise ModuleFormatError(f"{header_path} is not a module header: its JSON is nested too deeply") from None
    if altered:
        raise ModuleFormatError(f"{header_path}: the header does not match its {DIGEST_FIELD}: header altered "
                                "(edited by hand or corrupted); save the module again")
    weights = header["weights"]
    name = weights.get("file") or WEIGHTS_FILE
    data = _read_capped(directory, name, weights["bytes"], folder)
    if data is None or len(data) != weights["bytes"]:
        raise ModuleFormatError(f"{directory / name} is not the size recorded in {HEADER_FILE} ({weights['bytes']} "
                                "bytes): truncated or replaced?")
    if hashlib.sha256(data).hexdigest() != weights["sha256"]:
        raise ModuleFormatError(
            f"{directory / name} does not match the SHA-256 in {HEADER_FILE} (file altered or corrupted)")
    tensors = _load_tensors(directory / name, data)
    family = header.get("family_prototype")
    if family:  # a member of a task family: the shared prototype is stored once, beside the members
        prototype_path = directory / family["file"]  # '../<name>' (check_header)
        try:
            shared = _read_capped(directory, family["file"], family["bytes"], folder)
        except ModuleFormatError:
            raise ModuleFormatError(
                f"{directory} belongs to a task family but its prototype {prototype_path} is missing") from None
        if shared is None or len(shared) != family["bytes"] or hashlib.sha256(shared).hexdigest() != family["sha256"]:
            raise ModuleFormatError(f"{prototype_path} does not match the size and SHA-256 recorded in {header_path}")
        tensors.update(_load_tensors(prototype_path, shared))
    return header, tensors


def _read_capped(directory: Path, name: str, limit: int, folder: int | None) -> bytes | None:
    """The bytes of regular file ``name`` in the module folder, or None if it holds more than ``limit``
    bytes: the size is checked before reading, so a huge file is never read (nor its size reported)."""
    path = directory / name
    try:  # O_NONBLOCK: a named pipe in place of a file must not block the open
        fd = os.open(name if folder is not None else path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
    except OSError as err:
        raise ModuleFormatError(f"{path} is missing or unreadable ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModuleFormatError(f"{path} is not a regular file")
        if info.st_size > limit:
            return None
        return f.read(limit + 1)  # +1: a file that grew since fstat shows as too long


def _replaced(directory: Path, folder: int) -> bool:
    """Whether the name no longer points at the folder we opened (a save swapped it meanwhile)."""
    try:
        now, held = os.stat(directory), os.fstat(folder)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)


def _interrupted_hint(directory: Path) -> str:
    old = moved_aside(directory)
    return (f" (a save of it was interrupted; the previous module is in {old[0]}: rename it back to "
            f"{directory.name} to use it)" if old else "")


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
    names = list(members)
    stored = {name: model.stored_tensors() for name, (model, _) in members.items()}  # each member's, once
    first = members[names[0]][0]
    prototype = {k: v for k, v in stored[names[0]].items() if first.shares(k)}
    if not prototype:
        raise ModuleFormatError("save_family needs a shared prototype (param_source='masked_prototype')")
    for name in names[1:]:
        if any(not torch.equal(stored[name][k], v) for k, v in prototype.items()):
            raise ModuleFormatError(f"task {name!r} does not share the prototype of task {names[0]!r}")
    shared = save_safetensors(prototype)
    identity = {"file": f"../{PROTOTYPE_FILE}", "bytes": len(shared), "sha256": hashlib.sha256(shared).hexdigest()}
    files = {PROTOTYPE_FILE: shared}
    for name, (model, task) in members.items():
        if task is not None:
            model.task = task
        header, weights = serialize(model, model.task, family=identity, tensors=stored[name])
        files[f"{name}/{WEIGHTS_FILE}"], files[f"{name}/{HEADER_FILE}"] = weights, header
    summary = {"format": "unipetl-task-family", "format_version": FORMAT_VERSION, "tasks": names,
               "prototype": {"file": PROTOTYPE_FILE, "bytes": len(shared), "sha256": identity["sha256"]}}
    files[FAMILY_FILE] = (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode()
    write_directory_atomically(directory, files, marker=FAMILY_FILE)
    return summary


def check_backbone(model, header: dict, directory) -> None:
    """Refuse a module trained on another model type or checkpoint, before the backbone is touched."""
    expected = header["backbone"]
    if model.config.model_type != expected.get("model_type"):
        raise ModuleFormatError(
            f"{directory} was trained on a {expected.get('model_type')!r} backbone, got {model.config.model_type!r}")
    if backbone_fingerprint(model) != expected.get("fingerprint"):
        recorded, actual = expected.get("architecture"), type(model).__name__
        if recorded and recorded != actual and head_table_for(recorded).has_pooler != head_table_for(actual).has_pooler:
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
    # A transfer module records its frozen sources (names, hashes, paths); other modules record none.
    loaded_sources = sources_for_module(model, config, directory, sources) if config.transfer_sources else None
    petl = PetlModel(model, config, flat_prefix=header.get("prefix_form") == "flat",
                     frozen_masks=header.get("masks") == "bits", sources=loaded_sources)
    try:
        petl.load_stored_tensors(tensors, source=str(directory))
    except Exception:
        petl.unload()
        raise
    petl.task = header.get("task")
    return petl


# ----------------------------------------------------------------------- transfer sources
def load_source(model: nn.Module, directory, name: str | None = None) -> SourceAdapter:
    """Read a `pfeiffer` task module as a transfer source, refusing other backbones and other methods."""
    header, tensors = read_module(directory)
    check_backbone(model, header, directory)
    config = header["config"]
    if not (config.get("ffn_mode") == "adapter" and config.get("ffn_option") == "pfeiffer"
            and config.get("attn_mode") == "none" and config.get("param_source") == "owned"
            and config.get("ffn_adapter_layernorm_option") == "none"):
        raise ModuleFormatError(f"{directory}: a transfer source must be a plain Pfeiffer adapter module "
                                f"(preset 'pfeiffer'); this one is {config.get('preset')!r}")
    sites = resolve_sites(model)
    layers = []
    for layer in sites.layers:
        prefix = f"methods.{layer.stack}{layer.index}_ffn_adapter.source.params."
        try:
            tensors_of_layer = {k: tensors[prefix + k] for k in ("down_weight", "down_bias", "up_weight", "up_bias")}
        except KeyError as missing:
            raise ModuleFormatError(f"{directory}: no adapter tensor {missing} for layer {layer.index}") from None
        scalar = float(config.get("ffn_adapter_scalar", 1.0))
        if scalar != 1.0:  # fold the adapter's output scale into its up-projection
            tensors_of_layer["up_weight"] = tensors_of_layer["up_weight"] * scalar
            tensors_of_layer["up_bias"] = tensors_of_layer["up_bias"] * scalar
        layers.append(tensors_of_layer)
    digest = header["weights"]["sha256"]  # verified against the file by read_module
    task = (header.get("task") or {}).get("name")
    return SourceAdapter(name or task or Path(directory).name, digest, config.get("adapter_act", "relu"), layers)


def sources_for_module(model: nn.Module, config, directory, sources: list | None = None) -> list[SourceAdapter]:
    """The source adapters a saved transfer module was trained over: ``sources`` (directories, in the
    recorded order) or the paths recorded in its header. Each must have the recorded content hash."""
    recorded = list(config.transfer_sources)
    if sources is not None and len(sources) != len(recorded):
        raise ModuleFormatError(f"{directory} was trained over {len(recorded)} sources "
                                f"({', '.join(r['name'] for r in recorded)}); got {len(sources)}")
    loaded = []
    for i, record in enumerate(recorded):
        path = sources[i] if sources is not None else _recorded_source(record.get("path"), directory)
        if path is None or not Path(path).is_dir():
            raise ModuleFormatError(f"{directory}: source {record['name']!r} is missing (expected at {path}); "
                                    "pass the source directories explicitly")
        source = load_source(model, path, name=record["name"])
        if source.sha256 != record["sha256"]:
            raise ModuleFormatError(f"{directory}: source {record['name']!r} at {path} is not the adapter this module "
                                    f"was trained over (content hash {source.sha256[:12]}..., recorded "
                                    f"{record['sha256'][:12]}...)")
        loaded.append(source)
    return loaded


def _recorded_source(path, directory):
    """A recorded source path, else the same path taken relative to the module folder: a module moved
    together with its sources (recorded relative to it) still finds them wherever it is run from."""
    if path is None or Path(path).is_dir():
        return path
    beside = Path(directory) / path
    return beside if beside.is_dir() else path
