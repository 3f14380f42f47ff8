"""Users' own data as a task: CSV/TSV/JSONL files with named text and label columns."""

from __future__ import annotations

from ..errors import DataError
from .loaders import load_custom
from .registry import TaskSpec, register_task
from .splits import split_off_validation


def custom_task_spec(name: str, kind: str, label_names, text_columns) -> TaskSpec:
    metrics = ("pearson", "spearmanr") if kind == "regression" else ("accuracy",)
    main = "combined_score" if kind == "regression" else "accuracy"
    spec = TaskSpec(name, "custom", kind, tuple(label_names), metrics, main, tuple(text_columns))
    return register_task(spec, overwrite=True)


def custom_splits(train_file: str, text_columns: list[str], label_column: str, kind: str = "classification",
                  validation_file: str | None = None, test_file: str | None = None, name: str = "custom",
                  seed: int = 42) -> tuple[TaskSpec, dict]:
    """(task spec, {train, validation, test}); without a validation file, 10 % of train (seeded) validates."""
    if test_file is None and validation_file is None:
        raise DataError(f"{train_file}: give a test file (--test-file) to evaluate on, or a validation file")
    train, names = load_custom(train_file, text_columns, label_column, kind)
    label_names = None if kind == "regression" else names
    splits = {"train": train}
    if validation_file:
        splits["validation"] = load_custom(validation_file, text_columns, label_column, kind, label_names)[0]
    else:
        splits["train"], splits["validation"] = split_off_validation(train, 0.1, seed, stratify=kind != "regression")
    splits["test"] = load_custom(test_file, text_columns, label_column, kind, label_names)[0] if test_file else splits["validation"]
    return custom_task_spec(name, kind, names, text_columns), splits
