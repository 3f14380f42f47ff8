"""Noticing a collapsed model: validation predictions that are all one class (or one value).

A frozen BERT pooler, a learning rate far off for the method, or prefix and prompt tuning on a short
budget can leave a classifier predicting the majority class: the run ends with exit status 0 and a
useless module. Two evaluations in a row with one predicted class (a constant, for regression) give a
warning with the likely causes, and results.json records it under "collapse".
"""

from __future__ import annotations

import sys

import numpy as np

KINDS = ("classification", "regression", "multiple_choice")  # a head whose outputs are scores or a value
LIKELY_CAUSES = ("a frozen pooler under a BERT-family classifier (--set train_pooler=false), a learning rate "
                 "too high or too low for the method (--learning-rate), or too short a budget for prefix or prompt "
                 "tuning (more --epochs)")


def collapsed(predictions, kind: str) -> str | None:
    """What the predictions collapsed to ('class 1', 'the constant 0.5'), or None when they vary."""
    scores = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
    if kind == "regression":
        values = scores.reshape(-1)
        spread = float(np.ptp(values)) if values.size else 0.0
        return f"the constant {float(values.mean()):.4g}" if values.size > 1 and spread <= 1e-6 * max(1.0, abs(float(values.mean()))) else None
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        return None
    classes = np.unique(scores.argmax(-1))
    return f"class {int(classes[0])}" if classes.size == 1 else None


class CollapseWatch:
    """Wraps a trainer's compute_metrics; ``record`` is set at the second collapsed evaluation in a row."""

    def __init__(self, kind: str, task: str, log=None):
        self.kind, self.task = kind, task
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.in_a_row, self.evaluations, self.record = 0, 0, None

    def wrap(self, compute):
        def watched(eval_prediction):
            metrics = compute(eval_prediction)
            self.observe(eval_prediction.predictions)
            return metrics

        return watched

    def observe(self, predictions) -> None:
        self.evaluations += 1
        what = collapsed(predictions, self.kind)
        self.in_a_row = self.in_a_row + 1 if what is not None else 0
        if self.in_a_row >= 2 and self.record is None:
            self.record = {"predicted": what, "evaluation": self.evaluations, "likely_causes": LIKELY_CAUSES}
            self.log(f"warning: {self.task}: every validation prediction was {what} at {self.in_a_row} evaluations "
                     f"in a row: the model has collapsed. Likely causes: {LIKELY_CAUSES}")
