"""Loading a backbone and its tokenizer for a task: the head class follows the task kind.

Encoders get a sequence-classification head (one output for regression) or a multiple-choice head;
encoder-decoders (T5, BART) are trained text to text with their LM head; decoder-only LMs (Llama family)
keep their LM head and classify by scoring label words (label_words.py).
"""

from __future__ import annotations

import sys

from dataclasses import dataclass
from pathlib import Path

from .defaults import resolve_model
from .errors import ConfigError, DataError, UnsupportedModelError
from .sites import FAMILIES, family_for_config, supported_model_types


@dataclass
class Backbone:
    model: object
    tokenizer: object
    name_or_path: str
    mode: str  # "classify" | "multiple_choice" | "text_to_text" | "causal_lm" | "extractive_qa" | "seq2seq" | "multi_label"


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized head" report is expected for every task head


def load_model_config(name_or_path: str | None):
    """The model's path (the embedded MiniLM by default, a packaged model by name) and config, refusing unreadable
    or unsupported ones."""
    from transformers import AutoConfig

    path = resolve_model(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        hint = "" if Path(str(path)).exists() else " (not a local folder; hub names need network access)"
        raise DataError(f"--model {path!r}: cannot load a model config{hint}: {str(err).splitlines()[0]}") from None
    if not any(config.model_type in fam.model_types for fam in FAMILIES):
        raise UnsupportedModelError(
            f"--model {path!r} is a {config.model_type!r} model; supported model types: {', '.join(supported_model_types())}")
    return str(path), config


def decoder_tokenizer(tokenizer):
    """A decoder's tokenizer for training and scoring: a pad token (its end-of-sequence token where it has
    none) and padding after the tokens, as positions count from a row's first token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(name_or_path: str | None, task, decoder_head: str = "label_words") -> Backbone:
    """Model with the right head for ``task`` (a TaskSpec) and its tokenizer; hub names work when online.
    ``decoder_head``: on a decoder-only LM, "label_words" (its LM head) or "sequence_classification"."""
    from transformers import (AutoModelForCausalLM, AutoModelForMultipleChoice, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification, AutoTokenizer)

    quiet_transformers()
    path, config = load_model_config(name_or_path)
    decoder = family_for_config(config).causal_lm
    tokenizer = AutoTokenizer.from_pretrained(path)
    if decoder:
        decoder_tokenizer(tokenizer)
        if decoder_head == "label_words":
            from .label_words import LabelWordFormat

            LabelWordFormat(task, tokenizer)  # refuses tasks a decoder does not train here, before the model loads
            return Backbone(AutoModelForCausalLM.from_pretrained(path), tokenizer, path, "causal_lm")
        if task.kind == "multiple_choice":
            raise ConfigError(f"task {task.name!r} is a multiple-choice task: decoder-only models do not train it here")
    if config.is_encoder_decoder:
        model, mode = AutoModelForSeq2SeqLM.from_pretrained(path), "text_to_text"
    elif task.kind == "multiple_choice":
        model, mode = AutoModelForMultipleChoice.from_pretrained(path), "multiple_choice"
    else:
        extra = {"problem_type": "regression"} if task.kind == "regression" else {
            "id2label": dict(enumerate(task.label_names)), "label2id": {n: i for i, n in enumerate(task.label_names)}}
        # A checkpoint fine-tuned with another label count: its head cannot serve this task, so a fresh head
        # of the task's size replaces it (said on stderr) instead of transformers' size-mismatch error.
        other_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])) and (
            config.num_labels != task.num_labels)
        if other_head:
            print(f"warning: --model {path!r} has a {config.num_labels}-label classification head; task {task.name!r} "
                  f"has {task.num_labels}: a new head is trained in its place", file=sys.stderr)
        if decoder:  # the head reads the last token that is not padding
            extra["pad_token_id"] = tokenizer.pad_token_id
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels,
                                                                   ignore_mismatched_sizes=other_head, **extra)
        mode = "classify"
    return Backbone(model, tokenizer, path, mode)
