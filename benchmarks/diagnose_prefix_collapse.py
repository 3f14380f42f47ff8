"""Why prefix tuning and MAM predict one class on SST-2 and WiC in the reproduction.

In benchmarks/reproduce.py both train at their presets' learning rate, 1e-3, and end at the majority
class (SST-2 50.92 %, WiC 50.00 %), where LoRA and `pfeiffer` at the same rate learn (82.68 %,
81.42 %). He et al. trained every method at 1e-4 on SST-2 (ALGORITHMS.md §3.5). This script reruns
the reproduction's SST-2 run (the same 2,000-example subset, 2 epochs, length 64, seed 42, the same
splits) with other learning rates and with the BERT pooler trained, and records each run's test and
validation accuracy and the share of test examples given the most frequent prediction (1.0: one
class for everything).

    python benchmarks/diagnose_prefix_collapse.py [--variants prefix:1e-3 prefix:1e-4 prefix:1e-3:pooler ...]
"""

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from unipetl.bench import machine_description
from unipetl.tasks.loaders import load_split
from unipetl.training import TrainOptions, load_task_module, train_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import GLUE, TASKS  # noqa: E402  (the reproduction's own settings)

DEFAULT_VARIANTS = ["prefix:1e-3", "prefix:3e-4", "prefix:1e-4", "prefix:1e-3:pooler", "mam:1e-4"]


def parse_variant(text: str) -> tuple[str, float, bool]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "pooler"):
        raise SystemExit(f"--variants: {text!r} is not PRESET:LR or PRESET:LR:pooler")
    try:
        return parts[0], float(parts[1]), len(parts) == 3
    except ValueError:
        raise SystemExit(f"--variants: {parts[1]!r} in {text!r} is not a learning rate") from None


def run(task: str, method: str, learning_rate: float, pooler: bool, folder: Path) -> dict:
    samples, epochs, length, seeds = TASKS[task]
    options = TrainOptions(epochs=epochs, max_train_samples=samples, max_length=length, batch_size=16, seed=seeds[0],
                           protocol="scalearn", max_validation_samples=1000, progress=False, learning_rate=learning_rate)
    result = train_task(task, method, None, str(GLUE), str(folder), options,
                        {"train_pooler": True} if pooler else None, overwrite=True, log=lambda m: None)
    petl, backbone, io, info = load_task_module(str(folder / "module"))
    predictions = io.predict(petl, backbone, load_split(task, "validation", GLUE), info.get("max_length", 128))
    labels = Counter(p["prediction"] for p in predictions)  # the official dev set: the test split here
    return {"variant": f"{method} lr {learning_rate:g}" + (" + pooler" if pooler else ""), "method": method,
            "learning_rate": learning_rate, "train_pooler": pooler, "test_accuracy": result["main_score"],
            "validation_accuracy": result["validation_metrics"]["main_score"],
            "most_frequent_prediction_share": labels.most_common(1)[0][1] / len(predictions),
            "train_seconds": result["train_seconds"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="PRESET:LR or PRESET:LR:pooler")
    parser.add_argument("--output", default="benchmarks/results/prefix_collapse_cpu")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (method, lr, pooler) in enumerate(variants):
            rows.append(run("sst2", method, lr, pooler, Path(scratch) / str(i)))
            print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/diagnose_prefix_collapse.py --variants " + " ".join(args.variants)
    result = {"command": command, "machine": machine_description(), "task": "sst2", "rows": rows}
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Command: `{command}`", "", f"Machine: {result['machine']}  ",
             "SST-2 as in benchmarks/reproduce.py: 2,000 training examples, 2 epochs, length 64, batch 16, seed 42, "
             "official dev set as test, best epoch by a 10 % validation split.", "",
             "| variant | test accuracy | validation accuracy | share of the most frequent test prediction | train (s) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {100 * r['test_accuracy']:.2f} | {100 * r['validation_accuracy']:.2f} | "
              f"{r['most_frequent_prediction_share']:.3f} | {r['train_seconds']:.0f} |" for r in rows]
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
