"""Task modules on disk: one directory with a JSON header and one safetensors file (module_format.py).

The header records the format version, the full design config, the backbone fingerprint, the task
and the size and SHA-256 of the weights file, so that a module for another backbone, a truncated or
altered file, or an unknown format version is refused before the backbone is touched. Writes go to a
temporary directory that is renamed into place, so a failed save leaves nothing half-written. A
transfer module (ScaLearn, AdapterFusion) is loaded over the source modules it records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
import torch
from torch import nn

from .atomic import write_directory_atomically
from .config import PetlConfig
from .errors import ConfigError, ModuleFormatError
from .heads import backbone_fingerprint
from .methods.mixture import SourceAdapter
from .model import PetlModel, attached_method
from .module_format import FORMAT, FORMAT_VERSION, HEADER_FILE, SUPPORTED_VERSIONS, WEIGHTS_FILE, serialize
from .sites import family_for, head_table_for, resolve_sites

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_FILE", "WEIGHTS_FILE", "FAMILY_FILE", "PROTOTYPE_FILE", "serialize",
           "save_module", "read_module", "save_family", "check_backbone", "load_petl_model", "load_source",
           "sources_for_module", "write_directory_atomically"]

FAMILY_FILE = "unipetl_family.json"
PROTOTYPE_FILE = "prototype.safetensors"


def save_module(model, directory, task: dict | None = None) -> dict:
    return model.save(directory, task)


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
    names = list(members)
    first = members[names[0]][0]
    prototype = {k: v for k, v in first.stored_tensors().items() if first.shares(k)}
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
    digest = hashlib.sha256((Path(directory) / WEIGHTS_FILE).read_bytes()).hexdigest()
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
        path = sources[i] if sources is not None else record.get("path")
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
