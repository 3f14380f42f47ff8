"""Task types as the training loop sees them: GLUE/SuperGLUE-style classification, extractive QA,
sequence-to-sequence generation, multi-label classification and instruction tuning (see base.TaskIO)."""

from __future__ import annotations

from ..errors import ConfigError, DataError
from ..tasks import FILE_FORMAT_TASKS, QA_TASKS, custom_splits, get_task, is_file_format_task, make_splits
from ..tasks.generation import SEQ2SEQ_TASKS, require_metric_packages
from .base import TaskIO, cap_splits, file_splits, seeded_subset
from .classification import ClassificationIO
from .instruction import InstructionIO, load_instruction_splits
from .multilabel import MultiLabelIO, load_multilabel_splits
from .qa import ExtractiveQAIO, load_qa_hub, load_qa_splits
from .seq2seq import Seq2SeqIO, generation_settings, load_seq2seq_hub_splits, load_seq2seq_splits

CUSTOM_KINDS = ("classification", "regression", "multi_label")


def task_io_for(task: str, data_dir=None, protocol: str = "dev_as_test", seed: int = 42,
                max_train_samples: int | None = None, max_validation_samples: int | None = None,
                custom: dict | None = None, generation: dict | None = None, doc_stride: int | None = None) -> TaskIO:
    """The task with its splits.

    task: a registry name (GLUE, SuperGLUE, polarity), ``squad``, or a seq2seq task (xsum,
    wmt16_en_ro, wmt16_ro_en). custom: the user's files, {train_file, validation_file, test_file}
    plus, for their own classification / regression / multi-label task, {text_columns,
    label_column, kind, name} and optionally skip_missing_labels (see `load_custom`). Without
    files, squad and the seq2seq tasks come from the hub.
    """
    name = str(task).lower()
    if generation and name not in SEQ2SEQ_TASKS:
        raise ConfigError(f"--generate settings apply to the generation tasks ({', '.join(SEQ2SEQ_TASKS)}), not {task!r}")
    if doc_stride is not None and name not in QA_TASKS:
        raise ConfigError(f"--doc-stride applies to extractive QA ({', '.join(QA_TASKS)}), not {task!r}")
    if is_file_format_task(name):
        if data_dir:
            raise DataError(f"--data-dir holds GLUE/SuperGLUE folders; give {name}'s files with --train-file, "
                            "--validation-file and --test-file")
        if protocol != "dev_as_test":
            raise ConfigError(f"--protocol {protocol!r} splits GLUE/SuperGLUE tasks; {name}'s splits are its files")
        files = custom or {}
        paths = (files.get("train_file"), files.get("validation_file"), files.get("test_file"))
        if name == InstructionIO.name:
            if not files.get("train_file"):
                raise DataError("task 'instruction' trains on your JSONL files: give --train-file (and optionally "
                                "--validation-file and --test-file)")
            return InstructionIO(cap_splits(load_instruction_splits(*paths, seed), max_train_samples,
                                            max_validation_samples, seed))
        if name in QA_TASKS:
            splits = load_qa_splits(*paths, seed) if files.get("train_file") else load_qa_hub()
            io = ExtractiveQAIO(cap_splits(splits, max_train_samples, max_validation_samples, seed), doc_stride)
        else:
            require_metric_packages(name)
            splits = load_seq2seq_splits(name, *paths, seed) if files.get("train_file") else load_seq2seq_hub_splits(name)
            io = Seq2SeqIO(name, cap_splits(splits, max_train_samples, max_validation_samples, seed),
                           generation_settings(SEQ2SEQ_TASKS[name].generation, generation))
        return io
    if custom:
        kind = custom.get("kind", "classification")
        if kind not in CUSTOM_KINDS:
            raise ConfigError(f"--task-kind {kind!r}; allowed: {', '.join(CUSTOM_KINDS)}")
        if kind == "multi_label":
            io = load_multilabel_splits(custom.get("name", "custom"), custom["train_file"], custom.get("validation_file"),
                                        custom.get("test_file"), custom["text_columns"], custom["label_column"], seed,
                                        custom.get("skip_missing_labels", False))
            io.splits = cap_splits(io.splits, max_train_samples, max_validation_samples, seed)
            return io
        spec, splits = custom_splits(**custom, seed=seed)
        return ClassificationIO(spec, cap_splits(splits, max_train_samples, max_validation_samples, seed),
                                label_column=custom["label_column"])
    spec = get_task(name)
    return ClassificationIO(spec, make_splits(spec, data_dir, protocol, seed, max_train_samples, max_validation_samples))


def task_io_from_header(info: dict) -> TaskIO:
    """The task of a saved module (no splits), from the task metadata in its header."""
    from ..tasks import custom_task_spec

    kind = info.get("kind")
    if kind == ExtractiveQAIO.kind:
        return ExtractiveQAIO.from_header(info)
    if kind == Seq2SeqIO.kind:
        return Seq2SeqIO.from_header(info)
    if kind == InstructionIO.kind:
        return InstructionIO.from_header(info)
    if kind == MultiLabelIO.kind:
        return MultiLabelIO.from_header(info)
    if info.get("benchmark") == "custom" and info["name"] != "polarity":
        return ClassificationIO(custom_task_spec(info["name"], kind, info["label_names"], info["text_fields"]),
                                label_column=info.get("label_column"))
    return ClassificationIO(get_task(info["name"]))


__all__ = ["CUSTOM_KINDS", "ClassificationIO", "ExtractiveQAIO", "FILE_FORMAT_TASKS", "InstructionIO", "MultiLabelIO", "QA_TASKS",
           "Seq2SeqIO", "TaskIO", "cap_splits", "file_splits", "is_file_format_task", "seeded_subset", "task_io_for",
           "task_io_from_header"]
