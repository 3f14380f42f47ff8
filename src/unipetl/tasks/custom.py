"""Users' own data as a task: CSV/TSV/JSONL files with named text and label columns."""

from __future__ import annotations

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
                  seed: int = 42, skip_missing_labels: bool = False) -> tuple[TaskSpec, dict]:
    """(task spec, {train, validation, test}). skip_missing_labels: see `load_custom`.

    Without a validation file a seeded 10 % of train validates; without a test file the validation
    file tests, and with neither file another seeded 10 % of train is held out as the test split, so
    the reported score is never on the rows that chose the best epoch."""
    def load(path, label_names=None):
        return load_custom(path, text_columns, label_column, kind, label_names, skip_missing_labels)

    train, names = load(train_file)
    label_names = None if kind == "regression" else names
    stratify = kind != "regression"
    held_out_test = None
    if test_file is None and validation_file is None:
        train, held_out_test = split_off_validation(train, 0.1, seed, stratify=stratify)
    splits = {"train": train}
    if validation_file:
        splits["validation"] = load(validation_file, label_names)[0]
    else:
        # 1/9 of the remaining 90 %: validation, like test, is 10 % of the file
        fraction = 1 / 9 if held_out_test is not None else 0.1
        splits["train"], splits["validation"] = split_off_validation(train, fraction, seed, stratify=stratify)
    if test_file:
        splits["test"] = load(test_file, label_names)[0]
    else:
        splits["test"] = held_out_test if held_out_test is not None else splits["validation"]
    return custom_task_spec(name, kind, names, text_columns), splits
