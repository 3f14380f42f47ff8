"""The contract every method keeps on every backbone family: one table, one set of checks.

`ROWS` has one row per (family, method): every preset of `unipetl.list_presets()`, the extra design point
`ffn_lora` (LoRA on the FFN linears, while no preset has it) and the transfer methods (built over two saved
`pfeiffer` sources of the same backbone), on every family of `tiny_models.CONTRACT_FAMILIES`. A combination
the library refuses by design is a row too, with the error it must raise (`REFUSED`). `CLAIMS` holds what
each method claims, as data. Every other row is checked for:

  a. one optimizer step changes only the method's parameters and the head's (for `full`, the backbone is
     the method), every other backbone tensor stays bit-identical;
  b. save, then load onto a fresh backbone: the same logits, and report()["stored_bytes"] is what save wrote;
  c. unload() gives back the model bit-exactly (every parameter and buffer, the head's too unless
     UNLOAD_RESTORES_HEAD says otherwise; module types, hooks, attributes), at initialisation and after a
     training step (for `full` too);
  d. merge() keeps the output; a method that claims to merge leaves a plain backbone holding its change,
     any other either refuses (ConfigError) or keeps its change active;
  e. where claimed, the output at initialisation is the plain backbone's;
  f. a saved module is refused (ModuleFormatError) on another checkpoint of the same architecture.

Case count: N_CASES, or `python -m pytest --collect-only -q tests/test_contract.py | tail -1`.
"""

import pytest
import torch

import unipetl
from tiny_models import CONTRACT_FAMILIES, SMALL_PRESET_SIZES as SMALL, logits, tiny_batch, tiny_model
from unipetl import PetlConfig
from unipetl.errors import ConfigError, ModuleFormatError
from unipetl.presets import TRANSFER_PRESETS
from unipetl.transfer import get_transfer_model

# ----------------------------------------------------------------------------------------------- the table
TRANSFER = TRANSFER_PRESETS  # stage-2 presets: built over saved source modules
PRESETS = unipetl.list_presets()  # the presets that attach to a backbone alone
EXTRA = {"ffn_lora": dict(ffn_mode="lora", ffn_bn=4)}  # design points without a preset (yet): PetlConfig fields
EXTRA = {name: fields for name, fields in EXTRA.items() if name not in PRESETS}  # a preset of the name takes over
METHODS = PRESETS + list(EXTRA) + list(TRANSFER)

# What each method claims. merges: merge() folds the change into the backbone's weights (after `prepare`:
# diff pruning merges its projected sparse diff, ProLoRA its frozen masks). identity_at_init: the change is
# exactly zero at initialisation (LoRA and lora-init adapters: zero up-projection; BitFit: zero bias delta;
# diff pruning: zero diff; full: nothing attached), so the output is the plain backbone's.
NO_CLAIMS = dict(merges=False, identity_at_init=False, prepare=None)
CLAIMS = {
    "houlsby": NO_CLAIMS,
    "pfeiffer": NO_CLAIMS,
    "parallel": dict(NO_CLAIMS, identity_at_init=True),
    "scaled_parallel": dict(NO_CLAIMS, identity_at_init=True),
    "lora": dict(NO_CLAIMS, merges=True, identity_at_init=True),
    "prefix": NO_CLAIMS,
    "prefix_glue": NO_CLAIMS,
    "prompt_tuning": NO_CLAIMS,
    "bitfit": dict(NO_CLAIMS, merges=True, identity_at_init=True),
    "mam": NO_CLAIMS,
    "mam_glue": NO_CLAIMS,
    "proadapter": NO_CLAIMS,
    "prolora": dict(merges=True, identity_at_init=True, prepare="freeze_masks"),
    "proprefix": NO_CLAIMS,
    "diffprune": dict(merges=True, identity_at_init=True, prepare="project"),
    "diffprune_short": dict(merges=True, identity_at_init=True, prepare="project"),
    "full": dict(NO_CLAIMS, merges=True, identity_at_init=True),
    "ffn_lora": dict(NO_CLAIMS, merges=True, identity_at_init=True),
    **{name: NO_CLAIMS for name in TRANSFER},  # omega ~ N(2/N, 0.001); fusion's V = I + 1e-6: not exact
}

