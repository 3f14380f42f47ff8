"""The task layer: GLUE/SuperGLUE registry, loading, formulations, split protocols and metrics."""

from .formulations import build_examples, parse_text_target, round_stsb, to_text_to_text
from .loaders import load_custom, load_split
from .metrics import (
    benchmark_average,
    compute_metrics,
    main_score,
    normalize_answer,
    record_predictions,
    task_score,
    token_f1,
)
from .polarity import fetch_polarity, load_polarity, read_polarity_csv
from .registry import Example, TaskSpec, get_task, list_tasks, register_task
from .splits import PROTOCOLS, make_splits, split_off_validation
from .custom import custom_splits, custom_task_spec
from .generation import SEQ2SEQ_TASKS

QA_TASKS = ("squad",)
INSTRUCTION_TASK = "instruction"  # a decoder-only LM tuned on the user's prompt/completion or chat JSONL
FILE_FORMAT_TASKS = QA_TASKS + tuple(SEQ2SEQ_TASKS) + (INSTRUCTION_TASK,)  # tasks whose files have their own layout (no --text-columns)


def is_file_format_task(name: str) -> bool:
    return str(name).lower() in FILE_FORMAT_TASKS


__all__ = [
    "Example",
    "FILE_FORMAT_TASKS",
    "QA_TASKS",
    "is_file_format_task",
    "PROTOCOLS",
    "TaskSpec",
    "benchmark_average",
    "build_examples",
    "compute_metrics",
    "custom_splits",
    "custom_task_spec",
    "split_off_validation",
    "fetch_polarity",
    "get_task",
    "list_tasks",
    "load_custom",
    "load_polarity",
    "load_split",
    "main_score",
    "make_splits",
    "normalize_answer",
    "parse_text_target",
    "read_polarity_csv",
    "record_predictions",
    "register_task",
    "round_stsb",
    "task_score",
    "to_text_to_text",
    "token_f1",
]
