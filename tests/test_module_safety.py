"""Module safety (issue 20): saves replace a module atomically under concurrency and after killed writers, and a
module header is not trusted: file references stay in the module folder, sizes are checked before reading, a header
checksum catches hand edits, malformed headers are refused with one clear error, and a transfer module moved
together with its sources still finds them."""

import fcntl
import json
import os
import shutil
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch

import unipetl
from tiny_models import logits, tiny_batch, tiny_model
from unipetl import ModuleFormatError, PetlConfig
from unipetl import atomic
from unipetl.module_format import FORMAT_VERSION, header_digest
from unipetl.storage import HEADER_FILE, WEIGHTS_FILE, read_module

COMPAT = Path(__file__).parent / "compat" / "modules"


def lora(seed=0):
    petl = unipetl.get_petl_model(tiny_model("bert"), "lora")
    torch.manual_seed(seed)
    with torch.no_grad():  # distinct, non-zero weights per seed
        for param in petl.methods.parameters():
            param.normal_(0, 0.2)
    return petl.eval()


@pytest.fixture
def saved(tmp_path):
    petl = lora()
    petl.save(tmp_path / "m", task={"name": "toy"})
    return tmp_path / "m"


def edit_header(directory, change, rehash=False):
    """Apply ``change`` to the header; with ``rehash``, also rewrite its checksum (a crafted module, not a slip)."""
    path = directory / HEADER_FILE
    header = json.loads(path.read_text())
    change(header)
    if rehash:
        header["header_sha256"] = header_digest(header)
    path.write_text(json.dumps(header))


def refuse(directory, match):
    with pytest.raises(ModuleFormatError, match=match):
        unipetl.load_petl_model(tiny_model("bert"), directory)


def stored(directory):
    return read_module(directory)[1]


