"""Loading task splits: official GLUE/SuperGLUE files, the Hugging Face hub, and users' own files.

Local layout: ``data_dir/<OfficialFolder>/<file>`` exactly as the GLUE download script and the
SuperGLUE zips unpack (``CoLA/train.tsv``, ``SST-2/dev.tsv``, ``MNLI/dev_matched.tsv``,
``BoolQ/val.jsonl``, ``MultiRC/train.jsonl``, ...). SuperGLUE's RTE is ``RTE/{train,val}.jsonl``
beside GLUE's ``RTE/{train,dev}.tsv``.

Without ``data_dir`` the directory in ``$UNIPETL_GLUE_DIR`` is used if set, else the hub
(``nyu-mll/glue`` / ``aps/super_glue``). Every failure is a DataError naming the file, line and
field at fault.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from ..hub import load_hub_split
from .formulations import build_examples, label_id
from .linefiles import csv_records, text_lines
from .polarity import load_polarity, local_polarity_file
from .registry import Example, TaskSpec, get_task

GLUE_DIR_ENV = "UNIPETL_GLUE_DIR"

# GLUE TSV columns (by header name; CoLA has no header, so by position) for each HF field.
_TSV_COLUMNS: dict[str, dict[str, str | int]] = {
    "cola": {"sentence": 3, "label": 1},
    "sst2": {"sentence": "sentence", "label": "label"},
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "qqp": {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    "qnli": {"question": "question", "sentence": "sentence", "label": "label"},
    "rte": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    "wnli": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
}

# Source fields each SuperGLUE jsonl row must carry (besides label), in the official files.
_JSONL_FIELDS: dict[str, tuple[str, ...]] = {
    "copa": ("premise", "choice1", "choice2", "question"),
    "wic": ("word", "sentence1", "sentence2"),
    "wsc": ("text", "span1_text", "span2_text"),
}


@contextmanager
def reading(path: Path):
    """Turn low-level read failures inside the block into DataErrors naming the file."""
    try:
        yield
    except UnicodeDecodeError as exc:  # the line readers name the line (linefiles.decode); this is a backstop
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV/TSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """Examples of one split: 'train', 'validation' (the official dev set) and, for MNLI,
    'validation_matched' / 'validation_mismatched'. Polarity's parts are 'train' / 'validation' /
    'test' of its fixed seed-42 split, read from data_dir/polarity/ if a copy lies there, else the cache."""
    spec = get_task(task)
    spec.local_file(split)  # raises DataError naming the valid splits
    if spec.name == "polarity":
        return load_polarity(path=local_polarity_file(data_dir))[split]
    data_dir = data_dir or os.environ.get(GLUE_DIR_ENV) or None
    path = Path(data_dir) / spec.folder / spec.local_file(split) if data_dir else None
    examples = build_examples(spec, _local_rows(spec, path) if path else _hub_rows(spec, split))
    if not examples:
        raise DataError(f"{path or spec.hub_path}: split {split!r} of task {spec.name!r} has no examples")
    return examples


# --- local official files ---------------------------------------------------------------------

def _local_rows(spec: TaskSpec, path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (task {spec.name!r} expects the official layout "
                        f"<data_dir>/{spec.folder}/{path.name})")
    with reading(path):
        if path.suffix == ".tsv":
            return list(_tsv_rows(spec, path))
        return list(_jsonl_rows(spec, path))


def _tsv_rows(spec: TaskSpec, path: Path) -> Iterator[dict]:
    columns = _TSV_COLUMNS[spec.name]
    # The GLUE files are unquoted; quote characters are part of the text.
    records = csv_records(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    positions = dict(columns)
    if any(isinstance(c, str) for c in columns.values()):
        _, header = next(records, (0, None))
        if header is None:
            raise DataError(f"{path}: empty file (expected a header line)")
        for field, col in columns.items():
            if col not in header:
                raise DataError(f"{path}: line 1: missing column {col!r} (header has {header})")
            positions[field] = header.index(col)
    label_col = columns["label"]
    label_field = label_col if isinstance(label_col, str) else f"column {label_col + 1}"
    skipped: list[int] = []
    for n, (line, row) in enumerate(records):
        if not row:
            continue
        if any(p >= len(row) for p in positions.values()) or not row[positions["label"]]:
            # A few rows of the GLUE downloads are truncated; HF's loader drops them too.
            skipped.append(line)
            continue
        out: dict[str, Any] = {f: row[p] for f, p in positions.items() if f != "label"}
        out["label"] = label_id(spec, row[positions["label"]], f"{path}: line {line}", label_field)
        out["idx"] = n
        yield out
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} truncated row(s), first at line {skipped[0]}", stacklevel=3)


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or an integer of 4300+ digits
            raise DataError(f"{path}: line {line_no}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _need(row: dict, key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    return row[key]


def _jsonl_rows(spec: TaskSpec, path: Path) -> Iterator[dict]:
    for line_no, row in _jsonl(path):
        where = f"{path}: line {line_no}"
        if spec.name == "multirc":
            yield from _multirc_rows(spec, row, where)
        elif spec.name == "record":
            yield from _record_rows(row, where)
        else:
            if spec.name == "wsc":
                row = {**row, **_need(row, "target", where)}
            fields = _JSONL_FIELDS.get(spec.name, spec.text_fields)
            out = {k: _need(row, k, where) for k in fields}
            out["label"] = label_id(spec, _need(row, "label", where), where)
            out["idx"] = row.get("idx")
            yield out


def _multirc_rows(spec: TaskSpec, row: dict, where: str) -> Iterator[dict]:
    passage = _need(row, "passage", where)
    text = _need(passage, "text", f"{where}: passage")
    for question in _need(passage, "questions", f"{where}: passage"):
        q_where = f"{where}: question {question.get('idx')}"
        for answer in _need(question, "answers", q_where):
            a_where = f"{q_where}: answer {answer.get('idx')}"
            yield {
                "paragraph": text,
                "question": _need(question, "question", q_where),
                "answer": _need(answer, "text", a_where),
                "label": label_id(spec, _need(answer, "label", a_where), a_where),
                "idx": {"paragraph": row.get("idx"), "question": question.get("idx"), "answer": answer.get("idx")},
            }


def _record_rows(row: dict, where: str) -> Iterator[dict]:
    # Same reading as the HF builder: entity spans have inclusive ends; duplicates collapse.
    passage = _need(row, "passage", where)
    text = _need(passage, "text", f"{where}: passage")
    entities = sorted({text[e["start"]: e["end"] + 1] for e in _need(passage, "entities", f"{where}: passage")})
    for qa in _need(row, "qas", where):
        q_where = f"{where}: query {qa.get('idx')}"
        yield {
            "passage": text,
            "query": _need(qa, "query", q_where),
            "entities": entities,
            "answers": sorted({a["text"] for a in qa.get("answers", [])}),
            "idx": {"passage": row.get("idx"), "query": qa.get("idx")},
        }


# --- Hugging Face hub -------------------------------------------------------------------------

def _hub_rows(spec: TaskSpec, split: str) -> list[dict]:
    if spec.hub_path is None:
        raise DataError(f"task {spec.name!r} has no hub dataset; give its files with --data-dir (Python: data_dir=)")
    hint = (f"give a folder with the official files with --data-dir (Python: data_dir=) or ${GLUE_DIR_ENV}, "
            f"e.g. DATA_DIR/{spec.folder}/{spec.local_file(split)}")
    return list(load_hub_split(spec.hub_path, spec.hub_config, spec.hub_split(split), hint))


# --- users' own files -------------------------------------------------------------------------

def load_custom(
    path: str | os.PathLike,
    text_columns: list[str],
    label_column: str,
    kind: str = "classification",
    label_names: list[str] | tuple[str, ...] | None = None,
    skip_missing_labels: bool = False,
) -> tuple[list[Example], tuple[str, ...]]:
    """Examples from a CSV/TSV (with a header) or JSONL file, and the label names used.

    Classification labels are names (see `label_name`: 0, 0.0, "0" and "0.0" are all "0"); label
    ids follow `label_names` if given (an unknown label is an error), else the sorted set of labels
    found. Regression targets must be finite numbers. A row without a label (empty cell, NaN, null,
    None, no key) is an error, or with skip_missing_labels is left out with a warning that counts them.
    """
    path = Path(path)
    if kind not in ("classification", "regression"):
        raise DataError(f"{path}: kind {kind!r} is not 'classification' or 'regression'")
    if not text_columns or len(text_columns) > 2:
        raise DataError(f"{path}: text_columns must name 1 or 2 columns, got {list(text_columns)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with reading(path):
        rows = list(_custom_rows(path, list(text_columns), label_column))
    if not rows:
        raise DataError(f"{path}: no data rows")

    labelled, skipped = [], []
    for line, row in rows:
        where = f"{path}: line {line}: field {label_column!r}"
        raw = row.get(label_column)
        if is_missing_label(raw):
            if not skip_missing_labels:
                raise DataError(f"{where}: missing label {raw!r}; expected a label in every row "
                                "(--skip-missing-labels, or skip_missing_labels=True, leaves such rows out)")
            skipped.append(line)
            continue
        labelled.append((line, row, _number(raw, where) if kind == "regression" else label_name(raw, where)))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) without a label in {label_column!r}, "
                      f"first at line {skipped[0]}", stacklevel=2)
    if not labelled:
        raise DataError(f"{path}: no rows with a label in {label_column!r}")

    if kind == "regression":
        names: tuple[str, ...] = ()
    elif label_names is not None:
        names = tuple(str(n) for n in label_names)
    else:
        names = tuple(sorted({value for _, _, value in labelled}))
    index = label_index(names)

    examples = []
    for line, row, value in labelled:
        if kind == "regression":
            label = value
        elif value in index:
            label = index[value]
        else:
            raise DataError(f"{path}: line {line}: field {label_column!r}: unknown label {row[label_column]!r}; "
                            f"expected one of {list(names)}")
        examples.append(Example(tuple(str(row[c]) for c in text_columns), label, meta={"line": line}))
    return examples, names


# Cells that mean "no value" as pandas, numpy and JSON writers spell them; compared stripped, lower-case.
MISSING_LABELS = frozenset({"", "nan", "null", "none"})
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def is_missing_label(value: Any) -> bool:
    """None, a float NaN, or a string that writers use for an empty cell."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING_LABELS)


