"""Extractive question answering (SQuAD v1.1) on encoders: a span head over windowed contexts."""

from __future__ import annotations

import numpy as np
import torch

from ..encoding import FeatureDataset
from ..errors import DataError
from ..hub import load_hub_split
from ..tasks.qa import (QAExample, best_answers, gold_answers, load_squad, qa_eval_features, qa_examples_from_rows,
                        qa_train_features, squad_scores)
from ..tasks.textfiles import jsonl_records, need_text
from .base import TaskIO, load_backbone_with_head

SQUAD_HUB = "rajpurkar/squad"
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
LABELS = ("start_positions", "end_positions")


class ExtractiveQAIO(TaskIO):
    """SQuAD-format questions; windows of ``max_length`` tokens overlapping by ``doc_stride`` context tokens.

    doc_stride None: a third of the window (128 at the usual 384). Answers are the best span over all
    windows of a question (n_best 20, at most max_answer_length tokens), scored by official EM / F1.
    """

    name, kind = "squad", "extractive_qa"
    metrics, main_metric = ("exact_match", "f1"), "f1"

    def __init__(self, splits=None, doc_stride: int | None = None, max_answer_length: int = 30, name: str = "squad"):
        super().__init__(splits)
        self.name = name
        self.doc_stride, self.max_answer_length = doc_stride, max_answer_length
        self._eval_features: dict[int, dict] = {}
        for split in ("validation", "test"):
            if split in self.splits:
                _require_answers(self.splits[split], split)

    def stride(self, max_length: int) -> int:
        return self.doc_stride if self.doc_stride is not None else max_length // 3

    def load_backbone(self, model):
        return load_backbone_with_head(
            model, "AutoModelForQuestionAnswering", "extractive_qa", encoder_decoder=False,
            refusal="--model {path!r} is a {model_type} encoder-decoder; extractive QA takes an encoder "
                    "(BERT, RoBERTa/XLM-R, MPNet) with a span head")

    def encode(self, split, backbone, max_length):
        examples = self.splits[split]
        if split == "train":
            features = qa_train_features(examples, backbone.tokenizer, max_length, self.stride(max_length))
            keys = MODEL_INPUTS + LABELS
        else:
            features = qa_eval_features(examples, backbone.tokenizer, max_length, self.stride(max_length))
            self._eval_features[id(examples)] = features  # by list: splits that share examples share windows
            # The first answer's positions make the Trainer gather labels (so it computes metrics) and an eval loss.
            targets = qa_train_features(examples, backbone.tokenizer, max_length, self.stride(max_length))
            features = {**features, "start_positions": targets["start_positions"], "end_positions": targets["end_positions"]}
            keys = MODEL_INPUTS + LABELS
        keys = [k for k in keys if k in features]
        return FeatureDataset([{k: features[k][i] for k in keys} for i in range(len(features["input_ids"]))])

    def collator(self, backbone):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(backbone.tokenizer)

    def metrics_function(self, split, backbone):
        from transformers.trainer_pt_utils import nested_truncate

        examples = self.splits[split]
        features = self._eval_features[id(examples)]

        def compute(eval_prediction):
            # Several processes pad the gathered windows with repeats; the first rows are the windows in order.
            start, end = nested_truncate(eval_prediction.predictions, len(features["input_ids"]))[:2]
            answers = best_answers(examples, features, start, end, max_answer_length=self.max_answer_length)
            metrics = squad_scores(answers, gold_answers(examples))
            metrics["main_score"] = metrics[self.main_metric]
            return metrics

        return compute

    def trainer_arguments(self, backbone):
        return {"label_names": list(LABELS)}

    def header_fields(self):
        return {"doc_stride": self.doc_stride, "max_answer_length": self.max_answer_length}

    def load_file(self, path):
        examples = load_squad(path, training=False)
        _require_answers(examples, str(path))
        return examples

    @classmethod
    def from_header(cls, info: dict) -> "ExtractiveQAIO":
        return cls(doc_stride=info.get("doc_stride"), max_answer_length=info.get("max_answer_length", 30),
                   name=info["name"])

    # --- prediction ----------------------------------------------------------------------------
    def read_inputs(self, path):
        """Lines {"question", "context", "id"?}: the id defaults to the line number."""
        examples = []
        for line, row in jsonl_records(path):
            where = f"{path}: line {line}"
            examples.append(QAExample(str(row.get("id", line)), need_text(row, "question", where),
                                      need_text(row, "context", where)))
        if not examples:
            raise DataError(f"{path}: no input lines")
        return examples

    @torch.no_grad()
    def predict(self, petl, backbone, examples, max_length, batch_size=64):
        features = qa_eval_features(examples, backbone.tokenizer, max_length, self.stride(max_length))
        collate = self.collator(backbone)
        inputs = [{k: features[k][i] for k in MODEL_INPUTS if k in features} for i in range(len(features["input_ids"]))]
        starts, ends = [], []
        for first in range(0, len(inputs), batch_size):
            out = petl(**collate(inputs[first:first + batch_size]))
            starts += list(out.start_logits.numpy())
            ends += list(out.end_logits.numpy())
        width = max(len(s) for s in starts)
        pad = lambda rows: np.stack([np.pad(r, (0, width - len(r)), constant_values=-1e4) for r in rows])  # noqa: E731
        answers = best_answers(examples, features, pad(starts), pad(ends), max_answer_length=self.max_answer_length)
        return [{"id": ex.id, "prediction": answers[ex.id]} for ex in examples]


def _require_answers(examples: list[QAExample], split: str) -> None:
    for example in examples:
        if not example.answer_texts:
            raise DataError(f"{split}: question {example.id!r} has no answers; every evaluated question "
                            "needs at least one gold answer (with its answer_start)")


def load_qa_splits(train_file, validation_file, test_file, seed: int) -> dict[str, list]:
    from .base import file_splits

    return file_splits(lambda path, training: load_squad(path, training=training), train_file, validation_file,
                       test_file, seed)


def load_qa_hub() -> dict[str, list]:
    """SQuAD v1.1 from the hub: train, and the official dev set as both validation and test."""
    hint = "give SQuAD-format files with --train-file / --validation-file"
    rows = {split: load_hub_split(SQUAD_HUB, None, split, hint) for split in ("train", "validation")}
    dev = qa_examples_from_rows(rows["validation"], f"{SQUAD_HUB}[validation]", training=False)
    return {"train": qa_examples_from_rows(rows["train"], f"{SQUAD_HUB}[train]", training=True),
            "validation": dev, "test": dev}
