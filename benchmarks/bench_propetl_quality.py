"""ProAdapter against a plain Pfeiffer adapter on MiniLM at the same training budget.

SST-2 (a seeded 4,000-example subset of train) and STS-B (full train), official dev as test, batch
16, sequence length 64, 2 epochs, each method at its preset defaults; stored bytes per task from
the saved modules. ``--variants NAME=PRESET[:key=value,...]`` (keys: `learning_rate` or design-config
fields, as in bench_diffprune_quality.py) replaces the two preset runs.

    python benchmarks/bench_propetl_quality.py [--seeds 42] [--epochs 2] [--tasks sst2 stsb] [--variants ...]
"""

import argparse
import json
from pathlib import Path

from bench_diffprune_quality import parse_variant
from unipetl.bench import machine_description
from unipetl.training import TrainOptions, train_task

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TASKS = {"sst2": 4000, "stsb": None}
METHODS = ("pfeiffer", "proadapter")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=[f"{m}={m}" for m in METHODS])
    parser.add_argument("--runs", default="runs/bench-propetl")
    parser.add_argument("--output", default="benchmarks/results/propetl_quality_cpu")
    args = parser.parse_args()
    rows = []
    for task in args.tasks:
        for text in args.variants:
            name, method, learning_rate, overrides = parse_variant(text)
            for seed in args.seeds:
                options = TrainOptions(epochs=args.epochs, max_train_samples=TASKS[task], max_length=64, batch_size=16,
                                       seed=seed, progress=False, learning_rate=learning_rate)
                result = train_task(task, method, None, str(GLUE), f"{args.runs}/{task}-{name}-{seed}", options,
                                    overrides, overwrite=True, log=print)
                rows.append({"task": task, "method": name, "seed": seed, "main_score": result["main_score"],
                             "metrics": result["metrics"], "trainable_params": result["trainable_params"],
                             "stored_bytes": result["stored_bytes"], "train_seconds": result["train_seconds"]})
                print(rows[-1], flush=True)
    command = (f"python benchmarks/bench_propetl_quality.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
               f"--tasks {' '.join(args.tasks)} --variants {' '.join(args.variants)}")
    Path(args.output + ".json").write_text(json.dumps({"machine": machine_description(), "command": command, "rows": rows}, indent=1) + "\n")
    lines = [f"Command: `{command}`  ", f"Machine: {machine_description()}", "",
             "| task | method | seed | main score | metrics | trainable params | stored bytes | train s |", "|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        metrics = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["metrics"].items() if k != "main_score")
        lines.append(f"| {r['task']} | {r['method']} | {r['seed']} | {100 * r['main_score']:.2f} | {metrics} | "
                     f"{r['trainable_params']:,} | {r['stored_bytes']:,} | {r['train_seconds']:.0f} |")
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
