"""Mixed-task batches (serving/bank.py): every row of a batch that mixes tasks gets, to within 1e-5, what
its own task's single-task model gives; for every preset alone, for presets mixed on one backbone, for
ScaLearn and AdapterFusion over shared sources, and for the fallback that serves a task on its own.
Tasks come and go at run time, shared parts are held once, and what cannot be served is refused."""

import random

import pytest
import torch

from tiny_models import ENCODERS, tiny_batch, tiny_model
from unipetl import PetlConfig, get_petl_model
from unipetl.errors import ConfigError, ModuleFormatError, UnknownTaskError
from unipetl.mixing import MixedLinear
from unipetl.serving import TaskBank
from unipetl.sources import MaskedView
from unipetl.storage import load_petl_model
from unipetl.transfer import get_transfer_model

TASKS = {"sst2": ("classification", 2), "stsb": ("regression", 1), "cb": ("classification", 3)}
BANK_PRESETS = ("houlsby", "pfeiffer", "parallel", "scaled_parallel", "lora", "prefix", "prompt_tuning", "bitfit",
                "mam", "mam_glue", "proadapter", "prolora", "proprefix", "diffprune", "diffprune_short")
PROPETL = ("proadapter", "prolora", "proprefix")
TOLERANCE = 1e-5


def task_model(family: str, task: str):
    kind, labels = TASKS[task]
    model = tiny_model(family, num_labels=labels, seed=0)
    if kind == "regression":
        model.config.problem_type = "regression"
    return model


