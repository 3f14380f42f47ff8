"""Task metrics with scikit-learn and scipy, as fractions in [0, 1] (correlations in [-1, 1]).

Inputs per task:
* classification / multiple choice: predicted and gold class (or choice) ids. A None prediction
  (an unparseable text-to-text output) counts as wrong.
* STS-B: predicted and gold floats; None counts as -1.0 (HyperFormer's fallback for bad text).
* MultiRC: per answer-option 0/1 ids plus ``groups`` (question ids) for EM.
* ReCoRD: per query, the predicted entity string and the list of gold answers (see
  ``record_predictions`` to pick the top-scoring candidate per query).

Two-metric tasks also get ``combined_score`` (their mean), the checkpoint-selection score in the
ProPETL/HF scripts. A constant prediction makes a correlation undefined; it is reported as 0.0
(sklearn's convention for MCC) so checkpoint selection never compares against NaN.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from .registry import Example, TaskSpec, get_task


def compute_metrics(
    task: str | TaskSpec,
    predictions: Sequence[Any],
    references: Sequence[Any],
    groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    if len(predictions) != len(references):
        raise ValueError(f"{spec.name}: {len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise ValueError(f"{spec.name}: no predictions to score")

    if spec.name == "record":
        out = _record_scores(predictions, references)
    elif spec.kind == "regression":
        from scipy.stats import pearsonr, spearmanr

        preds = np.array([-1.0 if p is None else float(p) for p in predictions])
        refs = np.asarray(references, dtype=float)
        with warnings.catch_warnings():  # constant input: handled by _finite below
            warnings.simplefilter("ignore")
            out = {"pearson": _finite(pearsonr(preds, refs)[0]), "spearmanr": _finite(spearmanr(preds, refs)[0])}
    else:
        refs = np.asarray(references, dtype=int)
        preds = np.array([-1 if p is None else int(p) for p in predictions])
        out = {}
        for name in spec.metrics:
            if name == "accuracy":
                out[name] = accuracy_score(refs, preds)
            elif name == "matthews_correlation":
                out[name] = matthews_corrcoef(refs, preds)
            elif name in ("f1", "f1a"):
                # Binary F1 of class 1; labels=[1] keeps None (-1) predictions legal.
                out[name] = f1_score(refs, preds, labels=[1], average="macro", zero_division=0.0)
            elif name == "macro_f1":
                present = sorted(set(refs.tolist()) | {p for p in preds.tolist() if p >= 0})
                out[name] = f1_score(refs, preds, labels=present, average="macro", zero_division=0.0)
            elif name == "em":
                out[name] = _group_exact_match(spec, preds, refs, groups)
            else:
                raise ValueError(f"{spec.name}: no implementation for metric {name!r}")
    out = {k: float(v) for k, v in out.items()}
    if len(spec.metrics) == 2:
        out["combined_score"] = (out[spec.metrics[0]] + out[spec.metrics[1]]) / 2
    return out


def _finite(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def _group_exact_match(spec: TaskSpec, preds: np.ndarray, refs: np.ndarray, groups) -> float:
    """Share of groups (MultiRC questions) whose every answer option is predicted right."""
    if groups is None or len(groups) != len(refs):
        raise ValueError(f"{spec.name}: exact match needs one group id per prediction")
    right: dict[Any, bool] = {}
    for g, p, r in zip(groups, preds, refs):
        right[g] = right.get(g, True) and bool(p == r)
    return sum(right.values()) / len(right)


# --- ReCoRD (token-level F1 / EM as in the official ReCoRD / SQuAD v1.1 script) -----------------

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _record_scores(predictions: Sequence[str | None], references: Sequence[Sequence[str]]) -> dict[str, float]:
    f1 = em = 0.0
    for pred, golds in zip(predictions, references):
        if isinstance(golds, str):
            golds = [golds]
        pred = pred or ""
        f1 += max((token_f1(pred, g) for g in golds), default=0.0)
        em += max((float(normalize_answer(pred) == normalize_answer(g)) for g in golds), default=0.0)
    return {"f1": f1 / len(references), "em": em / len(references)}


def record_predictions(examples: Sequence[Example], scores: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Per ReCoRD query (in order of first appearance): the top-scoring candidate entity and the gold
    answers. scores: one positive-class score per candidate example."""
    best: dict[str, tuple[float, str]] = {}
    golds: dict[str, list[str]] = defaultdict(list)
    for ex, score in zip(examples, scores):
        if ex.group not in best or score > best[ex.group][0]:
            best[ex.group] = (float(score), ex.meta["entity"])
        golds[ex.group] = list(ex.meta["answers"])
    return [best[g][1] for g in best], [golds[g] for g in best]


# --- selection and aggregation -----------------------------------------------------------------

def task_score(task: str | TaskSpec, metrics: Mapping[str, float]) -> float:
    """The one number per task: the mean of the two metrics for two-metric tasks, else the metric."""
    spec = get_task(task)
    return float(np.mean([metrics[m] for m in spec.metrics]))


def main_score(task: str | TaskSpec, metrics: Mapping[str, float]) -> float:
    """The number used for checkpoint selection (CoLA MCC, accuracy, or combined_score)."""
    spec = get_task(task)
    if spec.main_metric == "combined_score" and "combined_score" not in metrics:
        return task_score(spec, metrics)
    return float(metrics[spec.main_metric])


def benchmark_average(per_task_metrics: Mapping[str, Mapping[str, float]], mode: str = "task") -> float:
    """Benchmark score over tasks.

    mode='task': unweighted mean over tasks of each task's score (combined score for two-metric
    tasks), the usual GLUE average. mode='metric': mean over every metric entry, so each pair
    counts twice (the ProPETL README's average: 11 numbers for 8 GLUE tasks).
    """
    if not per_task_metrics:
        raise ValueError("benchmark_average needs at least one task")
    if mode == "task":
        return float(np.mean([task_score(t, m) for t, m in per_task_metrics.items()]))
    if mode == "metric":
        return float(np.mean([m[name] for t, m in per_task_metrics.items() for name in get_task(t).metrics]))
    raise ValueError(f"benchmark_average: mode {mode!r} is not 'task' or 'metric'")
