"""Summarisation (XSum) and translation (WMT16) on T5 and BART: label-smoothed training, scored by generation."""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import numpy as np
import torch

from ..encoding import FeatureDataset
from ..errors import ConfigError, DataError
from ..tasks.generation import (SUMMARIZATION, GenerationSettings, Seq2SeqExample, get_seq2seq_task, load_seq2seq_hub,
                                load_summarization, load_translation, parse_direction, seq2seq_features, seq2seq_metrics)
from ..tasks.textfiles import jsonl_records, need_text
from ..sites import family_for
from .base import TaskIO, file_splits, load_backbone_with_head

LABEL_SMOOTHING = 0.1  # ALGORITHMS.md §3.5, both XSum and en-ro
MAX_GRAD_NORM = {SUMMARIZATION: 0.1, "translation": 1.0}  # §3.5: XSum clips at 0.1, en-ro at 1.0
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")  # encoder-decoders take no token_type_ids
LANGUAGES = {"en": "English", "ro": "Romanian", "de": "German", "fr": "French"}


def generation_settings(base: GenerationSettings, overrides: dict | None) -> GenerationSettings:
    """The task's decoding settings with the user's overrides (field names of GenerationSettings)."""
    allowed = {f.name: f.type for f in fields(GenerationSettings)}
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise ConfigError(f"--generate {key}=...: unknown setting; valid settings: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"--generate {key}={value!r}: expected a non-negative number")
        if key != "length_penalty" and value != int(value):
            raise ConfigError(f"--generate {key}={value!r}: expected a whole number")
    settings = replace(base, **{k: v if k == "length_penalty" else int(v) for k, v in (overrides or {}).items()})
    for key in ("max_source_length", "max_target_length", "num_beams", "max_length"):
        if int(getattr(settings, key)) < 1:
            raise ConfigError(f"--generate {key}={getattr(settings, key)}: must be at least 1")
    if settings.min_length > settings.max_length:
        raise ConfigError(f"--generate min_length={settings.min_length} exceeds max_length={settings.max_length}")
    return settings


class Seq2SeqIO(TaskIO):
    """A task of generation.SEQ2SEQ_TASKS; ``settings`` bound the lengths and the beam search."""

    kind = "seq2seq"

    def __init__(self, task: str, splits=None, settings: GenerationSettings | None = None):
        super().__init__(splits)
        self.task = get_seq2seq_task(task)
        self.name, self.metrics, self.main_metric = self.task.name, self.task.metrics, self.task.main_metric
        self.settings = settings or self.task.generation
        self.source_prefix = ""

    def load_backbone(self, model):
        backbone = load_backbone_with_head(
            model, "AutoModelForSeq2SeqLM", "seq2seq", encoder_decoder=True,
            refusal=f"task {self.name!r} generates text: it needs an encoder-decoder (T5, BART), but "
                    "--model {path!r} is a {model_type} encoder")
        # T5 was pretrained with task prefixes (its site table says so); BART takes the bare source.
        self.source_prefix = self._t5_prefix() if family_for(backbone.model).task_prefix else ""
        return backbone

    def _t5_prefix(self) -> str:
        if self.task.kind == SUMMARIZATION:
            return "summarize: "
        source, target = parse_direction(self.task.direction)
        return f"translate {LANGUAGES.get(source, source)} to {LANGUAGES.get(target, target)}: "

    def encode(self, split, backbone, max_length):
        # Lengths come from the generation settings (max_source_length, max_target_length), not max_length.
        features = seq2seq_features(self.splits[split], backbone.tokenizer, self.settings, self.source_prefix)
        return FeatureDataset([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])

    def collator(self, backbone):
        from transformers import DataCollatorForSeq2Seq

        # With the model, the collator builds decoder_input_ids, which the label-smoothed loss needs
        # (the Trainer then calls the model without labels).
        return DataCollatorForSeq2Seq(backbone.tokenizer, model=backbone.model, label_pad_token_id=-100)

    def metrics_function(self, split, backbone):
        from transformers.trainer_pt_utils import nested_truncate

        references = [ex.target for ex in self.splits[split]]

        def compute(eval_prediction):
            generated = nested_truncate(eval_prediction.predictions, len(references))
            texts = decode(backbone.tokenizer, generated)
            metrics = seq2seq_metrics(self.task, texts, references)
            metrics["main_score"] = metrics[self.main_metric]
            return metrics

        return compute

    def trainer_arguments(self, backbone):
        return {"predict_with_generate": True, "label_smoothing_factor": LABEL_SMOOTHING,
                "max_grad_norm": MAX_GRAD_NORM[self.task.kind],
                "generation_max_length": self.settings.max_length, "generation_num_beams": self.settings.num_beams}

    def training_defaults(self):
        # §3.5 (XSum and en-ro): lr 5e-5 for every method, weight decay 0.01, no warmup.
        return {"learning_rate": 5e-5, "warmup_ratio": 0.0, "weight_decay": 0.01}

    def generation_kwargs(self):
        return self.settings.generate_kwargs()

    def header_fields(self):
        return {"generation": asdict(self.settings), "source_prefix": self.source_prefix}

    def load_file(self, path):
        return seq2seq_loader(self.task.name)(path, False)

    @classmethod
    def from_header(cls, info: dict) -> "Seq2SeqIO":
        return cls(info["name"], settings=GenerationSettings(**info["generation"]))

    # --- prediction ----------------------------------------------------------------------------
    def read_inputs(self, path):
        """Lines {"source": ...} (or the task's own source field: "document" for XSum)."""
        field = self.task.document_field if self.task.kind == SUMMARIZATION else parse_direction(self.task.direction)[0]
        examples = []
        for line, row in jsonl_records(path):
            key = "source" if "source" in row else field
            examples.append(Seq2SeqExample(need_text(row, key, f"{path}: line {line}"), ""))
        if not examples:
            raise DataError(f"{path}: no input lines")
        return examples

    @torch.no_grad()
    def predict(self, petl, backbone, examples, max_length, batch_size=16):
        tokenizer = backbone.tokenizer
        out = []
        for first in range(0, len(examples), batch_size):
            chunk = examples[first:first + batch_size]
            batch = tokenizer([self.source_prefix + ex.source for ex in chunk], truncation=True, padding=True,
                              max_length=self.settings.max_source_length, return_tensors="pt",
                              return_token_type_ids=False)
            generated = petl.generate(**batch, **self.generation_kwargs())
            out += [{"prediction": text} for text in decode(tokenizer, generated.numpy())]
        return out


def decode(tokenizer, token_ids) -> list[str]:
    ids = np.where(np.asarray(token_ids) == -100, tokenizer.pad_token_id, token_ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def seq2seq_loader(task: str):
    """(path, training) -> examples of one file of ``task``."""
    spec = get_seq2seq_task(task)
    if spec.kind == SUMMARIZATION:
        return lambda path, training: load_summarization(path, spec.document_field, spec.summary_field)
    return lambda path, training: load_translation(path, spec.direction)


def load_seq2seq_splits(task: str, train_file, validation_file, test_file, seed: int) -> dict[str, list]:
    return file_splits(seq2seq_loader(task), train_file, validation_file, test_file, seed)


def load_seq2seq_hub_splits(task: str) -> dict[str, list]:
    return {split: load_seq2seq_hub(task, split) for split in ("train", "validation", "test")}
