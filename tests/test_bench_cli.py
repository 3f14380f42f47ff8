"""`unipetl bench`: every requested preset and PEFT's twin measured against full fine-tuning, bad input refused."""

import json
import os

import pytest
import transformers as T

from test_training import run_cli, tiny_bert  # noqa: F401  (fixture)
from unipetl import PetlConfig, get_petl_model


def test_bench_measures_presets_with_peft_twins_and_reports_stored_bytes(tiny_bert, tmp_path, capsys):
    out = tmp_path / "bench"
    code = run_cli("bench", "--model", tiny_bert, "--methods", "lora", "pfeiffer", "--rounds", 1, "--steps", 1,
                   "--warmup", 1, "--batch-size", 2, "--seq-len", 16, "--output-dir", out)
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "bench.json").read_text())
    rows = {row["label"]: row for row in result["rows"]}
    # full first, transformers' plain full beside it, PEFT only where it has the method
    assert list(rows) == ["full", "full (plain transformers)", "lora", "peft lora", "pfeiffer"]
    assert rows["full (plain transformers)"]["trainable_params"] == rows["full"]["trainable_params"]
    assert rows["full (plain transformers)"]["stored_bytes"] is None
    for row in rows.values():
        assert "error" not in row, row
        assert row["step_ratio"] == pytest.approx(row["step_seconds"] / rows["full"]["step_seconds"])
        assert row["inference_ratio"] == pytest.approx(row["inference_seconds"] / rows["full"]["inference_seconds"])
    # stored bytes and parameter counts agree with an independent build of the same preset
    for name in ("lora", "pfeiffer"):
        base = T.AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        report = get_petl_model(base, PetlConfig.from_preset(name, train_pooler=False)).report()  # as bench builds it
        assert rows[name]["stored_bytes"] == report["stored_bytes"]
        assert rows[name]["trainable_params"] == report["trainable_params"] + report["head_params"]
    # PEFT's LoRA takes the preset's rank: the same adapter parameters (PEFT also trains the head)
    assert rows["peft lora"]["trainable_params"] == rows["lora"]["trainable_params"]
    markdown = (out / "bench.md").read_text()
    assert "| peft lora | peft |" in markdown and markdown in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--methods", "lora", "nope"], "unknown method(s) 'nope'"),
    (["--steps", "0"], "--steps=0 must be a positive integer"),
    (["--model", "/no/such/model"], "cannot load a model config"),
])
def test_bench_refuses_bad_input_before_measuring(args, message, tmp_path, capsys):
    out = tmp_path / "bench"
    assert run_cli("bench", *args, "--output-dir", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("site", ["attention", "ffn_output"])
def test_floor_model_trains_only_head_and_gate_and_carries_the_gradient_to_layer_zero(tiny_bert, site):
    import torch

    from unipetl.bench import floor_model

    torch.manual_seed(0)
    # float64, so that the central difference below is exact to many digits
    plain = T.AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).double().eval()
    model = floor_model(T.AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).double(), site).eval()
    model.classifier.load_state_dict(plain.classifier.state_dict())
    batch = {"input_ids": torch.randint(1000, 5000, (2, 12)), "labels": torch.tensor([0, 1])}
    loss = model(**batch).loss
    # the gate is 1: the same function (to rounding: its last FFN runs at [CLS] only)
    torch.testing.assert_close(model(**batch).logits, plain(**batch).logits, atol=1e-12, rtol=1e-12)
    loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {"floor_gate", "classifier.weight", "classifier.bias"}
    # d loss / d gate, against a central difference of the loss in the gate
    with torch.no_grad():
        eps = 2.0 ** -12  # exact in the gate's float32
        model.floor_gate.fill_(1 + eps)
        up = model(**batch).loss
        model.floor_gate.fill_(1 - eps)
        down = model(**batch).loss
    assert model.floor_gate.grad.item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5)
    assert model.floor_gate.grad.item() != 0


