"""Noticing a collapsed model: validation predictions that are all one class (or one value).

A frozen BERT pooler, a learning rate far off for the method, prefix and prompt tuning on a short
budget, or a task head that trains too slowly can leave a classifier predicting the majority class:
the run ends with exit status 0 and a useless module; a regression head can do the same with about
one value for every input. Two evaluations in a row with one predicted class (a constant or nearly
one, for regression) give a warning with the likely causes, and results.json records it under
"collapse". Before training, a prefix much longer than the task's inputs gets a warning of its own
(``long_prefix``), since it is the one cause that can be seen before a step is taken.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Callable

import numpy as np

KINDS = ("classification", "regression", "multiple_choice")  # a head whose outputs are scores or a value
# Measured on CoLA (benchmarks/diagnose_cola.py): MAM (1e-4, 28 % of MiniLM) leaves the majority class only
# after its third epoch; at the prefix family's slow rates the head stays at the majority class; and 200
# prefix positions hide a short sentence from [CLS].
LIKELY_CAUSES = ("a frozen pooler under a BERT-family classifier (--set train_pooler=false), a learning rate "
                 "too high or too low for the method (--learning-rate), too short a budget for prefix or prompt "
                 "tuning or MAM (more --epochs), for regression a head whose bias started at 0 "
                 "(--zero-regression-bias), "
                 "a head too slow to leave the majority class (--head-learning-rate, e.g. 3e-3 for prefix "
                 "methods), or a prefix much longer than the inputs (--method prefix_glue, or --set attn_bn=30)")


# A regression model whose predictions spread less than this fraction of the labels' standard deviation
# explains at most about 1 % of their variance: for the purpose of a warning, one value for every input.
NEAR_CONSTANT = 0.1


def collapsed(predictions, kind: str, labels=None) -> str | None:
    """What the predictions collapsed to ('class 1', 'the constant 0.5', 'nearly the constant 2.5 ...'),
    or None when they vary. With ``labels``, regression predictions whose standard deviation is under a
    tenth of the labels' count as nearly constant (STS-B: about the mean for every pair)."""
    scores = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
    if kind == "regression":
        values = scores.reshape(-1)
        if values.size < 2:
            return None
        mean = float(values.mean())
        if float(np.ptp(values)) <= 1e-6 * max(1.0, abs(mean)):
            return f"the constant {mean:.4g}"
        truth = None if labels is None else np.asarray(labels, dtype=np.float64).reshape(-1)
        if truth is None or truth.size < 2:
            return None
        spread, label_spread = float(values.std()), float(truth.std())
        if spread < NEAR_CONSTANT * label_spread:
            return f"nearly the constant {mean:.4g} (prediction standard deviation {spread:.3g}, labels' {label_spread:.3g})"
        return None
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        return None
    classes = np.unique(scores.argmax(-1))
    return f"class {int(classes[0])}" if classes.size == 1 else None


# A training loss less than this fraction below what the labels' shares alone give: nothing learned from
# the inputs yet. The Trainer logs its loss as a mean over 50 steps; on CoLA, where `prefix` and `proprefix`
# learned nothing in 10 and 20 epochs, the epochs' means were 0.607 to 0.620 against the shares' 0.607
# (benchmarks/results/diagnose_cola/cola/*-epochs/train.log).
NOTHING_LEARNED_MARGIN = 0.02


def class_share_loss(kind: str, labels) -> float | None:
    """The training loss of a model that ignores its inputs and predicts only the labels' shares: their
    entropy (cross-entropy over classes or choices), or for regression their variance (mean squared
    error, about the mean). None for other kinds or fewer than two labels."""
    if kind not in KINDS or len(labels) < 2:
        return None
    if kind == "regression":
        return float(np.var(np.asarray(labels, dtype=np.float64)))
    shares = np.array(list(Counter(labels).values()), dtype=np.float64) / len(labels)
    return float(-(shares * np.log(shares)).sum())


def is_evaluation(entry: dict) -> bool:
    """Whether an entry of a Trainer's log history is an evaluation's (its keys start with eval_)."""
    return any(key.startswith("eval_") for key in entry)


def train_loss_since_last_evaluation(log_history: list[dict]) -> float | None:
    """The mean of the training losses a Trainer logged after its latest evaluation (None: none logged)."""
    losses = []
    for entry in reversed(log_history):
        if is_evaluation(entry):
            break
        if "loss" in entry:
            losses.append(float(entry["loss"]))
    return float(np.mean(losses)) if losses else None


