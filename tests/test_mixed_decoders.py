"""Mixed-task batches on a decoder (issues 22 and 23): classification modules of a tiny Llama, scored by label
words, served together by one TaskBank; each row's answer equals its task's own model alone."""

import pytest
import torch
import transformers as T

import unipetl
from tiny_models import save_tiny_llama
from unipetl import PetlConfig
from unipetl.backbone import Backbone
from unipetl.defaults import default_model_path
from unipetl.errors import ConfigError
from unipetl.predict import predict_examples
from unipetl.serving import TaskBank
from unipetl.tasks import Example, get_task

PRESETS = {"lora": {}, "pfeiffer": {}, "prefix": dict(attn_bn=5, mid_dim=12), "prompt_tuning": dict(attn_bn=4),
           "proadapter": {}, "prolora": {}, "diffprune": {}, "mam": dict(attn_bn=4, ffn_bn=16, mid_dim=12)}
TEXTS = ["a fine film", "dull and far too long", "it works", "the plot is a mess , the cast is not", "yes", "meh"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def folder(tmp_path_factory, request):
    """A saved tiny decoder: Llama (grouped-query attention, RMS norms) or GPT-2 (Conv1D, fused q/k/v)."""
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    return save_tiny_llama(tmp_path_factory.mktemp(f"tiny-{request.param}"), tokenizer, family=request.param)


def load(folder):
    return T.AutoModelForCausalLM.from_pretrained(folder).eval()


def save_module(directory, folder, preset: str, seed: int, scale: float, task: dict):
    """A trained-looking module of ``preset`` (non-zero everywhere; diffs projected, masks frozen), saved."""
    petl = unipetl.get_petl_model(load(folder), PetlConfig.from_preset(preset, **PRESETS.get(preset, {})))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in petl.methods.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    if preset == "diffprune":
        petl.project()
    if preset in ("proadapter", "prolora"):
        petl.freeze_masks()
    petl.save(directory, task={"mode": "causal_lm", "max_length": 48, "model": str(folder), **task})
    return directory


def save_task(directory, folder, preset: str, task: str, seed: int):
    return save_module(directory, folder, preset, seed, 0.3, {"name": task, "kind": "classification"})


def alone(folder, directory, task: str, text: str) -> dict:
    """The task's own model on one input, through the single-module prediction path."""
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    model = unipetl.load_petl_model(load(folder), directory).eval()
    spec = get_task(task)
    return predict_examples(model, Backbone(model, tokenizer, str(folder), "causal_lm"), spec, [Example((text,), 0)], 48)[0]


def test_a_batch_mixing_decoder_methods_and_tasks_equals_each_task_alone(folder, tmp_path):
    modules = {f"{preset}-{task}": save_task(tmp_path / f"{preset}-{task}", folder, preset, task, seed)
               for seed, (preset, task) in enumerate([(p, "sst2") for p in PRESETS] + [("lora", "rte"), ("prefix", "rte")])}
    bank = TaskBank(str(folder))
    for name, directory in modules.items():
        bank.add(directory, name)
    names = list(modules)
    records = []
    for i, name in enumerate(names * 2):
        task = "rte" if name.endswith("rte") else "sst2"
        text = TEXTS[i % len(TEXTS)]
        records.append({"task": name, **({"text": text} if task == "sst2" else {"sentence1": text, "sentence2": "it is"})})
    outputs = bank.predict(records)
    for record, output in zip(records, outputs):
        name = record["task"]
        task = "rte" if name.endswith("rte") else "sst2"
        example_text = record.get("text") or record["sentence1"]
        if task == "rte":
            expected = alone_pair(folder, modules[name], example_text, "it is")
        else:
            expected = alone(folder, modules[name], task, example_text)
        assert output["prediction"] == expected["prediction"], name
        for label, p in expected["probabilities"].items():
            assert output["probabilities"][label] == pytest.approx(p, abs=1e-5), name


def alone_pair(folder, directory, first: str, second: str) -> dict:
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    model = unipetl.load_petl_model(load(folder), directory).eval()
    return predict_examples(model, Backbone(model, tokenizer, str(folder), "causal_lm"), get_task("rte"),
                            [Example((first, second), 0)], 48)[0]


def test_a_decoder_bank_refuses_an_encoder_module_and_stays_as_it_was(folder, tmp_path):
    from tiny_models import tiny_model

    bank = TaskBank(str(folder))
    bank.add(save_task(tmp_path / "lora", folder, "lora", "sst2", 0), "lora")
    encoder = unipetl.get_petl_model(tiny_model("bert", num_labels=2), "lora")
    encoder.save(tmp_path / "encoder", task={"name": "sst2", "kind": "classification", "mode": "classify"})
    with pytest.raises(ConfigError, match="this bank's backbone is a (LlamaForCausalLM|GPT2LMHeadModel)"):
        bank.add(tmp_path / "encoder", "encoder")
    assert list(bank.tasks()) == ["lora"]
    assert bank.predict([{"task": "lora", "text": "fine"}])[0]["prediction"] in ("negative", "positive")


GENERATING = ("lora", "pfeiffer", "prefix", "prompt_tuning", "proadapter", "prolora", "diffprune", "mam")
PROMPTS = ["Name the word after cat", "Say something", "Continue: the sun is", "Repeat: red blue"]


def save_instruction_task(directory, folder, preset: str, seed: int):
    return save_module(directory, folder, preset, seed, 0.5, {"name": "instruction", "kind": "instruction",
                                                              "max_new_tokens": 6})


def generated_alone(folder, directory, prompt: str) -> str:
    from unipetl.taskio.instruction import InstructionIO
    from unipetl.tasks.instructions import InstructionExample

    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    model = unipetl.load_petl_model(load(folder), directory).eval()
    io = InstructionIO(max_new_tokens=6)
    example = InstructionExample(({"role": "user", "content": prompt},), "")
    return io.predict(model, Backbone(model, tokenizer, str(folder), "causal_lm"), [example], 48)[0]["prediction"]


def test_generation_in_a_batch_mixing_decoder_methods_equals_each_task_alone(folder, tmp_path):
    modules = {preset: save_instruction_task(tmp_path / preset, folder, preset, seed)
               for seed, preset in enumerate(GENERATING)}
    bank = TaskBank(str(folder))
    for name, directory in modules.items():
        bank.add(directory, name)
    bank.add(save_task(tmp_path / "classify", folder, "lora", "sst2", 9), "classify")  # label words beside
    records = [{"task": name, "prompt": PROMPTS[i % len(PROMPTS)]} for i, name in enumerate(list(modules) * 2)]
    records.insert(3, {"task": "classify", "text": "a fine film"})
    outputs = bank.predict(records)
    assert outputs[3]["prediction"] in ("negative", "positive")
    texts = set()
    for record, output in zip(records, outputs):
        if record["task"] == "classify":
            continue
        assert output["prediction"] == generated_alone(folder, modules[record["task"]], record["prompt"]), record
        texts.add(output["prediction"])
    assert len(texts) > 3  # the tasks write different things: the rows did not share one task's parts
