"""Multi-label classification from users' JSONL: each row has one or two text fields and a list of
label names (any number, none included). Targets are multi-hot vectors; predictions take every label
whose sigmoid reaches 0.5; scores are scikit-learn's micro-, macro- and sample-averaged F1.

Macro-F1 averages over every label of the label set, so a label that never occurs and is never
predicted counts as 0 (scikit-learn's zero_division=0), as it does for ill-defined precision or recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import warnings

from ..errors import DataError
from .loaders import is_missing_label, label_index, label_name
from .textfiles import jsonl_records, need, need_text


@dataclass(frozen=True)
class MultiLabelExample:
    """texts: 1 or 2 segments for the tokenizer. label_ids: indices into the task's label names."""

    texts: tuple[str, ...]
    label_ids: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)


def load_multilabel(path, text_fields: Sequence[str], label_field: str, label_names: Sequence[str] | None = None,
                    skip_missing_labels: bool = False) -> tuple[list[MultiLabelExample], tuple[str, ...]]:
    """Examples of a JSONL file and the label names their ids index.

    Without label_names the label set is the sorted set of labels in this file (use it for the
    training file and pass the result on for the other splits); with label_names, a label outside
    them is an error. Labels are names as in `load_custom` (0, 0.0 and "0" are "0"). A row whose
    label field is absent (no key, null, NaN, "") is an error, or with skip_missing_labels is left
    out with a warning that counts them; [] is a row with no labels.
    """
    if not text_fields or len(text_fields) > 2:
        raise DataError(f"{path}: text_fields must name 1 or 2 fields, got {list(text_fields)}")
    if not str(path).lower().endswith((".jsonl", ".json")):
        raise DataError(f"{path}: unsupported file type; expected .jsonl (one JSON object a line)")
    rows, skipped = [], []
    for line, row in jsonl_records(path):
        where = f"{path}: line {line}"
        texts = tuple(need_text(row, name, where) for name in text_fields)
        if skip_missing_labels and is_missing_label(row.get(label_field)):
            skipped.append(line)
            continue
        rows.append((line, texts, _label_list(need(row, label_field, where), f"{where}: field {label_field!r}")))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) without a label list in {label_field!r}, "
                      f"first at line {skipped[0]}", stacklevel=2)
    if not rows:
        raise DataError(f"{path}: no data rows")

    names = _label_set(path, label_names, rows)
    index = label_index(names)
    examples = []
    for line, texts, labels in rows:
        for label in labels:
            if label not in index:
                raise DataError(f"{path}: line {line}: field {label_field!r}: unknown label {label!r}; "
                                f"expected one of {list(names)}")
        examples.append(MultiLabelExample(texts, tuple(sorted({index[label] for label in labels})), {"line": line}))
    return examples, names


def _label_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of label names, got {type(value).__name__} {value!r}")
    labels = []
    for label in value:
        # An empty name is a writer's placeholder, not a class; numbers are names in one spelling ("3").
        if is_missing_label(label):
            raise DataError(f"{where}: missing label {label!r} in the list; expected label names")
        labels.append(label_name(label, where))
    return labels


def _label_set(path, label_names, rows) -> tuple[str, ...]:
    if label_names is None:
        names = tuple(sorted({label for _, _, labels in rows for label in labels}))
    else:
        names = tuple(str(n) for n in label_names)
        if len(set(names)) != len(names):
            raise DataError(f"{path}: the given label names repeat a name: {list(names)}")
    if len(names) < 2:
        raise DataError(f"{path}: a multi-label task needs at least two label names, got {list(names)}")
    return names


def multi_hot(examples: Sequence[MultiLabelExample], num_labels: int) -> np.ndarray:
    """(examples, labels) float32 matrix with 1 where an example has the label."""
    targets = np.zeros((len(examples), num_labels), dtype=np.float32)
    for row, example in enumerate(examples):
        targets[row, list(example.label_ids)] = 1.0
    return targets


def multilabel_features(examples: Sequence[MultiLabelExample], tokenizer, num_labels: int,
                        max_length: int = 128) -> list[dict]:
    """Tokenized texts with float multi-hot ``labels``, the target BCE-with-logits training expects."""
    if not examples:
        return []
    first = [ex.texts[0] for ex in examples]
    second = [ex.texts[1] for ex in examples] if len(examples[0].texts) > 1 else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length)
    targets = multi_hot(examples, num_labels)
    return [{**{k: encoded[k][i] for k in encoded}, "labels": targets[i].tolist()} for i in range(len(examples))]


def predict_labels(logits, threshold: float = 0.5) -> np.ndarray:
    """0/1 matrix: 1 where sigmoid(logit) >= threshold."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    # sigmoid(x) >= t exactly when x >= log(t / (1 - t)); comparing logits avoids exp overflow.
    return (np.asarray(logits, dtype=np.float64) >= np.log(threshold / (1.0 - threshold))).astype(int)


def multilabel_scores(predictions, references) -> dict[str, float]:
    """Micro-, macro- and sample-averaged F1 of 0/1 prediction and reference matrices, in [0, 1]."""
    from sklearn.metrics import f1_score

    predictions, references = np.asarray(predictions, dtype=int), np.asarray(references, dtype=int)
    if predictions.shape != references.shape or predictions.ndim != 2:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must be matrices "
                         f"of the same shape (examples, labels)")
    if len(references) == 0:
        raise ValueError("no predictions to score")
    return {
        average + "_f1": float(f1_score(references, predictions, average=average, zero_division=0.0))
        for average in ("micro", "macro", "samples")
    }


def multilabel_metrics(logits, references, threshold: float = 0.5) -> dict[str, float]:
    """F1 scores of logits thresholded at sigmoid >= threshold."""
    return multilabel_scores(predict_labels(logits, threshold), references)