def learning_note(train_loss: float, reference: float) -> str:
    """What the training loss says about a collapsed run, against the labels' shares' loss."""
    if train_loss < reference * (1 - NOTHING_LEARNED_MARGIN):
        return (f"The training loss ({train_loss:.4g}) is below what predicting the labels' shares alone gives "
                f"({reference:.4g}): the model learns from the training inputs, but its validation predictions "
                "do not show it yet.")
    return (f"The training loss ({train_loss:.4g}) is no lower than what predicting the labels' shares alone "
            f"gives ({reference:.4g}): the model has learned nothing from the inputs yet.")


# A prefix (concatenated, or gated by one softmax with the tokens) shares every attention with the input.
# Measured on CoLA, sentences of 11.7 tokens on average (benchmarks/probe_cola.py, the [CLS] state before
# training): 200 positions (17 per token) hide what MiniLM knows, ProPrefix's 64 (5.5) part of it, 30
# (2.6) nothing. So a warning from 4 prefix positions per input token.
LONG_PREFIX_RATIO = 4.0
SHARED_SOFTMAX_MODES = ("prefix", "prefix_nomlp")


def input_lengths(features) -> list[int]:
    """Tokens per input of encoded features (dicts with input_ids); each choice of a multiple-choice
    example is an input of its own."""
    lengths = []
    for feature in features:
        ids = feature.get("input_ids")
        if ids is not None and len(ids) and isinstance(ids[0], (list, tuple)):
            lengths.extend(len(choice) for choice in ids)
        elif ids is not None:
            lengths.append(len(ids))
    return lengths


def long_prefix(config, features) -> dict | None:
    """{"positions", "mean_input_tokens"} where ``config``'s prefix has at least LONG_PREFIX_RATIO positions
    per token of the mean input among ``features`` (the encoded training split), else None."""
    shares_softmax = config.attn_option == "concat" or config.attn_composition == "gate_add"
    if config.attn_mode not in SHARED_SOFTMAX_MODES or not shares_softmax:
        return None
    lengths = input_lengths(features)
    if not lengths:
        return None
    mean = sum(lengths) / len(lengths)
    if config.attn_bn < LONG_PREFIX_RATIO * mean:
        return None
    return {"positions": config.attn_bn, "mean_input_tokens": round(mean, 1)}


def long_prefix_warning(task: str, record: dict) -> str:
    return (f"warning: {task}: the prefix has {record['positions']} positions and the training inputs "
            f"{record['mean_input_tokens']:g} tokens on average; at the start the prefix takes most of every "
            "attention, which can hide the input from the head and keep a classifier at the majority class "
            "(200 positions on CoLA's 12-token sentences did). On short inputs use a shorter prefix: "
            "--method prefix_glue or mam_glue, or --set attn_bn=30")


class CollapseWatch:
    """Wraps a trainer's compute_metrics; ``record`` is set at the second collapsed evaluation in a row.

    ``reference_loss`` (the class shares' loss on the training labels) and ``recent_train_loss`` (the
    training loss since the previous evaluation) let the warning say whether the model learned anything."""

    def __init__(self, kind: str, task: str, log=None, reference_loss: float | None = None,
                 recent_train_loss: Callable[[], float | None] | None = None):
        self.kind, self.task = kind, task
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.reference_loss, self.recent_train_loss = reference_loss, recent_train_loss
        self.in_a_row, self.evaluations, self.record = 0, 0, None

    def wrap(self, compute):
        def watched(eval_prediction):
            metrics = compute(eval_prediction)
            self.observe(eval_prediction.predictions, eval_prediction.label_ids)
            return metrics

        return watched

    def observe(self, predictions, labels=None) -> None:
        self.evaluations += 1
        what = collapsed(predictions, self.kind, labels)
        self.in_a_row = self.in_a_row + 1 if what is not None else 0
        if self.in_a_row >= 2 and self.record is None:
            self.record = {"predicted": what, "evaluation": self.evaluations, "likely_causes": LIKELY_CAUSES}
            train_loss = self.recent_train_loss() if self.recent_train_loss else None
            note = ""
            if train_loss is not None and self.reference_loss:
                self.record |= {"train_loss": round(train_loss, 4), "class_share_loss": round(self.reference_loss, 4)}
                note = " " + learning_note(train_loss, self.reference_loss)
            self.log(f"warning: {self.task}: every validation prediction was {what} at {self.in_a_row} evaluations "
                     f"in a row: the model has collapsed.{note} Likely causes: {LIKELY_CAUSES}")
