"""Multi-label classification (HumSet-style) from users' JSONL: a sigmoid head, BCE loss, micro/macro F1."""

from __future__ import annotations

import numpy as np
import torch

from ..encoding import FeatureDataset
from ..errors import DataError
from ..tasks.multilabel import (MultiLabelExample, load_multilabel, multi_hot, multilabel_features, multilabel_metrics,
                                predict_labels)
from ..tasks.textfiles import jsonl_records, need_text
from .base import TaskIO, file_splits, load_backbone_with_head

THRESHOLD = 0.5


class MultiLabelIO(TaskIO):
    """Several labels per text; a label is predicted where its sigmoid reaches 0.5.

    The main metric is macro-F1 (ScaLearn's HumSet metric); micro- and sample-averaged F1 are reported too."""

    kind = "multi_label"
    metrics, main_metric = ("micro_f1", "macro_f1", "samples_f1"), "macro_f1"

    def __init__(self, name: str, label_names, text_fields, label_column: str = "labels", splits=None):
        super().__init__(splits)
        self.name, self.label_names, self.text_fields = name, tuple(label_names), tuple(text_fields)
        self.label_column = label_column

    def load_backbone(self, model):
        return load_backbone_with_head(
            model, "AutoModelForSequenceClassification", "multi_label", encoder_decoder=False,
            refusal="--model {path!r} is a {model_type} encoder-decoder; multi-label classification takes an "
                    "encoder (BERT, RoBERTa/XLM-R, MPNet) with a sigmoid head",
            num_labels=len(self.label_names), problem_type="multi_label_classification",
            id2label=dict(enumerate(self.label_names)), label2id={n: i for i, n in enumerate(self.label_names)})

    def encode(self, split, backbone, max_length):
        return FeatureDataset(multilabel_features(self.splits[split], backbone.tokenizer, len(self.label_names), max_length))

    def collator(self, backbone):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(backbone.tokenizer)

    def metrics_function(self, split, backbone):
        from transformers.trainer_pt_utils import nested_truncate

        references = multi_hot(self.splits[split], len(self.label_names))

        def compute(eval_prediction):
            logits = nested_truncate(eval_prediction.predictions, len(references))
            logits = logits[0] if isinstance(logits, tuple) else logits
            metrics = multilabel_metrics(logits, references, THRESHOLD)
            metrics["main_score"] = metrics[self.main_metric]
            return metrics

        return compute

    def header_fields(self):
        return {"label_names": list(self.label_names), "text_fields": list(self.text_fields),
                "label_column": self.label_column, "threshold": THRESHOLD}

    @classmethod
    def from_header(cls, info: dict) -> "MultiLabelIO":
        return cls(info["name"], info["label_names"], info["text_fields"], info["label_column"])

    def load_file(self, path):
        return load_multilabel(path, self.text_fields, self.label_column, self.label_names)[0]

    # --- prediction ----------------------------------------------------------------------------
    def read_inputs(self, path):
        """Lines holding the task's text fields (or "text" / "text_pair")."""
        examples = []
        for line, row in jsonl_records(path):
            where = f"{path}: line {line}"
            keys = self.text_fields if all(f in row for f in self.text_fields) else ("text", "text_pair")[:len(self.text_fields)]
            examples.append(MultiLabelExample(tuple(need_text(row, k, where) for k in keys), ()))
        if not examples:
            raise DataError(f"{path}: no input lines")
        return examples

    @torch.no_grad()
    def predict(self, petl, backbone, examples, max_length, batch_size=64):
        features = multilabel_features(examples, backbone.tokenizer, len(self.label_names), max_length)
        collate = self.collator(backbone)
        out = []
        for first in range(0, len(features), batch_size):
            batch = collate(features[first:first + batch_size])
            batch.pop("labels", None)
            logits = petl(**batch).logits.numpy()
            for row, chosen in zip(logits, predict_labels(logits, THRESHOLD)):
                probabilities = 1.0 / (1.0 + np.exp(-row.astype(np.float64)))
                out.append({"prediction": [n for n, c in zip(self.label_names, chosen) if c],
                            "probabilities": {n: round(float(p), 6) for n, p in zip(self.label_names, probabilities)}})
        return out


def load_multilabel_splits(name: str, train_file, validation_file, test_file, text_fields, label_field, seed: int,
                           skip_missing_labels: bool = False):
    """(MultiLabelIO with its splits): the label set is the training file's; other files must stay inside it."""
    if not train_file:
        raise DataError(f"multi-label task {name!r}: give its data with --train-file (JSONL)")
    train, label_names = load_multilabel(train_file, text_fields, label_field, skip_missing_labels=skip_missing_labels)

    def load(path, training):
        if path == train_file:
            return train
        return load_multilabel(path, text_fields, label_field, label_names, skip_missing_labels)[0]

    splits = file_splits(load, train_file, validation_file, test_file, seed)
    return MultiLabelIO(name, label_names, text_fields, label_field, splits)
