"""Serving many tasks from one backbone: mixed-task batches against a single task, against switching
modules, and (LoRA) against PEFT's mixed batch, all in one process (issue 22).

Workload: batches of 32 rows x 128 tokens on MiniLM, each row given a task drawn uniformly from K
loaded tasks. Beside each method at each K, in the same run and interleaved repeat by repeat:
- mixed: `TaskBank.forward` on the whole batch;
- single task (the ceiling): the same batch through one task's own model (`load_petl_model`);
- switching: the same rows grouped by task, each group through its task's module swapped onto the
  backbone (`load_petl_model` from disk, forward, `unload`): one task per batch;
- PEFT (LoRA only): `PeftModel(..., adapter_names=...)` with K LoRA adapters of the same shape, the
  classifier and pooler in modules_to_save as our modules train them.
Throughput is rows per second from the median of the repeats; ratios are taken within one repeat set.
Memory: the bytes the bank holds for its K tasks (every tensor reachable from their parts and heads,
shared ones once) against the sum of their modules' stored bytes (ScaLearn's source modules once).
The process's resident memory is not reported: the allocator's reuse made its growth meaningless
(negative at times). Task modules are random "trained-looking" modules (their numbers do not
change the cost); they are built once into --workdir and reused.

    python benchmarks/bench_serving.py [--methods lora pfeiffer ...] [--repeats 5] [--output benchmarks/results/serving_cpu]
"""

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from unipetl import PetlConfig, get_petl_model
from unipetl.bench import machine_description
from unipetl.defaults import default_model_path
from unipetl.module_format import HEADER_FILE
from unipetl.serving import TaskBank
from unipetl.storage import load_petl_model
from unipetl.transfer import get_transfer_model

ROWS, TOKENS = 32, 128
METHODS = {  # name -> (preset config, the K values run)
    "lora": (lambda: PetlConfig.from_preset("lora"), (1, 8, 64, 256)),
    "pfeiffer": (lambda: PetlConfig.from_preset("pfeiffer"), (1, 8, 64, 256)),
    "proadapter": (lambda: PetlConfig.from_preset("proadapter"), (1, 8, 64)),
    "prefix": (lambda: PetlConfig.from_preset("prefix", attn_bn=30), (1, 8, 64)),
    "prompt_tuning": (lambda: PetlConfig.from_preset("prompt_tuning"), (1, 8, 64)),
    "bitfit": (lambda: PetlConfig.from_preset("bitfit"), (1, 8, 64, 256)),
    "scalearn": (None, (1, 8, 64)),
    "diffprune": (lambda: PetlConfig.from_preset("diffprune"), (1, 8, 64)),
}
N_SOURCES = 8
TASK = {"name": "sst2", "kind": "classification", "mode": "classify", "max_length": TOKENS}


def backbone():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2).eval()


def perturb(petl, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in petl.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)


def build_modules(method: str, count: int, workdir: Path, model) -> list[Path]:
    """``count`` distinct task modules of ``method`` (built once, reused by later runs)."""
    folder = workdir / method
    paths = [folder / f"task{i:03d}" for i in range(count)]
    sources = build_sources(workdir, model) if method == "scalearn" else None
    for i, path in enumerate(paths):
        if not (path / HEADER_FILE).exists():
            petl = get_transfer_model(model, sources, "scalearn") if sources else get_petl_model(model, METHODS[method][0]())
            save(petl, path, 1000 * len(method) + i, TASK)
    return paths


def build_sources(workdir: Path, model) -> list[Path]:
    """ScaLearn's frozen source adapters: Pfeiffer modules named by their folders (source0 ...)."""
    paths = [workdir / "sources" / f"source{i}" for i in range(N_SOURCES)]
    for i, path in enumerate(paths):
        if not (path / HEADER_FILE).exists():
            save(get_petl_model(model, "pfeiffer"), path, 500 + i, None)
    return paths