# T5's, Llama's, Mistral's and Qwen3's linears and RMS norms have no bias: nothing for BitFit to train (Qwen2 has q, k, v biases).
NO_BIASES = ("t5", "mt5", "t5v11", "llama", "mistral", "qwen3")
REFUSED = {(family, "bitfit"): ConfigError for family in NO_BIASES}

ROWS = [(family, method, REFUSED.get((family, method))) for family in CONTRACT_FAMILIES for method in METHODS]
REFUSALS = [pytest.param(f, m, error, id=f"{f}-{m}") for f, m, error in ROWS if error is not None]
LIVE = [pytest.param(f, m, id=f"{f}-{m}") for f, m, error in ROWS if error is None]
IDENTITY = [pytest.param(f, m, id=f"{f}-{m}") for f, m, error in ROWS
            if error is None and CLAIMS.get(m, NO_CLAIMS)["identity_at_init"]]

# unload() gives back the backbone as it was given; the head (the task's, written by save()) keeps its
# trained values. The backbone is checked whatever this says.
UNLOAD_RESTORES_HEAD = False  # the head is the task's: unload() gives the backbone back, the trained head stays

N_TABLE_CHECKS = 5  # a, b, c, d, f run on every live row; e on the rows in IDENTITY
N_OTHER_TESTS = 5  # the table's own two checks and the three save tests at the end
N_CASES = len(REFUSALS) + N_TABLE_CHECKS * len(LIVE) + len(IDENTITY) + N_OTHER_TESTS  # 1061 with 16 presets


def claims(method):
    return CLAIMS.get(method, NO_CLAIMS)


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (3x here on 2 busy cores); the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """``sources(family)``: two saved `pfeiffer` modules on the family's tiny backbone, with non-zero weights
    (made once per family, on first use)."""
    made = {}

    def for_family(family):
        if family not in made:
            root = tmp_path_factory.mktemp(f"sources-{family}")
            for i in range(2):
                petl = unipetl.get_petl_model(tiny_model(family), PetlConfig.from_preset("pfeiffer"))
                generator = torch.Generator().manual_seed(100 + i)
                with torch.no_grad():  # a trained-looking adapter: non-zero everywhere
                    for param in petl.methods.parameters():
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
                petl.save(root / f"source{i}", task={"name": f"source{i}"})
            made[family] = [root / f"source{i}" for i in range(2)]
        return made[family]

    return for_family


def build(family, method, sources, model=None):
    model = tiny_model(family) if model is None else model
    if method in TRANSFER:
        return get_transfer_model(model, sources(family), method)
    config = PetlConfig(**EXTRA[method]) if method in EXTRA else PetlConfig.from_preset(method, **SMALL.get(method, {}))
    return unipetl.get_petl_model(model, config)


def load(family, method, sources, directory, model=None):
    model = tiny_model(family) if model is None else model
    return unipetl.load_petl_model(model, directory, sources=sources(family) if method in TRANSFER else None)


def train_one_step(petl, family, lr=1e-2):
    petl.train()
    optimizer = torch.optim.AdamW([p for p in petl.parameters() if p.requires_grad], lr=lr)
    loss = petl(**tiny_batch(family)).loss
    extra = petl.extra_loss()
    (loss if extra is None else loss + extra).backward()
    optimizer.step()
    petl.eval()


def directory_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def hook_count(module):
    return len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)


def head_names(model):
    """The task head: parameters outside `model.base_model` and not tied to it (none for T5, whose base is itself)."""
    base = model.base_model
    inside = {id(p) for p in base.parameters()} if base is not model else {id(p) for p in model.parameters()}
    return {n for n, p in model.named_parameters() if id(p) not in inside}


def snapshot(model):
    """Everything unload() must give back: tensors (values and requires_grad), module types, hooks, the
    attributes set on each module, the attention implementation."""
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modules": {n: (type(m), hook_count(m), sorted(vars(m))) for n, m in model.named_modules()},
        "attention": model.config._attn_implementation,
        "head": head_names(model),
    }


