"""Task registry: what each GLUE / SuperGLUE task is, how it is scored and where its files live.

Task names are the lower-case Hugging Face config names. Two choices worth knowing:

* SuperGLUE's RTE is ``rte_superglue`` (GLUE's is ``rte``). Both use the official folder ``RTE``;
  GLUE ships ``train.tsv``/``dev.tsv`` and SuperGLUE ``train.jsonl``/``val.jsonl``, so the file
  names keep them apart and one data directory can hold both benchmarks.
* MNLI's mismatched dev set is an extra split of ``mnli`` (``validation_mismatched``), not a task
  of its own: it shares MNLI's training data and head. ``validation`` means the matched set.

The ``polarity`` task (the library's offline default corpus) is registered here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError

KINDS = ("classification", "regression", "multiple_choice")
BENCHMARKS = ("glue", "superglue", "custom")
GLUE_HUB = "nyu-mll/glue"
# The canonical "super_glue" repo is a loading script, which datasets>=4 no longer runs;
# "aps/super_glue" is the maintained copy with the same configs and columns.
SUPERGLUE_HUB = "aps/super_glue"


@dataclass(frozen=True)
class Example:
    """One model input.

    texts: 1 or 2 segments for the tokenizer. label: class id (int), float for regression,
    or the index of the right choice for multiple choice. choices: for multiple choice, one
    (segment, segment) pair per choice. group: the unit that metrics (MultiRC EM) and ReCoRD
    answer selection aggregate over. meta: source fields that formulations dropped.
    """

    texts: tuple[str, ...]
    label: int | float
    choices: tuple[tuple[str, ...], ...] | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the library knows about a task.

    files: (split, local file name, hub split name) rows; split names are ``train``,
    ``validation`` (the official dev set) and, for MNLI, ``validation_matched`` /
    ``validation_mismatched``. text_fields name the Example segments in text-to-text sources.
    text_labels are the text-to-text target words (default: lower-cased label names).
    stratify: whether the ScaLearn protocol stratifies its 10 % validation carve by label.
    """

    name: str
    benchmark: str
    kind: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    text_fields: tuple[str, ...]
    hub_path: str | None = None
    hub_config: str | None = None
    folder: str | None = None
    files: tuple[tuple[str, str, str], ...] = ()
    text_labels: tuple[str, ...] = ()
    stratify: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.benchmark not in BENCHMARKS:
            raise DataError(f"task {self.name!r}: benchmark {self.benchmark!r} is not one of {BENCHMARKS}")
        if self.kind == "regression" and self.label_names:
            raise DataError(f"task {self.name!r}: a regression task has no label_names")
        if self.kind != "regression" and len(self.label_names) < 2:
            raise DataError(f"task {self.name!r}: needs at least two label_names")
        if self.main_metric not in self.metrics + ("combined_score",):
            raise DataError(f"task {self.name!r}: main_metric {self.main_metric!r} is not among {self.metrics}")
        if not self.text_labels:
            object.__setattr__(self, "text_labels", tuple(n.lower() for n in self.label_names))
        if len(self.text_labels) != len(self.label_names):
            raise DataError(f"task {self.name!r}: text_labels must match label_names one to one")

    @property
    def num_labels(self) -> int:
        """Classifier outputs: 1 for regression, else the number of classes (or choices)."""
        return 1 if self.kind == "regression" else len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(row[0] for row in self.files)

    def local_file(self, split: str) -> str:
        return self._row(split)[1]

    def hub_split(self, split: str) -> str:
        return self._row(split)[2]

    def _row(self, split: str) -> tuple[str, str, str]:
        for row in self.files:
            if row[0] == split:
                return row
        raise DataError(f"task {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}")


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add a task (e.g. a user's own) so that loaders, metrics and the trainer know it."""
    if spec.name in _REGISTRY and not overwrite:
        raise DataError(f"task {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str | TaskSpec) -> TaskSpec:
    if isinstance(name, TaskSpec):
        return name
    spec = _REGISTRY.get(str(name).lower())
    if spec is None:
        raise DataError(f"unknown task {name!r}; valid task names: {', '.join(list_tasks())}")
    return spec


def list_tasks(benchmark: str | None = None) -> list[str]:
    return [n for n, s in _REGISTRY.items() if benchmark is None or s.benchmark == benchmark]


# --- the built-in tasks ---------------------------------------------------------------------

_GLUE_FILES = (("train", "train.tsv", "train"), ("validation", "dev.tsv", "validation"))
_SUPERGLUE_FILES = (("train", "train.jsonl", "train"), ("validation", "val.jsonl", "validation"))
_BINARY = ("False", "True")
_ACC = ("accuracy",)


def _glue(name, folder, kind, labels, metrics, main, fields, files=_GLUE_FILES, stratify=True):
    register_task(TaskSpec(name, "glue", kind, labels, metrics, main, fields, GLUE_HUB, name, folder, files,
                           stratify=stratify))


def _superglue(name, folder, kind, labels, metrics, main, fields, config=None, stratify=True):
    register_task(TaskSpec(name, "superglue", kind, labels, metrics, main, fields, SUPERGLUE_HUB,
                           config or name, folder, _SUPERGLUE_FILES, stratify=stratify))


_glue("cola", "CoLA", "classification", ("unacceptable", "acceptable"), ("matthews_correlation",),
      "matthews_correlation", ("sentence",))
_glue("sst2", "SST-2", "classification", ("negative", "positive"), _ACC, "accuracy", ("sentence",))
_glue("mrpc", "MRPC", "classification", ("not_equivalent", "equivalent"), ("accuracy", "f1"),
      "combined_score", ("sentence1", "sentence2"))
_glue("qqp", "QQP", "classification", ("not_duplicate", "duplicate"), ("accuracy", "f1"),
      "combined_score", ("question1", "question2"))
# ScaLearn does not stratify STS-B (a float target) nor ReCoRD and CB.
_glue("stsb", "STS-B", "regression", (), ("pearson", "spearmanr"), "combined_score",
      ("sentence1", "sentence2"), stratify=False)
_glue("mnli", "MNLI", "classification", ("entailment", "neutral", "contradiction"), _ACC, "accuracy",
      ("premise", "hypothesis"),
      files=(("train", "train.tsv", "train"),
             ("validation", "dev_matched.tsv", "validation_matched"),
             ("validation_matched", "dev_matched.tsv", "validation_matched"),
             ("validation_mismatched", "dev_mismatched.tsv", "validation_mismatched")))
_glue("qnli", "QNLI", "classification", ("entailment", "not_entailment"), _ACC, "accuracy",
      ("question", "sentence"))
_glue("rte", "RTE", "classification", ("entailment", "not_entailment"), _ACC, "accuracy",
      ("sentence1", "sentence2"))
_glue("wnli", "WNLI", "classification", ("not_entailment", "entailment"), _ACC, "accuracy",
      ("sentence1", "sentence2"))

_superglue("boolq", "BoolQ", "classification", _BINARY, _ACC, "accuracy", ("question", "passage"))
_superglue("cb", "CB", "classification", ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"),
           "combined_score", ("premise", "hypothesis"), stratify=False)
_superglue("copa", "COPA", "multiple_choice", ("choice1", "choice2"), _ACC, "accuracy",
           ("premise", "choice1", "choice2"))
# MultiRC and ReCoRD are cast as binary classification per answer option / candidate entity.
_superglue("multirc", "MultiRC", "classification", _BINARY, ("f1a", "em"), "combined_score",
           ("paragraph", "question_answer"))
_superglue("record", "ReCoRD", "classification", _BINARY, ("f1", "em"), "combined_score",
           ("passage", "query"), stratify=False)
_superglue("rte_superglue", "RTE", "classification", ("entailment", "not_entailment"), _ACC, "accuracy",
           ("premise", "hypothesis"), config="rte")
_superglue("wic", "WiC", "classification", _BINARY, _ACC, "accuracy", ("text",))
_superglue("wsc", "WSC", "classification", _BINARY, _ACC, "accuracy", ("text", "span1_text"))

# The offline default corpus (see polarity.py); it has no official dev set, so its "files" are
# the three parts of its fixed split.
POLARITY_FILE = "polarity-en-pang&lee2.csv"
register_task(TaskSpec(
    "polarity", "custom", "classification", ("negative", "positive"), _ACC, "accuracy", ("sentence",),
    folder="polarity",
    files=(("train", POLARITY_FILE, "train"), ("validation", POLARITY_FILE, "validation"),
           ("test", POLARITY_FILE, "test")),
))
