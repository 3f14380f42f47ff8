"""Input formulations: dataset rows -> Examples, and the text-to-text view for T5/BART.

Rows arrive in the Hugging Face column layout (local files are parsed into it first), with labels
already as class ids (floats for STS-B). The SuperGLUE formulations follow ScaLearn's code
(ALGORITHMS.md §5.5), string for string:

* COPA: two choices, each ("{premise} because" | "{premise} so", choice); cause -> because.
* MultiRC: one binary example per answer option: (paragraph, "{question} {answer}"), grouped by
  question.
* ReCoRD: one binary example per candidate entity: (passage with "@highlight\\n" -> "- ", query
  with @placeholder replaced by the entity), grouped by query; label 1 if the entity is a gold answer.
* WiC: one segment "{s1} {s2} Does {word} have the same meaning in both sentences?".
* WSC: ("{span2_text}: {text}", span1_text).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from ..errors import DataError
from .registry import Example, TaskSpec, get_task


def _plain(spec: TaskSpec, row: dict) -> list[Example]:
    return [Example(tuple(row[f] for f in spec.text_fields), row["label"], meta={"idx": row.get("idx")})]


def _copa(spec: TaskSpec, row: dict) -> list[Example]:
    joiner = "because" if row["question"] == "cause" else "so"
    text_a = f"{row['premise']} {joiner}"
    choices = ((text_a, row["choice1"]), (text_a, row["choice2"]))
    meta = {"idx": row.get("idx"), "premise": row["premise"], "question": row["question"]}
    return [Example((text_a,), row["label"], choices=choices, meta=meta)]


def _multirc(spec: TaskSpec, row: dict) -> list[Example]:
    idx = row["idx"]
    group = f"{idx['paragraph']}-{idx['question']}"
    texts = (row["paragraph"], f"{row['question']} {row['answer']}")
    return [Example(texts, row["label"], group=group, meta={"idx": idx})]


def _record(spec: TaskSpec, row: dict) -> list[Example]:
    idx = row["idx"]
    group = f"{idx['passage']}-{idx['query']}"
    passage = row["passage"].replace("@highlight\n", "- ")
    answers = tuple(row["answers"])
    return [
        Example((passage, row["query"].replace("@placeholder", entity)), int(entity in answers), group=group,
                meta={"idx": idx, "entity": entity, "answers": answers})
        for entity in row["entities"]
    ]


def _wic(spec: TaskSpec, row: dict) -> list[Example]:
    text = f"{row['sentence1']} {row['sentence2']} Does {row['word']} have the same meaning in both sentences?"
    return [Example((text,), row["label"], meta={"idx": row.get("idx"), "word": row["word"]})]


def _wsc(spec: TaskSpec, row: dict) -> list[Example]:
    texts = (f"{row['span2_text']}: {row['text']}", row["span1_text"])
    return [Example(texts, row["label"], meta={"idx": row.get("idx")})]


_FORMULATIONS: dict[str, Callable[[TaskSpec, dict], list[Example]]] = {
    "copa": _copa, "multirc": _multirc, "record": _record, "wic": _wic, "wsc": _wsc,
}


def build_examples(task: str | TaskSpec, rows: Iterable[dict[str, Any]]) -> list[Example]:
    """Turn HF-layout rows of one split into Examples with the task's formulation."""
    spec = get_task(task)
    formulate = _FORMULATIONS.get(spec.name, _plain)
    out: list[Example] = []
    for row in rows:
        out.extend(formulate(spec, row))
    return out


# --- text-to-text ------------------------------------------------------------------------------

def round_stsb(value: float) -> float:
    """Nearest multiple of 0.2, halves rounded up (Python's round() would round half to even)."""
    return math.floor(value * 5 + 0.5) / 5


def _segments(spec: TaskSpec, example: Example) -> tuple[str, ...]:
    if spec.kind == "multiple_choice":
        # The shared first segment (premise + connector), then each choice.
        return (example.choices[0][0],) + tuple(choice[-1] for choice in example.choices)
    return example.texts


def to_text_to_text(task: str | TaskSpec, example: Example, prefix: bool = True) -> tuple[str, str]:
    """(source, target) strings, e.g. ("sst2 sentence: a fine film", "positive").

    prefix=False drops the leading task name (ProPETL-T5 trains adapters without it, §2.9).
    STS-B targets are the score rounded to 0.2 and written with one decimal ("3.4").
    """
    spec = get_task(task)
    parts = [f"{name}: {text}" for name, text in zip(spec.text_fields, _segments(spec, example))]
    source = " ".join(([spec.name] if prefix else []) + parts)
    if spec.kind == "regression":
        return source, f"{round_stsb(float(example.label)):.1f}"
    return source, spec.text_labels[int(example.label)]


def parse_text_target(task: str | TaskSpec, text: str) -> int | float | None:
    """Inverse of the target side: a label id (or float), or None when the text is no valid label."""
    spec = get_task(task)
    text = text.strip()
    if spec.kind == "regression":
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    words = [w.lower() for w in spec.text_labels]
    return words.index(text.lower()) if text.lower() in words else None


def label_id(spec: TaskSpec, raw: Any, where: str, field: str = "label") -> int | float:
    """Map a raw label from a file to a class id (or float for regression).

    `where` names the file and line, `field` the column or key the label came from.
    """
    if spec.kind == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{where}: field {field!r}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: field {field!r}: expected a finite number, got {raw!r}")
        return value
    n = len(spec.label_names)
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, str):
        if raw in spec.label_names:
            return spec.label_names.index(raw)
        if raw.strip().lstrip("-").isdigit():
            raw = int(raw)
    if isinstance(raw, int) and 0 <= raw < n:
        return raw
    raise DataError(f"{where}: field {field!r}: {raw!r} is not one of {list(spec.label_names)} "
                    f"(or a class id 0..{n - 1})")
