"""Inference latency of ProPETL with frozen masks against the plain forms, in one process.

After `freeze_masks()` the masked weights are computed once and reused, so a ProAdapter/ProLoRA
forward should cost what a plain Pfeiffer adapter/LoRA forward costs. MiniLM, batch 16 x 128, eval
mode, no grad; the methods alternate for several rounds and medians are reported.

    python benchmarks/bench_propetl_inference.py [--rounds 7]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

import unipetl
from unipetl.bench import machine_description
from unipetl.defaults import default_model_path

METHODS = {"pfeiffer (r=32)": ("pfeiffer", {"reduction_factor": 12}), "proadapter (frozen)": ("proadapter", {}),
           "proadapter (scores, not frozen)": ("proadapter", {}),
           "lora r=32": ("lora", {"attn_bn": 32, "lora_alpha": 48.0, "lora_dropout": 0.0}), "prolora (frozen)": ("prolora", {})}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default="benchmarks/results/propetl_inference_cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {}
    for label, (preset, overrides) in METHODS.items():
        base = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
        petl = unipetl.get_petl_model(base, unipetl.PetlConfig.from_preset(preset, **overrides)).eval()
        if "frozen)" in label:
            petl.freeze_masks()
        models[label] = petl
    batch = {"input_ids": torch.randint(1000, 30000, (16, 128)), "attention_mask": torch.ones(16, 128, dtype=torch.long)}
    times = {label: [] for label in models}
    with torch.no_grad():
        for label, model in models.items():
            model(**batch)  # warm-up (and the one-time masked-weight product of frozen masks)
        for _ in range(args.rounds):
            for label, model in models.items():
                start = time.perf_counter()
                model(**batch)
                times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(t) for label, t in times.items()}
    command = f"python benchmarks/bench_propetl_inference.py --rounds {args.rounds}"
    lines = [f"Command: `{command}`  ", f"Machine: {machine_description()}", "",
             "| method | forward, batch 16 x 128 (s, median) | ratio to its plain form |", "|---|---:|---:|"]
    plain = {"pro": medians["pfeiffer (r=32)"], "prolora": medians["lora r=32"]}
    for label, value in medians.items():
        ref = plain["prolora"] if "lora" in label else plain["pro"]
        lines.append(f"| {label} | {value:.3f} | {value / ref:.2f} |")
    Path(args.output + ".json").write_text(json.dumps({"machine": machine_description(), "command": command,
                                                       "seconds": times, "medians": medians}, indent=1) + "\n")
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
