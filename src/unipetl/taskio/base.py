"""The interface between a task type and the training loop, and the split helpers every file-based type shares.

A `TaskIO` holds a task's examples per split and knows how they reach the model (backbone head,
features, collator) and how the model's outputs come back as metrics. Training, evaluation and
prediction talk only to this interface, so every method (adapters, ProPETL, diff pruning, ScaLearn)
runs on every task type without knowing which one it is.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError


class TaskIO:
    """One task: its examples per split, its head, features and metrics.

    Subclasses set ``name``, ``kind`` (the module header's task kind) and ``metrics`` /
    ``main_metric``, and implement the methods below that raise NotImplementedError.
    """

    name: str
    kind: str
    metrics: tuple[str, ...] = ()
    main_metric: str = ""
    decoder_head: str = "label_words"  # how a decoder-only LM classifies (options.DECODER_HEADS)

    def __init__(self, splits: dict[str, list] | None = None):
        self.splits = splits or {}

    # --- data into the model ------------------------------------------------------------------
    def configure(self, options) -> None:
        """Take the training options this task type reads (TrainOptions); before load_backbone()."""
        self.decoder_head = options.decoder_head
        if options.packing:
            raise ConfigError(f"--packing packs instruction-tuning examples (--task instruction), not task {self.name!r}")

    def load_backbone(self, model: str | None):
        """A `Backbone` with the head this task trains (see backbone.py)."""
        raise NotImplementedError

    def encode(self, split: str, backbone, max_length: int):
        """The split's model inputs as a torch Dataset (only what the model's forward takes)."""
        raise NotImplementedError

    def collator(self, backbone):
        raise NotImplementedError

    # --- model outputs back as metrics -------------------------------------------------------
    def metrics_function(self, split: str, backbone) -> Callable:
        """EvalPrediction -> metrics (with ``main_score``) for the examples of ``split``, in order.

        Called after `encode(split, ...)`, whose features it may need (QA's windows)."""
        raise NotImplementedError

    def main_score(self, metrics: dict[str, float]) -> float:
        return float(metrics[self.main_metric])

    def generated_metrics(self, petl, backbone, split: str, max_length: int) -> dict[str, float]:
        """Metrics of the split scored by generating (instruction tuning's test split); none by default."""
        return {}

    def logits_reducer(self, backbone) -> Callable | None:
        """The Trainer's preprocess_logits_for_metrics, where the raw logits are too large to gather."""
        return None

    # --- trainer settings ----------------------------------------------------------------------
    def trainer_arguments(self, backbone) -> dict[str, Any]:
        """Extra Seq2SeqTrainingArguments (generation, label smoothing)."""
        return {}

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate`` during evaluation (none for non-generating tasks)."""
        return {}

    def training_defaults(self) -> dict[str, Any]:
        """TrainOptions fields this task type sets when the user leaves them unset (None)."""
        return {"learning_rate": None, "warmup_ratio": 0.06, "weight_decay": 0.0}

    def supports_multitask(self) -> bool:
        return False

    # --- the module header ---------------------------------------------------------------------
    def header(self, backbone, max_length: int, metrics: dict) -> dict:
        """What a saved module records about its task so that evaluate / predict can rebuild it."""
        return {"name": self.name, "kind": self.kind, "mode": backbone.mode, "model": backbone.name_or_path,
                "max_length": max_length, "test_metrics": metrics, **self.header_fields()}

    def header_fields(self) -> dict:
        return {}

    def load_file(self, path: str) -> list:
        """Examples of one labelled file in this task's format and label set (``unipetl evaluate --file``)."""
        raise NotImplementedError

    # --- prediction ----------------------------------------------------------------------------
    def read_inputs(self, path: str) -> list:
        """Examples of an input JSONL file for `unipetl predict`."""
        raise NotImplementedError

    def predict(self, petl, backbone, examples: list, max_length: int, batch_size: int = 64) -> list[dict]:
        raise NotImplementedError


def load_backbone_with_head(model: str | None, head_class: str, mode: str, encoder_decoder: bool, refusal: str,
                            **head_kwargs):
    """A `Backbone` with transformers' ``head_class`` (an Auto* class name), refused with ``refusal``
    (formatted with path and model_type) unless the model is an encoder-decoder exactly when asked."""
    import transformers

    from ..backbone import Backbone, load_model_config, quiet_transformers

    quiet_transformers()
    path, config = load_model_config(model)
    if bool(config.is_encoder_decoder) != encoder_decoder:
        raise ConfigError(refusal.format(path=path, model_type=config.model_type))
    head = getattr(transformers, head_class).from_pretrained(path, **head_kwargs)
    return Backbone(head, transformers.AutoTokenizer.from_pretrained(path), path, mode)


# --- splits from files --------------------------------------------------------------------------

def seeded_subset(items: Sequence, n: int | None, seed: int, what: str) -> list:
    """``n`` items drawn by a seeded permutation (kept in their file order), or all when n is None."""
    if n is None:
        return list(items)
    if n <= 0:
        raise ConfigError(f"{what}={n} must be a positive integer")
    if n >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(items))[:n])
    return [items[i] for i in chosen]


def file_splits(load: Callable[[str, bool], list], train_file: str | None, validation_file: str | None,
                test_file: str | None, seed: int) -> dict[str, list]:
    """{train, validation, test} from the user's files.

    ``load(path, training)`` reads one file. Without a validation file, a seeded 10 % of the
    training file validates; without a test file, the validation split is the test split, and
    with neither file another seeded 10 % of the training file is held out as the test split."""
    if not train_file:
        raise DataError("give the training data with --train-file (or run online to use the hub copy)")
    train = load(train_file, True)
    held = 2 if validation_file is None and test_file is None else 1 if validation_file is None else 0
    if held and len(train) < 10:
        raise DataError(f"{train_file}: {len(train)} examples are too few to hold out validation and test splits; "
                        f"give --validation-file / --test-file")
    order = np.random.default_rng(seed).permutation(len(train))
    cut = max(1, len(train) // 10)
    parts = [[train[i] for i in sorted(order[k * cut:(k + 1) * cut])] for k in range(held)]
    train = [train[i] for i in sorted(order[held * cut:])]
    validation = load(validation_file, False) if validation_file else parts[0]
    test = load(test_file, False) if test_file else parts[1] if held == 2 else validation
    return {"train": train, "validation": validation, "test": test}


def cap_splits(splits: dict[str, list], max_train: int | None, max_validation: int | None, seed: int) -> dict[str, list]:
    """Seeded caps on the training and validation splits; a validation split that is the test split stays whole."""
    out = dict(splits)
    out["train"] = seeded_subset(splits["train"], max_train, seed, "max_train_samples")
    if max_validation is not None:
        if splits["validation"] is splits["test"]:
            raise DataError("max_validation_samples: the validation split is also the test split here, which is never "
                            "subsampled; give a separate --test-file")
        out["validation"] = seeded_subset(splits["validation"], max_validation, seed, "max_validation_samples")
    return out
