"""How much of CoLA the head can read at the start of training: a logistic-regression probe on the
backbone's last-layer state at the position the head reads (the first: [CLS], or prompt tuning's first
prompt position), with each method attached but untrained (seed 42), against the bare backbone.

A method whose untrained module already hides what the frozen backbone knows starts its head from
nothing: on CoLA, where the signal is weak and 70 % of the sentences are class 1, such a head settles
on the majority class first. Adapters and LoRA start as the identity (their up-projections are zero),
so they match the bare backbone and are not listed. Two more rows ask what in `prefix` does it: the
same prefix with its keys and values zeroed, and a prefix of 30 positions.

    python benchmarks/probe_cola.py     # about a minute per method on one thread

The probe fits on the first 2,000 sentences of CoLA's training file and is scored (MCC x 100) on the
official dev set, the grid's test split; `benchmarks/results/diagnose_cola/probe.md`.
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import reproduce
import unipetl
from unipetl.bench import machine_description
from unipetl.forms import PrefixGenerator
from unipetl.tasks.loaders import load_split

OUT = reproduce.ROOT / "results" / "diagnose_cola" / "probe.md"
METHODS = ("none", "prefix", "mam", "mam_glue", "prompt_tuning", "proprefix")
# Is it what `prefix`'s 200 positions hold, or that there are 200 of them? The same prefix with its keys
# and values zeroed (each position then adds nothing but takes its share of attention), and 30 positions.
PREFIX_ROWS = {"prefix, keys and values zero": ({}, True), "prefix l=30": ({"attn_bn": 30}, False)}
TRAIN_SENTENCES = 2000


def sentences(split: str, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    examples = load_split("cola", split, reproduce.GLUE)[:limit]
    return [example.texts[0] for example in examples], np.array([example.label for example in examples])


@torch.no_grad()
def head_inputs(model, tokenizer, texts: list[str]) -> np.ndarray:
    """The last layer's state at the first position, the one BERT's pooler reads."""
    states = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
        states.append(model(**batch, output_hidden_states=True).hidden_states[-1][:, 0])
    return torch.cat(states).numpy()


def main() -> None:
    torch.set_num_threads(1)
    path = unipetl.defaults.default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_x, train_y = sentences("train", TRAIN_SENTENCES)
    test_x, test_y = sentences("validation")
    lines = []
    for method in METHODS + tuple(PREFIX_ROWS):
        torch.manual_seed(42)
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        if method == "none":
            model = base.eval()
        elif method in PREFIX_ROWS:
            overrides, zeroed = PREFIX_ROWS[method]
            model = unipetl.get_petl_model(base, unipetl.PetlConfig.from_preset("prefix", **overrides)).eval()
            if zeroed:
                with torch.no_grad():
                    for generator in (m for m in model.modules() if isinstance(m, PrefixGenerator)):
                        generator.mlp_out.weight.zero_()
                        generator.mlp_out.bias.zero_()
        else:
            model = unipetl.get_petl_model(base, method).eval()
        train_states, test_states = head_inputs(model, tokenizer, train_x), head_inputs(model, tokenizer, test_x)
        cells = []
        for weight in (None, "balanced"):
            probe = LogisticRegression(max_iter=2000, class_weight=weight).fit(train_states, train_y)
            cells.append(f"{100 * matthews_corrcoef(test_y, probe.predict(test_states)):.2f}")
        spread = test_states.std(0).mean() / np.abs(test_states).mean()
        lines.append(f"| {method} | {' | '.join(cells)} | {spread:.3f} |")
        print(lines[-1], flush=True)
    tokens = np.mean([len(ids) for ids in tokenizer(test_x)["input_ids"]])
    text = "\n".join([
        "Command: `python benchmarks/probe_cola.py`", "",
        f"Machine: {machine_description()}. Backbone: the embedded MiniLM; methods attached untrained (seed 42).  ",
        f"Probe: logistic regression on the last layer's first-position state, fit on the first {TRAIN_SENTENCES:,} "
        "CoLA training sentences, MCC x 100 on the official dev set (1,043 sentences). Spread: the mean over "
        "features of their standard deviation across dev sentences, over the mean absolute value. The dev "
        f"sentences are {tokens:.1f} tokens long on average, [CLS] and [SEP] included; {100 * test_y.mean():.1f} % "
        "of them are class 1 (acceptable).", "",
        "| method | probe MCC | probe MCC, balanced classes | spread |", "|---|---:|---:|---:|", *lines]) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
