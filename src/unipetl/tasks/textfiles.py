"""Reading users' JSON / JSONL / TSV files so that every failure is a DataError naming the file and line.

Shared by the QA, generation and multi-label loaders and `unipetl predict`. Line-level reading is the
one the GLUE loaders use (loaders.py, linefiles.py), so messages and limits are the same everywhere.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from .linefiles import csv_records, decode
from .loaders import _jsonl, _need, reading


def existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def jsonl_records(path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file."""
    path = existing_file(path)
    with reading(path):
        yield from _jsonl(path)


def json_document(path) -> Any:
    """The one JSON value a .json file holds."""
    path = existing_file(path)
    with reading(path):
        text = decode(path, path.read_bytes())  # one document (SQuAD's is one 30 MB line): no line limit
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None


def tsv_records(path, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank row of a tab-separated file.

    quoted=True reads csv-style quoting (fields may hold tabs or newlines inside double quotes, as
    csv.writer and pandas write them); quoted=False takes every character literally, which raw
    parallel text needs because a sentence may start with a quote mark.
    """
    path = existing_file(path)
    with reading(path):
        for line, row in csv_records(path, delimiter="\t", quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE):
            if row and any(cell.strip() for cell in row):
                yield line, row


def need(row: dict, key: str, where: str) -> Any:
    """row[key], or a DataError ``<where>: missing field 'key'``."""
    return _need(row, key, where)


def need_text(row: dict, key: str, where: str) -> str:
    value = _need(row, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value
