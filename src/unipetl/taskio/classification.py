"""Registry tasks (GLUE, SuperGLUE, polarity) and users' classification / regression files."""

from __future__ import annotations

import numpy as np
import torch
from transformers.trainer_pt_utils import nested_truncate

from ..encoding import collator_for, encode
from ..errors import DataError
from ..label_words import LabelWordFormat, label_word_scores
from ..predict import predict_examples, read_inputs
from ..tasks import TaskSpec, compute_metrics, load_custom, main_score, parse_text_target, record_predictions
from .base import TaskIO


class ClassificationIO(TaskIO):
    """A `TaskSpec` task: classification, regression or multiple choice, or text to text on T5/BART."""

    def __init__(self, spec: TaskSpec, splits: dict[str, list] | None = None, label_column: str | None = None):
        super().__init__(splits)
        self.spec, self.label_column = spec, label_column  # label_column: the user's own files only
        self.name, self.kind = spec.name, spec.kind
        self.metrics, self.main_metric = spec.metrics, spec.main_metric

    def load_backbone(self, model):
        from ..backbone import load_backbone

        return load_backbone(model, self.spec, self.decoder_head)

    def encode(self, split, backbone, max_length):
        return encode(self.splits[split], self.spec, backbone.tokenizer, backbone.mode, max_length)

    def collator(self, backbone):
        return collator_for(backbone.mode, backbone.tokenizer)

    def metrics_function(self, split, backbone):
        return metrics_function(self.spec, backbone.mode, backbone.tokenizer, self.splits[split])

    def main_score(self, metrics):
        return main_score(self.spec, metrics)

    def logits_reducer(self, backbone):
        if backbone.mode != "causal_lm":
            return None
        return label_word_scores(LabelWordFormat(self.spec, backbone.tokenizer).first_tokens)

    def trainer_arguments(self, backbone):
        if backbone.mode != "text_to_text":
            return {}
        return {"predict_with_generate": True, "generation_max_length": 16}  # label words are short

    def supports_multitask(self) -> bool:
        return True

    def header_fields(self) -> dict:
        fields = {"label_names": list(self.spec.label_names), "benchmark": self.spec.benchmark,
                  "text_fields": list(self.spec.text_fields)}
        return {**fields, "label_column": self.label_column} if self.label_column else fields

    def load_file(self, path):
        if self.label_column is None:
            raise DataError(f"--file: {self.name!r} is a registry task; evaluate it with --data-dir and --split")
        label_names = self.spec.label_names if self.kind != "regression" else None
        return load_custom(path, list(self.spec.text_fields), self.label_column, self.kind, label_names)[0]

    def read_inputs(self, path):
        return read_inputs(path, self.spec)

    def predict(self, petl, backbone, examples, max_length, batch_size=64):
        return predict_examples(petl, backbone, self.spec, examples, max_length, batch_size)


def predictions_from_outputs(outputs, task, mode: str, tokenizer, examples) -> tuple[list, list]:
    """(predictions, references) in the form `compute_metrics` takes, from raw model outputs."""
    # Several processes: Seq2SeqTrainer gathers without trimming, so every process's last batch is
    # padded to full size with repeated examples. The shards interleave whole batches in order, so
    # the first len(examples) rows are the examples themselves.
    outputs = nested_truncate(outputs, len(examples))
    references = [ex.label for ex in examples]
    if mode == "text_to_text":
        ids = np.where(outputs == -100, tokenizer.pad_token_id, outputs)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [parse_text_target(task, t) for t in texts], references
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    if task.kind == "regression":
        return np.asarray(logits).reshape(-1).tolist(), references
    if task.name == "record":
        scores = torch.tensor(logits).softmax(-1)[:, 1].tolist()
        return record_predictions(examples, scores)
    return np.asarray(logits).argmax(-1).tolist(), references


def metrics_function(task, mode, tokenizer, examples):
    groups = [ex.group for ex in examples]

    def compute(eval_prediction) -> dict[str, float]:
        predictions, references = predictions_from_outputs(eval_prediction.predictions, task, mode, tokenizer, examples)
        metrics = compute_metrics(task, predictions, references, groups=groups)
        metrics["main_score"] = main_score(task, metrics)
        return metrics

    return compute
