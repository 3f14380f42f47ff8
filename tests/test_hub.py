"""Hub loading for users who are online: offline machines hear so at once, with the local alternative."""

import socket
import sys

import pytest

from unipetl.errors import DataError
from unipetl.tasks import load_split


@pytest.fixture
def hub_calls(monkeypatch):
    """Records every call of datasets.load_dataset (none should happen offline)."""
    datasets = pytest.importorskip("datasets")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or [])
    monkeypatch.delenv("UNIPETL_GLUE_DIR", raising=False)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    return calls


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_flag_fails_at_once_and_names_the_local_alternatives(flag, hub_calls, monkeypatch):
    monkeypatch.setenv(flag, "1")
    with pytest.raises(DataError) as err:
        load_split("cola", "train")
    message = str(err.value)
    assert f"${flag} is set" in message
    assert "--data-dir" in message and "$UNIPETL_GLUE_DIR" in message and "CoLA/train.tsv" in message
    assert hub_calls == []


def test_unreachable_hub_fails_after_one_connection_attempt(hub_calls, monkeypatch):
    attempts = []

    def no_network(address, timeout=None):
        attempts.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DataError, match=r"huggingface.co:443 is unreachable.*--data-dir"):
        load_split("sst2", "validation")
    assert attempts == [("huggingface.co", 443)] and hub_calls == []


def test_missing_datasets_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    monkeypatch.delenv("UNIPETL_GLUE_DIR", raising=False)
    with pytest.raises(DataError, match=r"needs the `datasets` package \(pip install 'unipetl\[hub\]'\)"):
        load_split("cola", "train")
