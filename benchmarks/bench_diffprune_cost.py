"""Diff pruning's training cost against full fine-tuning on MiniLM, side by side in one run, and the
stored bytes per task against `pfeiffer`, `lora` and `proadapter`.

Step time and peak memory come from `unipetl.bench` (one fresh process per measurement, rounds
interleaved, medians): the L0 stage (dense diff, gates, expected-L0 penalty, each method's own
optimizer groups) and the fixed-mask stage (0.5 % of the entries trainable). Stored bytes are the
exact bytes `save` writes for a task module of each method on MiniLM with a 2-label head.

    python benchmarks/bench_diffprune_cost.py [--rounds 3] [--steps 6] [--seq-len 64]
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from unipetl import PetlConfig, get_petl_model
from unipetl.bench import MethodSpec, benchmark, to_markdown
from unipetl.defaults import default_model_path

SPECS = [MethodSpec("full", "unipetl", "full"),
         MethodSpec("diffprune L0 stage", "unipetl", "diffprune"),
         MethodSpec("diffprune fixed-mask stage", "unipetl", "diffprune", stage="fixed_mask")]


def stored_bytes_per_task(model_path: str) -> list[dict]:
    rows = []
    for preset in ("pfeiffer", "lora", "proadapter", "diffprune"):
        base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        petl = get_petl_model(base, PetlConfig.from_preset(preset))
        if preset == "diffprune":  # a trained diff's size depends only on its density
            with torch.no_grad():
                petl.diff.weight.normal_()
            petl.project()
        report = petl.report()
        rows.append({"preset": preset, "stored_bytes": report["stored_bytes"], "trainable_params": report["trainable_params"],
                     "head_bytes": report["stored_breakdown"]["head_bytes"]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/diffprune_cost_cpu")
    args = parser.parse_args()
    result = benchmark(SPECS, default_model_path(), args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds)
    result["stored"] = stored_bytes_per_task(default_model_path())
    result["command"] = "python benchmarks/bench_diffprune_cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output")
    table = ["", "Stored bytes per task (MiniLM, 2-label head; diffprune at its 0.5 % density):", "",
             "| preset | trainable params | stored bytes | of which head |", "|---|---:|---:|---:|"]
    table += [f"| {r['preset']} | {r['trainable_params']:,} | {r['stored_bytes']:,} | {r['head_bytes']:,} |"
              for r in result["stored"]]
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    text = f"Command: `{result['command']}`\n\n" + to_markdown(result) + "\n".join(table) + "\n"
    Path(args.output + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
