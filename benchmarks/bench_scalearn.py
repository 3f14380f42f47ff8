"""ScaLearn and AdapterFusion end to end on MiniLM, with GLUE/SuperGLUE files from ../shared/data/glue.

1. Stage 1: a `pfeiffer` adapter per source task (seed 42).
2. Stage 2 on each target: the five transfer methods over all sources (the target's own adapter
   included, as in the paper), against the target's single-task `pfeiffer` adapter, for every seed.
3. Stage-2 training step time with the N sources against one plain adapter's step (same process,
   rounds interleaved, medians), and the stored bytes of each transfer module.

Sequence length 64, batch 16; sizes and epochs are in SOURCES and TARGETS below.

    python benchmarks/bench_scalearn.py [--seeds 42 43 44]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from unipetl import get_petl_model
from unipetl.backbone import load_backbone
from unipetl.bench import machine_description
from unipetl.tasks import get_task
from unipetl.training import TrainOptions, train_task
from unipetl.transfer import TRANSFER_METHODS, get_transfer_model

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
SOURCES = {"cb": None, "stsb": 2000, "cola": 2000, "sst2": 2000, "wic": 2000}  # task -> training examples
TARGETS = {"cb": (None, 5.0), "stsb": (1000, 2.0)}  # task -> (training examples, epochs)


def options(samples, epochs, seed):
    return TrainOptions(epochs=epochs, max_train_samples=samples, max_length=64, batch_size=16, seed=seed, progress=False)


def step_times(source_dirs, rounds=3, steps=5):
    """Median training-step seconds of one plain adapter and of each transfer method over the sources."""
    backbone = load_backbone(None, get_task("sst2"))
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    batch = {"input_ids": torch.randint(1000, 30000, (16, 64)), "attention_mask": torch.ones(16, 64, dtype=torch.long),
             "labels": torch.randint(0, 2, (16,))}
    times = {name: [] for name in ("pfeiffer", *TRANSFER_METHODS)}
    for _ in range(rounds):
        for name in times:
            backbone.model.load_state_dict(state)
            petl = (get_petl_model(backbone.model, "pfeiffer") if name == "pfeiffer"
                    else get_transfer_model(backbone.model, source_dirs, name))
            petl.train()
            optimizer = torch.optim.AdamW(petl.parameter_groups(1e-3, 0.0))
            for step in range(steps + 1):
                start = time.perf_counter()
                loss = petl(**batch).loss
                extra = petl.extra_loss()
                (loss + extra if extra is not None else loss).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step:  # the first step warms up
                    times[name].append(time.perf_counter() - start)
            petl.unload()
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--runs", default="runs/bench-scalearn")
    parser.add_argument("--output", default="benchmarks/results/scalearn_cpu")
    args = parser.parse_args()
    runs = Path(args.runs)
    stage1 = {}
    for task, samples in SOURCES.items():
        result = train_task(task, "pfeiffer", None, str(GLUE), str(runs / f"source-{task}"), options(samples, 2.0, 42),
                            overwrite=True, log=print)
        stage1[task] = {"main_score": result["main_score"], "train_examples": result["train_examples"]}
        print("stage 1", task, stage1[task], flush=True)
    source_dirs = [str(runs / f"source-{task}" / "module") for task in SOURCES]
    rows = []
    for target, (samples, epochs) in TARGETS.items():
        for seed in args.seeds:
            for method in ("pfeiffer", *TRANSFER_METHODS):
                result = train_task(target, method, None, str(GLUE), str(runs / f"{target}-{method}-{seed}"),
                                    options(samples, epochs, seed), overwrite=True, log=print,
                                    sources=None if method == "pfeiffer" else source_dirs)
                rows.append({"target": target, "method": method, "seed": seed, "main_score": result["main_score"],
                             "metrics": result["metrics"], "trainable_params": result["trainable_params"],
                             "stored_bytes": result["stored_bytes"], "train_seconds": result["train_seconds"]})
                print(rows[-1], flush=True)
    timing = step_times(source_dirs)
    command = f"python benchmarks/bench_scalearn.py --seeds {' '.join(map(str, args.seeds))}"
    payload = {"machine": machine_description(), "command": command, "stage1": stage1, "rows": rows, "step_seconds": timing}
    Path(args.output + ".json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [f"Command: `{command}`  ", f"Machine: {machine_description()}", "",
             "Stage 1 (`pfeiffer`, seed 42, 2 epochs): " + ", ".join(
                 f"{t} {100 * v['main_score']:.2f} ({v['train_examples']} ex.)" for t, v in stage1.items()), "",
             f"Stage 2 over all {len(SOURCES)} sources; main score (mean ± std over seeds {args.seeds}):", "",
             "| target | method | main score | trainable params (head excluded) | stored bytes |", "|---|---|---:|---:|---:|"]
    for target in TARGETS:
        for method in ("pfeiffer", *TRANSFER_METHODS):
            scores = [100 * r["main_score"] for r in rows if r["target"] == target and r["method"] == method]
            first = next(r for r in rows if r["target"] == target and r["method"] == method)
            lines.append(f"| {target} | {method} | {np.mean(scores):.2f} ± {np.std(scores):.2f} | "
                         f"{first['trainable_params']:,} | {first['stored_bytes']:,} |")
    lines += ["", f"Training step (batch 16 x 64, N = {len(SOURCES)} sources), median seconds and ratio to one plain adapter:",
              "", "| method | step (s) | / pfeiffer |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.3f} | {seconds / timing['pfeiffer']:.2f} |" for name, seconds in timing.items()]
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