def assert_backbone_restored(model, before, when):
    after = snapshot(model)
    problems = []
    for kind in ("params", "buffers", "modules"):
        missing, extra = sorted(set(before[kind]) - set(after[kind])), sorted(set(after[kind]) - set(before[kind]))
        if missing or extra:
            problems.append(f"{kind} missing {missing[:3]}, unexpected {extra[:3]}")
    changed = [n for n in before["params"] if n in after["params"] and not (
        torch.equal(before["params"][n][0], after["params"][n][0]) and before["params"][n][1] == after["params"][n][1])]
    changed += [n for n in before["buffers"] if n in after["buffers"] and not torch.equal(before["buffers"][n],
                                                                                          after["buffers"][n])]
    head = [n for n in changed if n in before["head"]]
    changed = [n for n in changed if n not in before["head"]]
    if changed:
        problems.append(f"{len(changed)} backbone tensors differ, e.g. {changed[:3]}")
    if head and UNLOAD_RESTORES_HEAD:
        problems.append(f"head tensors differ: {head[:3]}")
    modules = [f"{n}: {before['modules'][n]} -> {after['modules'][n]}" for n in before["modules"]
               if n in after["modules"] and before["modules"][n] != after["modules"][n]]
    if modules:
        problems.append(f"{len(modules)} modules differ in type, hooks or attributes, e.g. {modules[:2]}")
    if before["attention"] != after["attention"]:
        problems.append(f"attention implementation {before['attention']!r} -> {after['attention']!r}")
    assert not problems, f"{when}: the model is not as it was: " + "; ".join(problems)


# ------------------------------------------------------------------------------------------- the checks
def test_the_table_covers_every_method_and_model_type():
    assert sorted(set(METHODS) - set(CLAIMS)) == [], "every method needs its claims in CLAIMS"
    assert len(ROWS) == len(CONTRACT_FAMILIES) * len(METHODS)
    covered = {tiny_model(family).config.model_type for family in CONTRACT_FAMILIES}
    assert set(unipetl.supported_model_types()) <= covered, "a claimed model type has no tiny family in the contract"


def test_n_cases_is_what_this_file_collects():
    count = 0
    for name, function in globals().items():
        if name.startswith("test_") and callable(function):
            cases = 1
            for mark in getattr(function, "pytestmark", []):
                if mark.name == "parametrize":
                    cases *= len(mark.args[1])
            count += cases
    assert count == N_CASES


@pytest.mark.parametrize("family,method,error", REFUSALS)
def test_refused_by_design(family, method, error, sources):
    model = tiny_model(family)
    logits(model, tiny_batch(family))
    before = snapshot(model)
    with pytest.raises(error):
        build(family, method, sources, model)
    assert_backbone_restored(model, before, "after a refused build")


@pytest.mark.parametrize("family,method", LIVE)
def test_a_one_step_changes_only_the_method_and_the_head(family, method, sources):
    model = tiny_model(family)
    backbone = [(n, p, p.detach().clone()) for n, p in model.named_parameters()]  # the backbone's own tensors
    buffers = [(n, b, b.detach().clone()) for n, b in model.named_buffers()]
    petl = build(family, method, sources, model)
    head = {id(p): (n, p.detach().clone()) for n, p in petl.head_parameters().items()}
    method_params = [(n, p, p.detach().clone()) for n, p in petl.methods.named_parameters()]
    method_buffers = [(n, b, b.detach().clone()) for n, b in petl.methods.named_buffers()]
    train_one_step(petl, family)

    unchanged_head = [n for n, before in head.values() if torch.equal(petl.head_parameters()[n], before)]
    assert not unchanged_head, f"head parameters not trained: {unchanged_head}"
    backbone = [(n, p, before) for n, p, before in backbone if id(p) not in head]
    changed = [n for n, p, before in backbone if not torch.equal(p, before)]
    if method == "full":  # the backbone is the method
        assert changed, "full fine-tuning left the backbone unchanged"
    else:
        assert not changed, f"backbone tensors changed: {changed[:5]}"
        assert any(not torch.equal(p, before) for _, p, before in method_params), "no method parameter changed"
    changed = [n for n, b, before in buffers + method_buffers if not torch.equal(b, before)]
    assert not changed, f"buffers changed by a training step: {changed[:5]}"


@pytest.mark.parametrize("family,method", LIVE)
def test_b_save_load_round_trip_and_byte_exact_accounting(family, method, sources, tmp_path):
    petl = build(family, method, sources)
    train_one_step(petl, family)
    batch = tiny_batch(family)
    expected = logits(petl, batch)
    petl.save(tmp_path / "module")
    stored = petl.report()["stored_bytes"]
    assert directory_bytes(tmp_path / "module") == stored
    loaded = load(family, method, sources, tmp_path / "module").eval()
    torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-6, rtol=1e-6)
    assert loaded.report()["stored_bytes"] == stored


