"""Peer benchmark: AdapterHub `adapters` against our methods, training step time and peak memory on MiniLM.

    python benchmarks/bench_peer_adapters.py [--rounds 3] [--steps 5] [--warmup 2] [--batch-size 16] [--seq-len 128]
        [--threads 0] [--adapters-python /work/venv-adapters/bin/python] [--output benchmarks/results/peer_adapters_cpu]
        [--core benchmarks/results/core_cpu.json]

`adapters` 1.3.0 pins transformers 4.57.6, so it lives in a separate virtual environment, never a dependency
of this project:

    python3 -m venv /work/venv-adapters
    /work/venv-adapters/bin/pip install torch==2.13.0      # the CPU build, same torch as ours
    /work/venv-adapters/bin/pip install adapters==1.3.0    # brings transformers 4.57.6

Run this script with the project's python. Our rows go through `unipetl.bench.run_worker` (one fresh process
each, as bench_core.py measures them); the `adapters` rows run this same file as a worker under the adapters
environment's python (`--worker`), which imports nothing from unipetl and measures the same way: warm-up steps,
then timed forward + backward + AdamW steps on a fixed random batch, peak RSS of that one process. Every round
runs every row once, the two libraries interleaved method by method (the order reversed on alternate rounds);
rows report medians over rounds and ratios to full fine-tuning of the same library and to our `full`, both
measured in the same run.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ADAPTERS_PYTHON = "/work/venv-adapters/bin/python"


# ---------------------------------------------------------------------------------------------------------------
# Worker: runs under the adapters environment's python. Standard library and that environment only.

def _adapters_config(spec: dict):
    import adapters

    def build(description: dict):
        return getattr(adapters, description["class"])(**description.get("kwargs", {}))

    config = spec["config"]
    if config["class"] == "MAMConfig":
        return adapters.MAMConfig(**{part: build(config[part]) for part in ("prefix_tuning", "adapter") if part in config})
    return build(config)


def worker_measure(spec: dict, model_path: str, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    name = None
    if spec["method"] != "full" or spec.get("init"):
        import adapters

        adapters.init(model)
    if spec["method"] != "full":
        name = "peer"
        model.add_adapter(name, config=_adapters_config(spec))
        model.train_adapter(name)  # freezes the backbone; the head stays trainable
    model.train()  # train_adapter() switches only the wrapped base model to training mode
    params = [p for p in model.parameters() if p.requires_grad]
    # The same AdamW implementation as our worker (unipetl.bench.measure); the driver says which.
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if spec.get("fused") else torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # training's peak, before inference
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    latencies = []
    with torch.no_grad():
        for step in range(warmup + steps):
            start = time.perf_counter()
            model(**inputs)
            if step >= warmup:
                latencies.append(time.perf_counter() - start)
    stored = None
    if name is not None:
        with tempfile.TemporaryDirectory() as folder:
            model.save_adapter(folder, name)
            stored = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    return {"label": spec["label"], "step_seconds": statistics.median(times), "inference_seconds": statistics.median(latencies),
            "peak_rss_mb": peak / 1024, "training_rss_increase_mb": (peak - rss_before) / 1024,
            "trainable_params": sum(p.numel() for p in params), "stored_bytes": stored, "threads": torch.get_num_threads(),
            "attn_implementation": model.config._attn_implementation}


def worker_describe() -> dict:
    import adapters
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "adapters": adapters.__version__, "threads": torch.get_num_threads()}


def worker_main(argv: list[str]) -> None:
    if argv[0] == "--describe":
        print("RESULT" + json.dumps(worker_describe()))
        return
    spec = json.loads(argv[0])
    print("RESULT" + json.dumps(worker_measure(spec, argv[1], *map(int, argv[2:6]))))


# ---------------------------------------------------------------------------------------------------------------
# Driver: runs under the project's python.

def _worker_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def run_adapters_worker(python: str, spec: dict, model_path: str, batch_size: int, seq_len: int, steps: int,
                        warmup: int) -> dict:
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", json.dumps(spec), model_path, str(batch_size),
                           str(seq_len), str(steps), str(warmup)], capture_output=True, text=True, env=_worker_env())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    return {"label": spec["label"], "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def describe_adapters_env(python: str) -> dict:
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", "--describe"], capture_output=True, text=True,
                          env=_worker_env())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise SystemExit(f"cannot run the adapters environment {python}: {proc.stderr.strip()[-500:]}")


def ours_uses_fused_adamw() -> bool:
    """Whether our worker (unipetl.bench.build) steps a fused AdamW, so that the adapters rows step the same one."""
    from unipetl.bench import FUSED_ADAMW

    return FUSED_ADAMW


def build_rows(model_path: str, fused: bool = False) -> list[dict]:
    """Each row: library, method family, label, sizes, and what to run. Sizes of the adapters configs are read
    from our presets, so that both libraries train the same shapes."""
    from unipetl.bench import MethodSpec
    from unipetl.config import PetlConfig

    hidden = json.loads((Path(model_path) / "config.json").read_text())["hidden_size"]
    pfeiffer, houlsby, parallel = (PetlConfig.from_preset(n) for n in ("pfeiffer", "houlsby", "parallel"))
    prefix, mam = PetlConfig.from_preset("prefix"), PetlConfig.from_preset("mam")
    lora = {"attn_bn": 8, "lora_alpha": 16, "lora_dropout": 0.0}  # bench_core.py's "lora r=8 (q,v)" row

    def ours(family, spec, sizes):
        return {"library": "unipetl", "family": family, "label": spec.label, "sizes": sizes, "spec": spec}

    def peer(family, label, sizes, config, **extra):
        return {"library": "adapters", "family": family, "label": label, "sizes": sizes,
                "spec": {"label": label, "method": family, "config": config, "fused": fused, **extra}}

    def cls(name, **kwargs):
        return {"class": name, "kwargs": kwargs}

    mam_pt = {"prefix_length": mam.attn_bn, "bottleneck_size": mam.mid_dim, "flat": False}
    mam_rf = hidden / mam.ffn_bn  # adapters sizes bottlenecks as hidden // reduction_factor
    return [
        ours("full", MethodSpec("full", "unipetl", "full"), "all weights + head"),
        peer("full", "full", "all weights + head (plain transformers, no adapters.init)", None),
        peer("full", "full (adapters.init, no adapter)", "all weights + head, adapter-wrapped layers", None, init=True),
        ours("lora", MethodSpec("lora r=8 (q,v)", "unipetl", "lora", lora), "r 8, alpha 16, q,v, dropout 0"),
        peer("lora", "LoRAConfig r=8 (q,v)", "r 8, alpha 16, selfattn q,v, dropout 0",
             cls("LoRAConfig", r=lora["attn_bn"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"],
                 selfattn_lora=True, attn_matrices=["q", "v"])),
        ours("pfeiffer", MethodSpec("pfeiffer", "unipetl", "pfeiffer"),
             f"FFN seq. adapter, rf {pfeiffer.reduction_factor:g} (bottleneck {int(hidden // pfeiffer.reduction_factor)}), "
             f"{pfeiffer.adapter_act}"),
        peer("pfeiffer", "SeqBnConfig", f"rf {pfeiffer.reduction_factor:g} (bottleneck {int(hidden // pfeiffer.reduction_factor)}), "
             "relu (defaults)", cls("SeqBnConfig", reduction_factor=pfeiffer.reduction_factor)),
        ours("houlsby", MethodSpec("houlsby", "unipetl", "houlsby"),
             f"attn + FFN seq. adapters, rf {houlsby.reduction_factor:g}, {houlsby.adapter_act}, LN 'in' on the attention adapter"),
        peer("houlsby", "DoubleSeqBnConfig", f"rf {houlsby.reduction_factor:g} (bottleneck {int(hidden // houlsby.reduction_factor)}), "
             "swish (defaults)", cls("DoubleSeqBnConfig", reduction_factor=houlsby.reduction_factor)),
        ours("parallel", MethodSpec("parallel", "unipetl", "parallel"),
             f"FFN parallel adapter, rf {parallel.reduction_factor:g} (bottleneck {int(hidden // parallel.reduction_factor)}), "
             f"scale {parallel.ffn_adapter_scalar:g}"),
        peer("parallel", "ParBnConfig", f"rf {parallel.reduction_factor:g} (bottleneck {int(hidden // parallel.reduction_factor)}); "
             "other fields adapters' defaults (scaling 4.0, mam init, relu)", cls("ParBnConfig", reduction_factor=parallel.reduction_factor)),
        ours("prefix l=200", MethodSpec("prefix l=200", "unipetl", "prefix"), f"l {prefix.attn_bn}, MLP {prefix.mid_dim}"),
        peer("prefix l=200", "PrefixTuningConfig l=200", f"prefix_length {prefix.attn_bn}, bottleneck {prefix.mid_dim}, flat False",
             cls("PrefixTuningConfig", prefix_length=prefix.attn_bn, bottleneck_size=prefix.mid_dim, flat=False)),
        ours("prefix l=30", MethodSpec("prefix l=30", "unipetl", "prefix", {"attn_bn": 30}), f"l 30, MLP {prefix.mid_dim}"),
        peer("prefix l=30", "PrefixTuningConfig l=30", f"prefix_length 30, bottleneck {prefix.mid_dim}, flat False",
             cls("PrefixTuningConfig", prefix_length=30, bottleneck_size=prefix.mid_dim, flat=False)),
        ours("mam", MethodSpec("mam", "unipetl", "mam"),
             f"prefix l {mam.attn_bn} (MLP {mam.mid_dim}) + FFN parallel adapter {mam.ffn_bn}, scale {mam.ffn_adapter_scalar:g}"),
        peer("mam", "MAMConfig (our mam sizes)", f"prefix l {mam.attn_bn} (bottleneck {mam.mid_dim}) + ParBn rf {mam_rf:g} "
             f"(bottleneck {mam.ffn_bn}), scaling {mam.ffn_adapter_scalar:g}",
             {"class": "MAMConfig", "prefix_tuning": cls("PrefixTuningConfig", **mam_pt),
              "adapter": cls("ParBnConfig", reduction_factor=mam_rf, scaling=float(mam.ffn_adapter_scalar))}),
        peer("mam", "MAMConfig (adapters' default)", f"prefix l 30 (bottleneck 800) + ParBn rf 2 (bottleneck {hidden // 2}), "
             "scaling 4.0", {"class": "MAMConfig"}),
    ]


def _fmt(value, spec=".2f"):
    return "–" if value is None else format(value, spec)


def summarise(rows: list[dict], runs: dict) -> list[dict]:
    from unipetl.bench import _summary

    out = []
    for row in rows:
        summary = _summary(runs[row["label"] + "|" + row["library"]])
        out.append({k: v for k, v in row.items() if k != "spec"} | summary)
    refs = {lib: next((r for r in out if r["library"] == lib and r["label"] == "full" and "error" not in r), None)
            for lib in ("unipetl", "adapters")}
    ours = refs["unipetl"]
    for row in out:
        if "error" in row:
            continue
        ref = refs[row["library"]]
        for key, base in (("step_seconds", "step"), ("peak_rss_mb", "peak_rss"), ("inference_seconds", "inference")):
            row[f"{base}_ratio_same_library_full"] = row[key] / ref[key] if ref else None
            row[f"{base}_ratio_unipetl_full"] = row[key] / ours[key] if ours else None
    return out


def best_peer_table(rows: list[dict], core_path: Path) -> tuple[list[dict], list[str]]:
    """Per method family: our step / unipetl full in this run against the best peer's. Step time is compared on
    one denominator, our `full`: adapters' rows of this run divided by our full of this run (the same seconds
    compared directly), PEFT's rows of core_cpu.json as recorded there (also relative to our full, in that run).
    Peak RSS is compared relative to each environment's own full, since the two environments' processes start
    from different baselines (transformers 4.57 vs 5.x)."""
    core = json.loads(core_path.read_text()) if core_path.exists() else {"rows": []}
    peft = {r["label"]: r for r in core["rows"] if r.get("library") == "peft" and "step_ratio" in r}
    core_ours = {r["label"]: r for r in core["rows"] if r.get("library") == "unipetl" and "step_ratio" in r}
    peft_twin = {"lora": "peft lora r=8 (q,v)", "prefix l=200": "peft prefix l=200", "prefix l=30": "peft prefix l=30"}
    ours_core_label = {"lora": "lora r=8 (q,v)"}
    result, lines = [], []
    for family in ("lora", "pfeiffer", "houlsby", "parallel", "prefix l=200", "prefix l=30", "mam"):
        mine = next((r for r in rows if r["library"] == "unipetl" and r["family"] == family and "error" not in r), None)
        peers = [(f"adapters {r['label']}", r["step_ratio_unipetl_full"], r["peak_rss_ratio_same_library_full"],
                  r["step_seconds_all"]) for r in rows if r["library"] == "adapters" and r["family"] == family and "error" not in r]
        if family == "mam":  # the peer at our sizes is the like-for-like one; adapters' default MAM is smaller
            peers = [p for p in peers if "our mam sizes" in p[0]] or peers
        if family in peft_twin and peft_twin[family] in peft:
            p = peft[peft_twin[family]]
            peers.append((f"PEFT {p['label']} (core_cpu.json)", p["step_ratio"], p.get("peak_rss_ratio"), None))
        if mine is None or not peers:
            continue
        best = min(peers, key=lambda p: p[1])
        best_rss = min((p for p in peers if p[2] is not None), key=lambda p: p[2], default=None)
        core_mine = core_ours.get(ours_core_label.get(family, family))
        # Same-round pairs (the two rows run next to each other): ours / the adapters peer's, round by round.
        paired = ([a / b for a, b in zip(mine["step_seconds_all"], best[3])]
                  if best[3] and len(best[3]) == len(mine["step_seconds_all"]) else [])
        entry = {"family": family, "ours_step_ratio": mine["step_ratio_same_library_full"],
                 "ours_core_step_ratio": core_mine["step_ratio"] if core_mine else None,
                 "best_peer": best[0], "best_peer_step_ratio": best[1],
                 "ours_at_or_below_best_peer_step": mine["step_ratio_same_library_full"] <= best[1],
                 "ours_over_peer_per_round": [round(x, 3) for x in paired],
                 "ours_peak_rss_ratio": mine["peak_rss_ratio_same_library_full"],
                 "best_peer_rss": best_rss[0] if best_rss else None, "best_peer_peak_rss_ratio": best_rss[2] if best_rss else None}
        entry["ours_at_or_below_best_peer_rss"] = best_rss is not None and entry["ours_peak_rss_ratio"] <= best_rss[2]
        result.append(entry)
        lines.append(f"| {family} | {entry['ours_step_ratio']:.2f} | {_fmt(entry['ours_core_step_ratio'])} | {best[0]} | "
                     f"{best[1]:.2f} | {'yes' if entry['ours_at_or_below_best_peer_step'] else 'no'} | "
                     f"{', '.join(f'{x:.2f}' for x in paired) or '–'} | "
                     f"{entry['ours_peak_rss_ratio']:.2f} | {_fmt(entry['best_peer_peak_rss_ratio'])} | "
                     f"{'yes' if entry['ours_at_or_below_best_peer_rss'] else 'no'} |")
    return result, lines


def to_markdown(result: dict) -> str:
    env = result["environments"]
    lines = [f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}  ",
             f"unipetl environment: torch {env['unipetl']['torch']}, transformers {env['unipetl']['transformers']}, "
             f"peft {env['unipetl']['peft']}, {env['unipetl']['threads']} threads, python {env['unipetl']['python']}  ",
             f"adapters environment ({env['adapters']['executable']}): adapters {env['adapters']['adapters']}, torch "
             f"{env['adapters']['torch']}, transformers {env['adapters']['transformers']}, {env['adapters']['threads']} threads, "
             f"python {env['adapters']['python']}  ",
             f"Model: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) + a 2-label head, SDPA attention in both environments.  ",
             f"Batch {result['batch_size']} x {result['seq_len']} tokens, {result['steps']} timed steps (forward + backward + "
             f"AdamW) after {result['warmup']} warm-up, {result['rounds']} rounds; each cell is the median over rounds of a "
             "fresh process's median step. Rounds run every row once, the libraries interleaved method by method, the "
             "order reversed on alternate rounds. Ratios: to `full` of the same library (unipetl's full under transformers "
             f"{env['unipetl']['transformers']}, adapters' plain full under transformers {env['adapters']['transformers']}) "
             "and to our unipetl `full`, all measured in this run. Peak RSS: the process's max RSS after training. "
             "Trainable parameters include the 770-parameter classification head; every trainable parameter is in AdamW "
             f"(lr 1e-4; implementation: {result.get('adamw', 'default (for-loop)')}, the same in both environments).", "",
             "| library | method | row | sizes | trainable params | step (s) | step / same-library full | step / unipetl full "
             "| peak RSS (MB) | RSS / same-library full | RSS / unipetl full | step per round (s) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['library']} | {row['family']} | {row['label']} | {row['sizes']} | | failed: {row['error']} "
                         "| | | | | | |")
            continue
        lines.append(f"| {row['library']} | {row['family']} | {row['label']} | {row['sizes']} | {row['trainable_params']:,} | "
                     f"{row['step_seconds']:.3f} | {_fmt(row['step_ratio_same_library_full'])} | "
                     f"{_fmt(row['step_ratio_unipetl_full'])} | {row['peak_rss_mb']:.0f} | "
                     f"{_fmt(row['peak_rss_ratio_same_library_full'])} | {_fmt(row['peak_rss_ratio_unipetl_full'])} | "
                     f"{', '.join(f'{s:.3f}' for s in row['step_seconds_all'])} |")
    if result.get("best_peer"):
        core = result.get("core_file") or "none"  # --core: bench_core.py's results, the source of PEFT's ratios
        lines += ["", "Best peer per method: the lowest step / unipetl-full ratio among adapters (this run: its seconds "
                  f"over our full's) and PEFT (from --core {core}, an earlier run, ratios to our full there, where it has "
                  "them); peak RSS as each row's ratio to its own environment's full. For MAM the peer is adapters' "
                  f"MAMConfig at our sizes. `ours (core)` is our ratio in {core}. `ours / peer step, same round`: our step "
                  "over the adapters peer's in each round (the two ran back to back), the spread shows the noise.", "",
                  "| method | ours step / full | ours (core) | best peer (step) | its step / unipetl full | ours <= best? "
                  "| ours / peer step, same round | ours RSS / full | best peer RSS / own full | ours <= best? |",
                  "|---|---:|---:|---|---:|---|---|---:|---:|---|"] + result["best_peer_lines"]
    return "\n".join(lines) + "\n"


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every worker (OMP_NUM_THREADS); 0: torch's default (one per core)")
    parser.add_argument("--adapters-python", default=DEFAULT_ADAPTERS_PYTHON)
    parser.add_argument("--output", default="benchmarks/results/peer_adapters_cpu")
    parser.add_argument("--core", default="benchmarks/results/core_cpu.json", help="bench_core.py's results, for PEFT's ratios")
    args = parser.parse_args()
    if args.threads > 0:  # inherited by both libraries' workers
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    import peft
    import torch
    import transformers

    from unipetl.bench import machine_description, run_worker
    from unipetl.defaults import default_model_path

    command = "python benchmarks/bench_peer_adapters.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    model_path = default_model_path()
    environments = {
        "unipetl": {"executable": sys.executable, "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "peft": peft.__version__, "threads": torch.get_num_threads()},
        "adapters": {"executable": args.adapters_python, **describe_adapters_env(args.adapters_python)}}
    fused = ours_uses_fused_adamw()
    rows = build_rows(model_path, fused)
    runs = {row["label"] + "|" + row["library"]: [] for row in rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine_description(), "environments": environments, "model_path": model_path,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "adamw": "fused" if fused else "default (for-loop)",
              "core_file": args.core if Path(args.core).is_file() else None}
    started = time.time()
    for round_index in range(args.rounds):
        order = rows if round_index % 2 == 0 else rows[::-1]
        for row in order:
            if row["library"] == "unipetl":
                measured = run_worker(row["spec"], model_path, args.batch_size, args.seq_len, args.steps, args.warmup)
            else:
                measured = run_adapters_worker(args.adapters_python, row["spec"], model_path, args.batch_size, args.seq_len,
                                               args.steps, args.warmup)
            runs[row["label"] + "|" + row["library"]].append(measured)
            print(f"[{time.time() - started:6.0f}s] round {round_index + 1}/{args.rounds} {row['library']} {row['label']}: "
                  + (f"{measured['step_seconds']:.3f} s/step, peak {measured['peak_rss_mb']:.0f} MB, "
                     f"{measured['trainable_params']:,} trainable" if "error" not in measured
                     else f"FAILED {measured['error']}"), flush=True)
        # Written after every round, so that an interrupted run still leaves its rounds so far.
        result["rounds_completed"] = round_index + 1
        result["rows"] = summarise(rows, runs)
        result["best_peer"], result["best_peer_lines"] = best_peer_table(result["rows"], Path(args.core))
        Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
        Path(args.output + ".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        main()
