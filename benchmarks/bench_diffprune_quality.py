"""Diff pruning at 0.5 % density against full fine-tuning on MiniLM at the same training budget.

SST-2 (a seeded 4,000-example subset of train), official dev as test, batch 16, sequence length 64,
2 epochs in total: full fine-tuning trains 2 epochs; diff pruning spends 1 epoch in the L0 stage and
1 epoch fine-tuning with the mask fixed (diff_l0_fraction 0.5). Each variant is NAME=PRESET[:key=value,...],
where the keys are `learning_rate` or design-config fields.

    python benchmarks/bench_diffprune_quality.py [--seeds 42] [--variants full=full diffprune=diffprune]
"""

import argparse
import json
from pathlib import Path

from unipetl.bench import machine_description
from unipetl.training import TrainOptions, train_task

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def parse_variant(text: str) -> tuple[str, str, float | None, dict]:
    name, _, spec = text.partition("=")
    preset, _, settings = spec.partition(":")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = float(value)
        except ValueError:  # a choice such as projection_gates=expected
            overrides[key] = value
    return name, preset, overrides.pop("learning_rate", None), overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--variants", nargs="+", default=["full=full", "diffprune=diffprune"])
    parser.add_argument("--runs", default="runs/bench-diffprune")
    parser.add_argument("--output", default="benchmarks/results/diffprune_quality_cpu")
    args = parser.parse_args()
    rows = []
    for text in args.variants:
        name, preset, learning_rate, overrides = parse_variant(text)
        for seed in args.seeds:
            options = TrainOptions(epochs=args.epochs, max_train_samples=4000, max_length=64, batch_size=16, seed=seed,
                                   progress=False, learning_rate=learning_rate)
            result = train_task("sst2", preset, None, str(GLUE), f"{args.runs}/{name}-{seed}", options, overrides,
                                overwrite=True, log=print)
            rows.append({"variant": name, "preset": preset, "learning_rate": result["learning_rate"], "overrides": overrides,
                         "seed": seed, "accuracy": result["metrics"]["accuracy"],
                         "trainable_params": result["trainable_params"], "stored_bytes": result["stored_bytes"],
                         "train_seconds": result["train_seconds"], "projection": result.get("diff_projection")})
            print(rows[-1], flush=True)
    command = (f"python benchmarks/bench_diffprune_quality.py --seeds {' '.join(map(str, args.seeds))} "
               f"--epochs {args.epochs} --variants {' '.join(args.variants)}")
    Path(args.output + ".json").write_text(json.dumps({"machine": machine_description(), "command": command, "rows": rows},
                                                      indent=1) + "\n")
    lines = [f"Command: `{command}`  ", f"Machine: {machine_description()}", "",
             "| variant | lr (w) | overrides | seed | SST-2 dev accuracy | trainable params | stored bytes | train s |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['learning_rate']:g} | {r['overrides'] or ''} | {r['seed']} | "
                     f"{100 * r['accuracy']:.2f} | {r['trainable_params']:,} | {r['stored_bytes']:,} | {r['train_seconds']:.0f} |")
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
