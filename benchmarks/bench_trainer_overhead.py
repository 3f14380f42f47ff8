"""Overhead of `unipetl train` over a plain transformers Trainer on the same PEFT-equivalent LoRA.

Both runs: MiniLM, LoRA r=8 (alpha 16, no dropout) on query/value, SST-2 from the local GLUE copy
(the same seeded training subset and the official dev set for the per-epoch evaluation), batch 16,
sequence length 64, linear schedule. Each run is a fresh process (peak RSS is per run); the two
alternate for several rounds and the medians are compared.

    python benchmarks/bench_trainer_overhead.py [--rounds 3] [--train-samples 800] [--epochs 1]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def run_unipetl(train_samples, epochs, out):
    from unipetl.training import TrainOptions, train_task

    options = TrainOptions(epochs=epochs, max_train_samples=train_samples, max_length=64, batch_size=16,
                           learning_rate=1e-3, progress=False, logging_steps=10_000)
    results = train_task("sst2", "lora", None, str(GLUE), out, options,
                         overrides={"attn_bn": 8, "lora_alpha": 16.0, "lora_dropout": 0.0}, log=lambda m: None)
    return results["train_examples"] * epochs / results["train_seconds"]


def run_plain(train_samples, epochs, out):
    """The reference: PEFT LoRA and a plain Trainer, written as a user of both libraries would."""
    import numpy as np
    import peft
    import time
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    from unipetl.defaults import default_model_path
    from unipetl.tasks import make_splits

    logging.set_verbosity_error()
    splits = make_splits("sst2", str(GLUE), max_train_samples=train_samples)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())

    def encode(examples):
        enc = tokenizer([e.texts[0] for e in examples], truncation=True, max_length=64)
        return [{**{k: enc[k][i] for k in enc}, "labels": e.label} for i, e in enumerate(examples)]

    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                                                       target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, learning_rate=1e-3, per_device_train_batch_size=16,
                             per_device_eval_batch_size=64, warmup_steps=0.06, eval_strategy="epoch", save_strategy="epoch",
                             seed=42, report_to=[], disable_tqdm=True, logging_steps=10_000, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=encode(splits["train"]), eval_dataset=encode(splits["validation"]),
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return len(splits["train"]) * epochs / seconds


def worker(kind, train_samples, epochs):
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_unipetl if kind == "unipetl" else run_plain
        throughput = fn(train_samples, epochs, str(Path(tmp) / "run"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT" + json.dumps({"kind": kind, "examples_per_second": throughput, "peak_rss_mb": peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=800)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--output", default="benchmarks/results/trainer_overhead_cpu")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.train_samples, args.epochs)
    from unipetl.bench import machine_description

    runs = {"unipetl": [], "plain": []}
    for r in range(args.rounds):
        for kind in ("plain", "unipetl") if r % 2 == 0 else ("unipetl", "plain"):
            proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--train-samples", str(args.train_samples),
                                   "--epochs", str(args.epochs)], capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT")), None)
            if line is None:
                sys.exit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
            runs[kind].append(json.loads(line[6:]))
            print(f"round {r + 1} {kind}: {runs[kind][-1]}", flush=True)
    summary = {k: {"examples_per_second": statistics.median(x["examples_per_second"] for x in v),
                   "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v),
                   "all_examples_per_second": [round(x["examples_per_second"], 2) for x in v]} for k, v in runs.items()}
    overhead = 1 - summary["unipetl"]["examples_per_second"] / summary["plain"]["examples_per_second"]
    memory = summary["unipetl"]["peak_rss_mb"] / summary["plain"]["peak_rss_mb"]
    command = f"python benchmarks/bench_trainer_overhead.py --rounds {args.rounds} --train-samples {args.train_samples} --epochs {args.epochs}"
    result = {"machine": machine_description(), "command": command, "summary": summary,
              "throughput_overhead": overhead, "peak_rss_ratio": memory}
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    md = (f"Command: `{command}`  \nMachine: {result['machine']}\n\n"
          "| run | examples / s (median) | all rounds | peak RSS (MB) |\n|---|---:|---|---:|\n"
          + "".join(f"| {k} | {v['examples_per_second']:.2f} | {v['all_examples_per_second']} | {v['peak_rss_mb']:.0f} |\n"
                    for k, v in summary.items())
          + f"\nThroughput overhead of `unipetl train`: {100 * overhead:+.1f} % (negative = faster); "
            f"peak memory ratio {memory:.2f}.\n")
    Path(args.output + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
