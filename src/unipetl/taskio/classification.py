"""Registry tasks (GLUE, SuperGLUE, polarity) and users' classification / regression files."""

from __future__ import annotations

from ..encoding import collator_for, encode
from ..errors import DataError
from ..tasks import TaskSpec, load_custom, main_score
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

        return load_backbone(model, self.spec)

    def encode(self, split, backbone, max_length):
        return encode(self.splits[split], self.spec, backbone.tokenizer, backbone.mode, max_length)

    def collator(self, backbone):
        return collator_for(backbone.mode, backbone.tokenizer)

    def metrics_function(self, split, backbone):
        from ..training import metrics_function

        return metrics_function(self.spec, backbone.mode, backbone.tokenizer, self.splits[split])

    def main_score(self, metrics):
        return main_score(self.spec, metrics)

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
        from ..predict import read_inputs

        return read_inputs(path, self.spec)

    def predict(self, petl, backbone, examples, max_length, batch_size=64):
        from ..predict import predict_examples

        return predict_examples(petl, backbone, self.spec, examples, max_length, batch_size)