def save(petl, path: Path, seed: int, task) -> None:
    perturb(petl, seed)
    if petl.config.param_source == "gated_diff":
        petl.project()
    if petl.config.param_source == "masked_prototype":
        petl.freeze_masks()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    petl.save(tmp, task=task)
    tmp.rename(path)
    petl.unload()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peft_mixed(model, k: int):
    """PEFT with k LoRA adapters like our preset's (r 16, alpha 32, q and v), called with adapter_names."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"], lora_dropout=0.0,
                        init_lora_weights=False, modules_to_save=["classifier", "pooler.dense"])
    peft = get_peft_model(model, config, adapter_name="t0")
    for i in range(1, k):
        peft.add_adapter(f"t{i}", config)
    return peft.eval()


@torch.no_grad()
def run_method(method: str, ks: tuple, repeats: int, workdir: Path, tokenizer, log) -> list[dict]:
    build = backbone()
    paths = build_modules(method, max(ks), workdir, build)
    del build
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, tokenizer.vocab_size, (ROWS, TOKENS), generator=generator),
             "attention_mask": torch.ones(ROWS, TOKENS, dtype=torch.long),
             "token_type_ids": torch.zeros(ROWS, TOKENS, dtype=torch.long)}
    batch["input_ids"][:, 0] = tokenizer.cls_token_id
    alone = backbone()  # the single-task model and the switching modules attach here, the bank has its own
    rows = []
    for k in ks:
        bank = TaskBank(backbone(), tokenizer=tokenizer)
        for i, path in enumerate(paths[:k]):
            bank.add(path, f"t{i}")
        memory = bank.memory()
        names = [f"t{random.Random(seed).randrange(k)}" for seed in range(ROWS)]
        single = load_petl_model(alone, paths[0]).eval()

        def switching():
            for task in dict.fromkeys(names):
                index = torch.tensor([r for r, n in enumerate(names) if n == task])
                petl = load_petl_model(alone, paths[int(task[1:])]).eval()
                petl(**{key: value[index] for key, value in batch.items()})
                petl.unload()

        calls = {"mixed": lambda: bank.forward(batch, names), "single_task": lambda: single(**batch)}
        peft = None
        if method == "lora":
            peft = peft_mixed(backbone(), k)
            adapter_names = [f"t{n[1:]}" for n in names]
            calls["peft"] = lambda: peft(**batch, adapter_names=adapter_names)
        times = {key: [] for key in [*calls, "switching"]}
        for repeat in range(repeats + 1):  # the first round warms up
            elapsed = {key: timed(call) for key, call in calls.items()}
            single.unload()
            elapsed["switching"] = timed(switching)
            single = load_petl_model(alone, paths[0]).eval()
            for key, seconds in elapsed.items():
                if repeat:
                    times[key].append(seconds)
        single.unload()
        throughput = {key: ROWS / statistics.median(value) for key, value in times.items()}
        row = {"method": method, "k": k, "rows_per_second": throughput,
               "mixed_over_single_task": throughput["mixed"] / throughput["single_task"],
               "mixed_over_switching": throughput["mixed"] / throughput["switching"],
               "tasks_in_batch": len(set(names)), "memory": memory}
        if "peft" in throughput:
            row["mixed_over_peft"] = throughput["mixed"] / throughput["peft"]
        log(json.dumps(row))
        rows.append(row)
        bank = calls = peft = None  # freed before the next K's bank is measured
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| method | K | tasks in a batch | mixed rows/s | single-task rows/s | mixed / single | switching rows/s | "
             "mixed / switching | PEFT rows/s | mixed / PEFT | held / stored bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, m = r["rows_per_second"], r["memory"]
        peft = f"{t['peft']:.1f} | {r['mixed_over_peft']:.2f}" if "peft" in t else "- | -"
        lines.append(f"| {r['method']} | {r['k']} | {r['tasks_in_batch']} | {t['mixed']:.1f} | {t['single_task']:.1f} | "
                     f"{r['mixed_over_single_task']:.2f} | {t['switching']:.1f} | {r['mixed_over_switching']:.2f} | {peft} | "
                     f"{m['tasks_held_bytes'] / m['stored_bytes']:.2f} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--ks", nargs="+", type=int, help="K values (default: each method's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/unipetl_bench_serving", help="where the task modules are built")
    parser.add_argument("--output", default="benchmarks/results/serving_cpu")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUTPUT.md from OUTPUT.json")
    args = parser.parse_args()
    if args.report_only:
        write_markdown(json.loads(Path(args.output + ".json").read_text()), args.output)
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    rows = []
    for method in args.methods:
        ks = tuple(args.ks) if args.ks else METHODS[method][1]
        rows += run_method(method, ks, args.repeats, Path(args.workdir), tokenizer,
                           lambda message: print(message, file=sys.stderr, flush=True))
    command = "python benchmarks/bench_serving.py " + " ".join(sys.argv[1:])
    result = {"command": command.strip(), "machine": machine_description(), "rows": ROWS, "tokens": TOKENS,
              "repeats": args.repeats, "results": rows}
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, args.output)


def write_markdown(result: dict, output: str) -> None:
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}  ",
             f"Batches of {result['rows']} rows x {result['tokens']} tokens on MiniLM, each row's task drawn uniformly "
             f"from K; throughput from the median of {result['repeats']} interleaved repeats; held / stored: bytes the "
             "bank holds for its K tasks over the sum of their modules' stored bytes (ScaLearn's sources once).", ""]
    lines += table(result["results"])
    Path(output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