def trained_looking(petl, seed: int):
    """Non-zero changes everywhere, as after training (fresh LoRA and prompt-free inits are identities)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in petl.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    return petl


def save_task(directory, family: str, preset, task: str, seed: int):
    """A task module of ``preset`` (a name or a PetlConfig) for ``task``, as `unipetl train` leaves it."""
    petl = trained_looking(get_petl_model(task_model(family, task), preset), seed)
    name = preset if isinstance(preset, str) else preset.preset
    if name and name.startswith("diffprune"):
        petl.project()
        with torch.no_grad():
            petl.diff.values.add_(torch.randn_like(petl.diff.values) * 0.05)
    if name in PROPETL:
        petl.freeze_masks()
    kind, _ = TASKS[task]
    petl.save(directory, task={"name": task, "kind": kind, "mode": "classify", "max_length": 16})
    return directory


def single_task_logits(family: str, directory, task: str, batch: dict, row: int) -> torch.Tensor:
    petl = load_petl_model(task_model(family, task), directory).eval()
    with torch.no_grad():
        return petl(**{k: v[row:row + 1] for k, v in batch.items()}).logits[0]


def assert_mixed_batch_equals_each_task_alone(bank: TaskBank, family: str, modules: dict, seed: int = 3):
    names = list(modules) * 2
    random.Random(seed).shuffle(names)
    batch = tiny_batch(family, batch=len(names), length=9, seed=seed)
    batch.pop("labels", None)
    mixed = bank.forward(batch, names)
    for row, name in enumerate(names):
        directory, task = modules[name]
        alone = single_task_logits(family, directory, task, batch, row)
        assert mixed[row].shape == alone.shape, name
        torch.testing.assert_close(mixed[row], alone, atol=TOLERANCE, rtol=0, msg=f"row {row}, task {name}")


def bank_of(family: str, modules: dict) -> TaskBank:
    bank = TaskBank(tiny_model(family, num_labels=2, seed=0))
    for name, (directory, _) in modules.items():
        bank.add(directory, name)
    return bank


@pytest.mark.parametrize("family", ENCODERS)
@pytest.mark.parametrize("preset", BANK_PRESETS)
def test_each_preset_alone_serves_a_mixed_batch_as_its_single_task_models(tmp_path, family, preset):
    modules = {f"{preset}-{task}": (save_task(tmp_path / task, family, preset, task, seed), task)
               for seed, task in enumerate(TASKS)}
    assert_mixed_batch_equals_each_task_alone(bank_of(family, modules), family, modules)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    for i, task in enumerate(("sst2", "cb", "rte")):
        petl = trained_looking(get_petl_model(tiny_model("bert", seed=0), "pfeiffer"), 100 + i)
        petl.save(root / f"source{i}", task={"name": task, "kind": "classification", "mode": "classify"})
    return [root / f"source{i}" for i in range(3)]


def save_transfer(directory, sources, method: str, task: str, seed: int):
    kind, labels = TASKS[task]
    petl = trained_looking(get_transfer_model(task_model("bert", task), sources, method), seed)
    petl.save(directory, task={"name": task, "kind": kind, "mode": "classify", "max_length": 16})
    return directory


def test_a_batch_mixing_every_preset_and_transfer_method_equals_each_task_alone(tmp_path, sources):
    modules, seed = {}, 0
    for preset in BANK_PRESETS:
        for task in TASKS:
            seed += 1
            modules[f"{preset}-{task}"] = (save_task(tmp_path / f"{preset}-{task}", "bert", preset, task, seed), task)
    for method in ("scalearn", "scalearn_uniform", "scalearn_pp", "adapterfusion"):
        for task in ("sst2", "stsb"):
            seed += 1
            modules[f"{method}-{task}"] = (save_transfer(tmp_path / f"{method}-{task}", sources, method, task, seed), task)
    bank = bank_of("bert", modules)
    assert len(bank.tasks()) == len(modules)
    assert_mixed_batch_equals_each_task_alone(bank, "bert", modules)


def test_scalearn_tasks_hold_their_shared_source_adapters_once(tmp_path, sources):
    modules = {f"scalearn-{task}": (save_transfer(tmp_path / task, sources, "scalearn", task, i), task)
               for i, task in enumerate(TASKS)}
    bank = bank_of("bert", modules)
    layer_sources = {}
    for entry in bank.entries.values():
        for part in [p for p in entry.parts if p.role == "pfeiffer"]:
            layer_sources.setdefault(part.site, set()).add(id(part.payload.sources))
    assert layer_sources and all(len(ids) == 1 for ids in layer_sources.values())
    assert_mixed_batch_equals_each_task_alone(bank, "bert", modules)


def test_a_combination_that_does_not_batch_is_served_task_by_task(tmp_path):
    """Cross-attention prefixes (their own softmax and query) are the fallback: grouped by task, still equal."""
    cross = PetlConfig(attn_mode="prefix", attn_option="cross_attn", attn_composition="gate_add", attn_bn=4, mid_dim=8)
    modules = {"cross-sst2": (save_task(tmp_path / "cross-sst2", "bert", cross, "sst2", 1), "sst2"),
               "cross-cb": (save_task(tmp_path / "cross-cb", "bert", cross, "cb", 2), "cb"),
               "lora-stsb": (save_task(tmp_path / "lora-stsb", "bert", "lora", "stsb", 3), "stsb"),
               "prefix-sst2": (save_task(tmp_path / "prefix-sst2", "bert", "prefix", "sst2", 4), "sst2")}
    bank = bank_of("bert", modules)
    assert bank.entries["cross-sst2"].grouped and not bank.entries["lora-stsb"].grouped
    assert_mixed_batch_equals_each_task_alone(bank, "bert", modules)


def test_tasks_are_added_and_removed_at_run_time(tmp_path):
    modules = {"a": (save_task(tmp_path / "a", "bert", "lora", "sst2", 1), "sst2"),
               "b": (save_task(tmp_path / "b", "bert", "pfeiffer", "cb", 2), "cb")}
    bank = bank_of("bert", modules)
    bank.remove("a")
    assert list(bank.tasks()) == ["b"]
    batch = {k: v for k, v in tiny_batch("bert", batch=2).items() if k != "labels"}
    with pytest.raises(UnknownTaskError, match="unknown task 'a'; loaded tasks: b"):
        bank.forward(batch, ["a", "b"])
    assert not any(isinstance(m, MixedLinear) and m.lowrank for m in bank.host.modules())  # a's LoRA is gone
    modules["c"] = (save_task(tmp_path / "c", "bert", "prefix", "stsb", 3), "stsb")
    bank.add(modules["c"][0], "c")
    bank.add(modules["a"][0], "a")
    assert sorted(bank.tasks()) == ["a", "b", "c"]
    assert_mixed_batch_equals_each_task_alone(bank, "bert", modules)
    for name in list(bank.tasks()):
        bank.remove(name)
    assert not any(isinstance(m, MixedLinear) for m in bank.host.modules())  # the backbone as it was


def test_shared_parts_are_held_once_and_masks_stay_bits(tmp_path):
    directory = save_task(tmp_path / "pro", "bert", "proadapter", "sst2", 1)
    bank = TaskBank(tiny_model("bert", num_labels=2, seed=0))
    bank.add(directory, "first")
    bank.add(directory, "second")  # the same prototype twice: one copy
    adapters = {name: [part.payload for part in bank.entries[name].parts if part.role == "pfeiffer"]
                for name in ("first", "second")}
    prototypes = [{id(adapter.source.prototype) for adapter in adapters[name]} for name in ("first", "second")]
    assert len(prototypes[0]) == 1 and prototypes[0] == prototypes[1]
    views = [m for name in adapters for adapter in adapters[name] for m in adapter.modules() if isinstance(m, MaskedView)]
    assert views and all(v.as_bits and all(bits.dtype == torch.uint8 for bits in v.frozen.values()) for v in views)


def test_modules_the_bank_cannot_serve_are_refused_and_leave_it_as_it_was(tmp_path):
    lora = save_task(tmp_path / "lora", "bert", "lora", "sst2", 1)
    bank = TaskBank(tiny_model("bert", num_labels=2, seed=0))
    bank.add(lora, "lora")
    with pytest.raises(ConfigError, match="already loaded"):
        bank.add(lora, "lora")
    full = get_petl_model(task_model("bert", "sst2"), "full")
    full.save(tmp_path / "full", task={"name": "sst2", "kind": "classification", "mode": "classify"})
    with pytest.raises(ConfigError, match="full fine-tuning"):
        bank.add(tmp_path / "full", "full")
    other = get_petl_model(tiny_model("bert", num_labels=2, seed=5), "lora")  # another checkpoint
    other.save(tmp_path / "other", task={"name": "sst2", "kind": "classification", "mode": "classify"})
    with pytest.raises(ModuleFormatError, match="fingerprint"):
        bank.add(tmp_path / "other", "other")
    with pytest.raises(ModuleFormatError):
        bank.add(tmp_path / "missing", "missing")
    assert list(bank.tasks()) == ["lora"]
    assert_mixed_batch_equals_each_task_alone(bank, "bert", {"lora": (lora, "sst2")})