def test_paired_benchmark_reports_each_rows_ratio_to_every_reference(tiny_bert):
    from unipetl.bench import MethodSpec, measure_interleaved, paired_benchmark

    lora = MethodSpec("lora", "unipetl", "lora")
    references = [MethodSpec("full", "unipetl", "full"),
                  MethodSpec("full (torch dropout)", "unipetl", "full", fast_cpu_dropout=False)]
    seconds = measure_interleaved([lora, *references], tiny_bert, 2, 16, 2, 1)
    assert set(seconds) == {"lora", "full", "full (torch dropout)"} and all(v > 0 for v in seconds.values())
    logged = []
    result = paired_benchmark([lora], references, tiny_bert, batch_size=2, seq_len=16, steps=1, warmup=1, rounds=2,
                              log=logged.append)
    (row,) = result["rows"]
    assert result["references"] == ["full", "full (torch dropout)"] and len(logged) == 2
    for ref in result["references"]:
        ratio = row["ratios"][ref]
        assert len(ratio["per_round"]) == 2 and all(v > 0 for v in ratio["per_round"])
        assert ratio["median"] == pytest.approx(sum(ratio["per_round"]) / 2, abs=1e-4)  # two rounds: their mean


def test_step_flops_equal_a_closed_form_count_of_the_matrix_products(tiny_bert):
    from unipetl.bench import MethodSpec, step_flops

    config = T.AutoConfig.from_pretrained(tiny_bert)
    batch, length, d, ffn, labels = 2, 8, config.hidden_size, config.intermediate_size, 2
    tokens = batch * length
    attention_linears = 2 * tokens * 4 * d * d  # q, k, v and o
    ffn = 2 * 2 * d * ffn  # the two FFN linears, per position
    # The head reads the last layer at [CLS] only: there the FFN runs at one position per sequence.
    linears, last_linears = attention_linears + tokens * ffn, attention_linears + batch * ffn
    attention = 2 * (2 * batch * length * length * d)  # q k^T and probs v, all heads together
    pooler, classifier = 2 * batch * d * d, 2 * batch * d * labels
    layers = config.num_hidden_layers
    assert layers >= 2
    forward = (layers - 1) * (linears + attention) + last_linears + attention + pooler + classifier
    every_position = layers * (linears + attention) + pooler + classifier
    # Full fine-tuning: every product has both its input's and its weight's gradient, twice its forward.
    assert step_flops(MethodSpec("full", "unipetl", "full"), tiny_bert, batch, length) == 3 * forward
    assert step_flops(MethodSpec("plain", "plain", "full"), tiny_bert, batch, length) == 3 * every_position
    assert step_flops(MethodSpec("full", "unipetl", "full", first_position_only=False), tiny_bert, batch,
                      length) == 3 * every_position
    # Frozen backbone, trained head, a gate on layer 0's FFN output: the gradient crosses the layers above
    # layer 0 (inputs' gradients only, both operands of each attention product), the frozen pooler (input
    # only) and the classifier (both); no product in layer 0 has an operand that needs a gradient.
    backward = (layers - 2) * (linears + 2 * attention) + last_linears + 2 * attention + pooler + 2 * classifier
    assert step_flops(MethodSpec("floor", "floor", "ffn_output"), tiny_bert, batch, length) == forward + backward


def test_bench_without_peft_leaves_its_rows_out_with_a_note_and_succeeds(tiny_bert, tmp_path, monkeypatch, capsys):
    import sys

    # PEFT hidden here and in the worker processes: an install without the test extra.
    hidden = tmp_path / "hidden" / "peft"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'peft' (hidden by the test)\")\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setitem(sys.modules, "peft", None)
    out = tmp_path / "bench"
    code = run_cli("bench", "--model", tiny_bert, "--methods", "lora", "--rounds", 1, "--steps", 1, "--warmup", 0,
                   "--batch-size", 2, "--seq-len", 8, "--output-dir", out)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "bench.json").read_text())
    assert [row["label"] for row in result["rows"]] == ["full", "full (plain transformers)", "lora"]
    assert all("error" not in row for row in result["rows"])
    note = "PEFT is not installed: its rows are left out; pip install peft"
    assert result["notes"] == [note]
    assert note in (out / "bench.md").read_text() and note in captured.out


def test_bench_with_peft_installed_has_no_notes():
    from unipetl.bench import drop_unavailable, standard_specs

    specs = standard_specs(["lora"])
    assert drop_unavailable(specs) == (specs, [])
