"""Reading users' text files line by line, so that every failure names the file and the line.

Every JSONL, CSV and TSV reader of the task loaders (and `unipetl predict`) reads through `text_lines`.
Lines are read as bytes and decoded one at a time: a text-mode file decodes 8 KB blocks, so its
UnicodeDecodeError offsets count from the block and name no line. A line longer than MAX_LINE_BYTES
is refused after reading only that much of it; parsing a 20 MB JSON line costs gigabytes.
"""

from __future__ import annotations

import codecs
import csv
from itertools import count
from pathlib import Path
from typing import Iterator

from ..errors import DataError

MAX_LINE_BYTES = 1 << 20  # 1 MiB with its line break: far above any real record, far below a memory problem


def decode(path: Path, raw: bytes, line: int | None = None, offset: int = 0) -> str:
    """raw as UTF-8, less a BOM at the start of the file; an error names the line and the byte's offset
    in the file. raw starts at byte `offset` of the file, on `line` (counted in raw when None)."""
    start = len(codecs.BOM_UTF8) if offset == 0 and raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line = raw.count(b"\n", 0, at) + 1 if line is None else line
        message = f"not UTF-8 text ({exc.reason} at byte {offset + at} of the file)"
        raise DataError(f"{path}: line {line}: {message}") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line break) of every line; lines end at '\\n' ('\\r\\n' included)."""
    with open(path, "rb") as f:
        offset = 0
        for number in count(1):
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}: line {number}: longer than {MAX_LINE_BYTES} bytes (the limit of one "
                                "record); expected one record a line")
            yield number, decode(path, raw, number, offset)
            offset += len(raw)


def csv_records(path: Path, **dialect) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every row, blank rows included as []; csv.reader's `dialect` keywords.

    The line is the row's last one: a quoted cell may span lines."""
    reader = csv.reader((text for _, text in text_lines(path)), **dialect)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. "field larger than field limit (131072)", which names no line
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV/TSV ({exc})") from None
        yield reader.line_num, row