@pytest.mark.parametrize("family,method", LIVE)
def test_c_unload_restores_the_backbone(family, method, sources):
    model = tiny_model(family)
    batch = tiny_batch(family)
    reference = logits(model, batch)
    before = snapshot(model)
    petl = build(family, method, sources, model)
    assert petl.unload() is model
    assert_backbone_restored(model, before, "unload at initialisation")
    assert torch.equal(logits(model, batch), reference)

    petl = build(family, method, sources, model)  # the restored backbone takes a method again
    train_one_step(petl, family)
    assert petl.unload() is model
    assert_backbone_restored(model, before, "unload after a training step")
    if not UNLOAD_RESTORES_HEAD:  # the trained head stays: put the initial one back to compare the backbone's output
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in before["head"]:
                params[name].copy_(before["params"][name][0])
    assert torch.equal(logits(model, batch), reference)


@pytest.mark.parametrize("family,method", LIVE)
def test_d_merge_keeps_the_output(family, method, sources):
    claim = claims(method)
    model = tiny_model(family)
    batch = tiny_batch(family)
    logits(model, batch)
    plain = snapshot(model)["modules"]
    petl = build(family, method, sources, model)
    train_one_step(petl, family)  # a non-zero change to merge
    if claim["prepare"]:
        getattr(petl, claim["prepare"])()
    unmerged = logits(petl, batch)
    if claim["merges"]:
        petl.merge()
        torch.testing.assert_close(logits(petl, batch), unmerged, atol=1e-5, rtol=1e-5)
        trained_pooler = {n: p.detach().clone() for n, p in petl.head_parameters().items() if n in petl.pooler_names}
        backbone = petl.unload()  # merged weights stay merged: the change now lives in the plain backbone
        with torch.no_grad():  # unload() gives the backbone's own pooler back; a trained one is the task head's
            params = dict(backbone.named_parameters())
            for name, value in trained_pooler.items():
                params[name].copy_(value)
        differ = [n for n, m in backbone.named_modules() if plain.get(n, (None,))[:2] != (type(m), hook_count(m))]
        assert not differ and set(plain) == {n for n, _ in backbone.named_modules()}, \
            f"after merge and unload, modules are not the backbone's own: {differ[:3]}"
        torch.testing.assert_close(logits(backbone, batch), unmerged, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"the merged change is not in the backbone's weights: {m}")
    else:  # refusing is fine; silently dropping the change is not
        try:
            petl.merge()
        except ConfigError:
            pass
        torch.testing.assert_close(logits(petl, batch), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,method", IDENTITY)
def test_e_output_is_the_backbones_at_initialisation(family, method, sources):
    model = tiny_model(family)
    batch = tiny_batch(family)
    reference = logits(model, batch)
    petl = build(family, method, sources, model)
    torch.testing.assert_close(logits(petl, batch), reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family,method", LIVE)
def test_f_a_module_is_refused_on_another_checkpoint(family, method, sources, tmp_path):
    build(family, method, sources).save(tmp_path / "module")
    other = tiny_model(family, seed=1)
    logits(other, tiny_batch(family))
    before = snapshot(other)
    with pytest.raises(ModuleFormatError, match="another backbone checkpoint"):
        load(family, method, sources, tmp_path / "module", model=other)
    assert_backbone_restored(other, before, "after a refused load")


# ---------------------------------------------------------------------------------- saving, one family
def test_saving_again_replaces_the_module_atomically(tmp_path):
    petl = build("bert", "lora", None)
    petl.save(tmp_path / "m")
    train_one_step(petl, "bert")
    petl.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or backup directory left
    loaded = unipetl.load_petl_model(tiny_model("bert"), tmp_path / "m").eval()
    torch.testing.assert_close(logits(loaded, tiny_batch("bert")), logits(petl, tiny_batch("bert")))


def test_save_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(ModuleFormatError, match="not a module written by unipetl"):
        build("bert", "lora", None).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_save_after_merge_is_refused(tmp_path):
    petl = build("bert", "lora", None).merge()
    with pytest.raises(ModuleFormatError, match="before merge"):
        petl.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
