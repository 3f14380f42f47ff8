"""SST-2 on a real decoder (issue 23): SmolLM2-135M-Instruct zero-shot against five methods trained on a short
CPU budget, the bytes each stores, and the training step time of unipetl's LoRA against PEFT's.

- zero-shot: the plain instruct model, SST-2 as an instruction ("sentence: ... Answer with one of:
  negative, positive.") in its chat template, classified by the label words' first-token scores
  (unipetl/label_words.py) on the official dev set (872 sentences);
- methods (lora, prolora, pfeiffer, prefix, diffprune_short): `unipetl train` on a seeded subset of
  --train-samples training sentences, --epochs, their presets' default rates (diffprune_short: diff
  pruning's short-budget rates), scored the same way on the dev set;
- step time: one process, the same batches, unipetl's `lora` preset against PEFT's LoRA of the same
  rank, alpha and targets (q_proj, v_proj), --step-repeats interleaved steps each; median ratio.

Each finished run is kept in --workdir (a run folder with results.json) and skipped when the command is
run again, so an interrupted run resumes; the table is rewritten after every step.

    python benchmarks/decoder_sst2.py [--train-samples 1000] [--epochs 1] [--workdir /tmp/unipetl_decoder_sst2]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from unipetl import PetlConfig, get_petl_model
from unipetl.backbone import load_backbone
from unipetl.bench import machine_description
from unipetl.options import TrainOptions
from unipetl.predict import predict_examples
from unipetl.tasks import get_task, make_splits
from unipetl.training import train_task

MODEL = "smollm2-135m"
METHODS = ("lora", "prolora", "pfeiffer", "prefix", "diffprune_short")
DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")


def zero_shot(args, log) -> dict:
    spec = get_task("sst2")
    test = make_splits(spec, args.data_dir, "dev_as_test", args.seed)["test"]
    backbone = load_backbone(MODEL, spec)
    start = time.perf_counter()
    with torch.no_grad():
        predictions = predict_examples(backbone.model.eval(), backbone, spec, test, args.max_length, batch_size=32)
    correct = sum(p["prediction"] == spec.label_names[int(ex.label)] for p, ex in zip(predictions, test))
    positive = sum(p["prediction"] == "positive" for p in predictions)
    row = {"method": "zero-shot", "accuracy": 100 * correct / len(test), "positive_share": positive / len(test),
           "stored_bytes": 0, "train_seconds": 0.0, "eval_seconds": time.perf_counter() - start}
    log(json.dumps(row))
    return row


def trained(method: str, args, log) -> dict:
    out = Path(args.workdir) / method
    if not (out / "results.json").exists():
        options = TrainOptions(epochs=args.epochs, max_train_samples=args.train_samples, max_length=args.max_length,
                               batch_size=16, eval_batch_size=32, seed=args.seed, progress=False, logging_steps=10)
        train_task("sst2", method, MODEL, args.data_dir, str(out), options, overwrite=True, log=log)
    results = json.loads((out / "results.json").read_text())
    return {"method": method, "accuracy": 100 * results["metrics"]["accuracy"], "stored_bytes": results["stored_bytes"],
            "trainable_params": results["trainable_params"], "learning_rate": results["learning_rate"],
            "train_seconds": results["train_seconds"], "collapse": results.get("collapse")}


def step_time_ratio(args, log) -> dict:
    """Median seconds per training step of unipetl's lora and PEFT's LoRA, interleaved in one process."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from unipetl.defaults import resolve_model

    path = resolve_model(MODEL)
    preset = PetlConfig.from_preset("lora")
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(100, 40000, (16, 64), generator=generator)

    def setup(wrap):
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
        wrapped = wrap(model).train()
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = wrapped(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    ours = setup(lambda model: get_petl_model(model, preset))
    theirs = setup(lambda model: get_peft_model(model, LoraConfig(
        r=preset.attn_bn, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
        target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")))
    times = {"unipetl": [], "peft": []}
    for repeat in range(args.step_repeats + 1):  # the first round warms up
        for name, step in (("unipetl", ours), ("peft", theirs)):
            start = time.perf_counter()
            step()
            if repeat:
                times[name].append(time.perf_counter() - start)
    row = {"unipetl_step_seconds": statistics.median(times["unipetl"]), "peft_step_seconds": statistics.median(times["peft"]),
           "batch": list(batch.shape), "repeats": args.step_repeats}
    row["peft_over_unipetl"] = row["peft_step_seconds"] / row["unipetl_step_seconds"]
    log(json.dumps(row))
    return row


def write(result: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}  ",
             f"SmolLM2-135M-Instruct (Llama architecture, 134.5 M parameters, fp32), SST-2 as a chat instruction answered "
             f"by a label word, scored by the label words' first tokens on the official dev set (872); training on "
             f"{result['settings']['train_samples']} seeded training sentences, {result['settings']['epochs']} epoch(s), "
             f"max length {result['settings']['max_length']}, seed {result['settings']['seed']}.", "",
             "| method | dev accuracy | stored bytes per task | trainable parameters | learning rate | train (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['accuracy']:.2f} | {r['stored_bytes']:,} | {r.get('trainable_params', 0):,} | "
                     f"{r.get('learning_rate', '-')} | {r['train_seconds']:.0f} |")
    step = result.get("step_time")
    if step:
        lines += ["", f"Training step (batch {step['batch'][0]} x {step['batch'][1]} tokens, median of {step['repeats']} "
                      f"interleaved steps): unipetl LoRA {step['unipetl_step_seconds']:.2f} s, PEFT LoRA "
                      f"{step['peft_step_seconds']:.2f} s; PEFT / unipetl = {step['peft_over_unipetl']:.2f}."]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=DATA)
    parser.add_argument("--workdir", default="/tmp/unipetl_decoder_sst2")
    parser.add_argument("--output", default="benchmarks/results/decoder_sst2_cpu")
    args = parser.parse_args()
    output = Path(args.output)
    result = {"command": " ".join(["python benchmarks/decoder_sst2.py", *sys.argv[1:]]), "machine": machine_description(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output", "data_dir")}, "rows": []}
    previous = json.loads(output.with_suffix(".json").read_text()) if output.with_suffix(".json").exists() else {}
    log = lambda message: print(message, flush=True)  # noqa: E731
    zero = next((r for r in previous.get("rows", []) if r["method"] == "zero-shot"), None) \
        if previous.get("settings") == result["settings"] else None
    result["rows"].append(zero or zero_shot(args, log))
    write(result, output)
    for method in args.methods:
        result["rows"].append(trained(method, args, log))
        write(result, output)
    result["step_time"] = (previous.get("step_time") if previous.get("settings") == result["settings"] else None) \
        or step_time_ratio(args, log)
    write(result, output)


if __name__ == "__main__":
    main()