def label_name(value: Any, where: str) -> str:
    """A class label as one name: a number has one spelling whether read as a number or as text
    (0, 0.0, "0", " 0.0" -> "0"; 1.50 -> "1.5"), so a file never splits one class in two."""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: label {value!r} is not a name (a string or number)")
    text = str(value).strip()  # JSON true / false stay the names "True" / "False"
    if _INTEGER.fullmatch(text):
        return str(int(text)) if len(text) < 1000 else text  # exact for long ids; int() refuses 4300+ digits
    if not _DECIMAL.fullmatch(text) and not isinstance(value, float):
        return text
    number = float(text)
    if not math.isfinite(number):
        raise DataError(f"{where}: label {value!r} is not a finite number")
    return str(int(number)) if number.is_integer() else repr(number)


def label_index(names) -> dict[str, int]:
    """{label name: id} for names given as the label set, a number in any spelling matching its id."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(label_name(name, f"label names {list(names)}"), i)
    return index


def _number(raw: Any, where: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(raw, bool):  # float(True) is 1.0, but true is no score
        raise DataError(f"{where}: expected a number for a regression target, got {raw!r}")
    if not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number, got {raw!r}")
    return value


def _custom_rows(path: Path, text_columns: list[str], label_column: str) -> Iterator[tuple[int, dict]]:
    # The label may be absent here (a missing label): load_custom refuses or skips the row.
    if path.suffix.lower() in (".jsonl", ".json"):
        for line, row in _jsonl(path):
            for col in text_columns:
                _need(row, col, f"{path}: line {line}")
            yield line, row
        return
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .csv, .tsv or .jsonl")
    records = csv_records(path, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    _, header = next(records, (0, None))
    if header is None:
        raise DataError(f"{path}: empty file (expected a header line)")
    for col in [*text_columns, label_column]:
        if col not in header:
            raise DataError(f"{path}: line 1: missing column {col!r} (header has {header})")
    for line, cells in records:
        if not cells:
            continue  # a blank line, as csv.DictReader skips it
        row = dict(zip(header, cells))  # a repeated column name keeps its last cell, as DictReader does
        for col in [*text_columns, label_column]:
            if col not in row:
                raise DataError(f"{path}: line {line}: field {col!r} is missing (row too short)")
        yield line, row