# ------------------------------------------------------------------------------ 8: atomic saves
def test_concurrent_saves_leave_one_loadable_winner_and_a_reader_never_misses_the_module(tmp_path):
    target = tmp_path / "m"
    models = [lora(seed) for seed in (1, 2)]
    expected = [m.stored_tensors() for m in models]
    models[0].save(target)
    errors, done = [], threading.Event()

    def writer(petl):
        try:
            for _ in range(12):
                petl.save(target)
        except Exception as err:  # noqa: BLE001 - collected and reported by the test
            errors.append(err)

    def reader():
        while not done.is_set():
            try:
                read_module(target)
            except Exception as err:  # noqa: BLE001
                errors.append(err)
                return

    threads = [threading.Thread(target=writer, args=(m,)) for m in models]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert errors == []
    final = stored(target)
    assert any(all(torch.equal(final[k], v) for k, v in e.items()) for e in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary, backup or lock file left
    loaded = unipetl.load_petl_model(tiny_model("bert"), target).eval()
    batch = tiny_batch("bert")
    assert any(torch.equal(logits(loaded, batch), logits(m, batch)) for m in models)


def test_the_module_name_never_goes_missing_during_a_replace(saved, monkeypatch):
    (saved.parent / "x").mkdir(), (saved.parent / "y").mkdir()
    if not getattr(atomic, "_exchange", lambda a, b: True)(saved.parent / "x", saved.parent / "y"):
        pytest.skip(reason="this system or file system cannot exchange two folders in one step (Linux renameat2)")
    (saved.parent / "x").rmdir(), (saved.parent / "y").rmdir()
    seen = []
    real_replace, real_rename = os.replace, os.rename

    def spy(real):
        def call(src, dst, *args, **kwargs):
            real(src, dst, *args, **kwargs)
            seen.append((saved / HEADER_FILE).is_file())
        return call

    monkeypatch.setattr(os, "replace", spy(real_replace))
    monkeypatch.setattr(os, "rename", spy(real_rename))
    lora(seed=3).save(saved)
    assert all(seen)
    assert all(torch.equal(stored(saved)[k], v) for k, v in lora(seed=3).stored_tensors().items())


def test_a_save_on_a_file_system_without_exchange_still_replaces_the_module(saved, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    lora(seed=4).save(saved)
    assert all(torch.equal(stored(saved)[k], v) for k, v in lora(seed=4).stored_tensors().items())
    assert sorted(p.name for p in saved.parent.iterdir()) == ["m"]


def test_stale_leftovers_of_killed_saves_are_removed_by_the_next_save(saved):
    parent = saved.parent
    # What a writer killed between its steps leaves: a temporary folder, a moved-aside old module, a lock file.
    for name in (".m.ab12cd_9", ".m.old-4242"):
        (parent / name).mkdir()
        (parent / name / WEIGHTS_FILE).write_bytes(b"x" * 10)
    (parent / ".m.lock").write_text("")
    # Look-alikes of other modules (m.v2) and other files are kept.
    (parent / ".m.v2.abcdefgh").mkdir()
    (parent / "notes.txt").write_text("keep")
    lora(seed=5).save(saved)
    assert sorted(p.name for p in parent.iterdir()) == [".m.v2.abcdefgh", "m", "notes.txt"]
    assert all(torch.equal(stored(saved)[k], v) for k, v in lora(seed=5).stored_tensors().items())


def test_a_save_while_another_holds_the_lock_is_refused_naming_the_folder_and_keeps_the_module(saved, monkeypatch):
    before = stored(saved)
    monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 0.3)
    fd = os.open(saved.parent / ".m.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ModuleFormatError, match=f"{saved}.*another save"):
            lora(seed=6).save(saved)
    finally:
        os.close(fd)
    assert all(torch.equal(stored(saved)[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------ 9a: file references
@pytest.mark.parametrize("reference", ["../outside.safetensors", "ABSOLUTE", "sub/weights.safetensors", "..", ""])
def test_weights_file_outside_the_module_folder_is_refused(saved, reference):
    outside = saved.parent / "outside.safetensors"
    shutil.copy(saved / WEIGHTS_FILE, outside)  # a valid copy: only the confinement rule can refuse it
    (saved / "sub").mkdir()
    shutil.copy(saved / WEIGHTS_FILE, saved / "sub" / WEIGHTS_FILE)
    value = str(outside) if reference == "ABSOLUTE" else reference
    edit_header(saved, lambda h: h["weights"].update(file=value), rehash=True)
    refuse(saved, r"'weights\.file'")


@pytest.mark.parametrize("reference", ["../../prototype.safetensors", "ABSOLUTE", "prototype.safetensors",
                                       "../sub/prototype.safetensors", "../.."])
def test_family_prototype_outside_the_parent_folder_is_refused(tmp_path, reference):
    family = tmp_path / "deep" / "family"
    shutil.copytree(COMPAT / "family", family)
    for place in (tmp_path / "deep", family / "a", family / "sub"):  # valid copies wherever a reference could lead
        place.mkdir(exist_ok=True)
        shutil.copy(family / "prototype.safetensors", place / "prototype.safetensors")
    value = str(family / "prototype.safetensors") if reference == "ABSOLUTE" else reference
    edit_header(family / "a", lambda h: h["family_prototype"].update(file=value))
    refuse(family / "a", r"'family_prototype\.file'")


# ------------------------------------------------------------------------------ 9b: sizes before reading
def test_an_oversized_weights_file_is_refused_before_it_is_read_and_its_size_is_not_reported(saved):
    size = 64 * 2**20
    with open(saved / WEIGHTS_FILE, "r+b") as f:
        f.truncate(size)  # sparse: takes no disk space, but reading it takes 64 MiB of memory
    tracemalloc.start()
    try:
        with pytest.raises(ModuleFormatError, match="weights.safetensors.*truncated or replaced") as err:
            read_module(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    assert str(size) not in str(err.value)


def test_an_oversized_header_is_refused_before_it_is_read(saved):
    text = (saved / HEADER_FILE).read_text()
    (saved / HEADER_FILE).write_text(" " * 2**21 + text)  # valid JSON, but no header is 2 MiB
    refuse(saved, f"{HEADER_FILE}.*larger than")


# ------------------------------------------------------------------------------ 9c: header checksum
@pytest.mark.parametrize("field, value", [(("config", "lora_alpha"), 64.0), (("backbone", "num_labels"), 5),
                                          (("task", "name"), "other"), (("prefix_form",), "flat")])
def test_a_header_edited_by_hand_is_refused(saved, field, value):
    def change(header):
        node = header
        for key in field[:-1]:
            node = node[key]
        node[field[-1]] = value

    edit_header(saved, change)
    refuse(saved, "header altered")


def test_saves_write_the_header_checksum_and_a_new_header_without_it_is_refused(saved):
    header = json.loads((saved / HEADER_FILE).read_text())
    assert header["format_version"] == FORMAT_VERSION == 2
    assert header["header_sha256"] == header_digest(header)
    edit_header(saved, lambda h: h.pop("header_sha256"))
    refuse(saved, "header_sha256")


def test_a_version_1_module_loads_without_a_checksum_but_not_with_a_wrong_one(tmp_path):
    module = shutil.copytree(COMPAT / "lora", tmp_path / "lora")
    assert "header_sha256" not in json.loads((module / HEADER_FILE).read_text())
    unipetl.load_petl_model(tiny_model("bert"), module)
    edit_header(module, lambda h: h.update(header_sha256="0" * 64))
    refuse(module, "header altered")


# ------------------------------------------------------------------------------ 7: malformed headers
BAD_FIELDS = [
    (lambda h: h["weights"].update(bytes="12"), "weights.bytes"),
    (lambda h: h["weights"].update(sha256=5), "weights.sha256"),
    (lambda h: h["weights"].update(file=["w"]), "weights.file"),
    (lambda h: h.update(weights=[]), "weights"),
    (lambda h: h.update(config=[]), "config"),
    (lambda h: h.update(task=5), "task"),
    (lambda h: h.update(family_prototype="x"), "family_prototype"),
    (lambda h: h.update(format_version=True), "format_version"),
    (lambda h: h["backbone"].update(fingerprint=5), "backbone.fingerprint"),
    (lambda h: h["backbone"].update(architecture=["X"]), "backbone.architecture"),
    (lambda h: h["config"].update(lora_alpha="32"), "config.lora_alpha"),
    (lambda h: h["config"].update(lora_targets="qv"), "config.lora_targets"),
    (lambda h: h["config"].update(lora_targets=[1, 2]), "config.lora_targets[0]"),
    (lambda h: h["config"].update(prefix_mlp="yes"), "config.prefix_mlp"),
    (lambda h: h["config"].update(extra=[]), "config.extra"),
    (lambda h: h["config"].update(gate_limits=5), "config.gate_limits"),
    (lambda h: h["config"].update(transfer_sources=[5]), "config.transfer_sources[0]"),
    (lambda h: h["config"].update(transfer_sources=[{"name": "s", "sha256": "0", "path": 3}]),
     "config.transfer_sources[0].path"),
]


def test_header_fields_of_the_wrong_type_are_refused_naming_file_and_field(tmp_path):
    petl = lora()
    failures = []
    for i, (change, field) in enumerate(BAD_FIELDS):
        directory = tmp_path / str(i)
        petl.save(directory)
        edit_header(directory, change, rehash=True)
        try:
            unipetl.load_petl_model(tiny_model("bert"), directory)
            failures.append(f"{field}: loaded")
        except ModuleFormatError as err:
            if HEADER_FILE not in str(err) or f"'{field}'" not in str(err):
                failures.append(f"{field}: {err}")
        except Exception as err:  # noqa: BLE001 - any other type is the defect
            failures.append(f"{field}: {type(err).__name__}: {err}")
    assert failures == []


def test_a_json_nesting_bomb_is_refused(saved):
    (saved / HEADER_FILE).write_text("[" * 100000 + "]" * 100000)
    refuse(saved, f"{HEADER_FILE}.*nested too deeply")


# ------------------------------------------------------------------------------ 9d: transfer sources
def test_a_transfer_module_moved_with_its_sources_finds_them_relative_to_itself(tmp_path, monkeypatch):
    from unipetl.transfer import get_transfer_model

    root = tmp_path / "before"
    for i in range(2):
        petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset("pfeiffer"))
        torch.manual_seed(10 + i)
        with torch.no_grad():
            for param in petl.methods.parameters():
                param.normal_(0, 0.2)
        petl.save(root / "sources" / f"s{i}")
    petl = get_transfer_model(tiny_model("bert"), [root / "sources" / "s0", root / "sources" / "s1"], "scalearn").eval()
    # Sources recorded relative to the module (transfer.py records absolute paths; see the report of issue 20).
    for record in petl.config.transfer_sources:
        record["path"] = os.path.relpath(record["path"], root / "task")
    petl.save(root / "task")
    batch = tiny_batch("bert")
    expected = logits(petl, batch)
    shutil.move(root, tmp_path / "after")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the recorded relative paths do not resolve from here
    loaded = unipetl.load_petl_model(tiny_model("bert"), tmp_path / "after" / "task").eval()
    assert torch.equal(logits(loaded, batch), expected)
