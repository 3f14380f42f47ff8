"""Training step time and peak memory of every preset on MiniLM, as ratios to full fine-tuning,
with PEFT's LoRA and prefix tuning in the same run, and two floor rows: a frozen backbone with no
method that still carries the gradient down to layer 0's attention or FFN output (unipetl.bench.floor_model),
the least any method with parameters there can cost. A table then sets issue 2's step-time targets
beside our ratio and the floor.

    python benchmarks/bench_core.py [--rounds 2] [--steps 6] [--output benchmarks/results/core_cpu]
    python benchmarks/bench_core.py --labels full "floor: attention" lora pfeiffer   # a subset (full always)
"""

import argparse
import json
from pathlib import Path

from unipetl.bench import MethodSpec, benchmark, to_markdown
from unipetl.defaults import default_model_path
from unipetl.presets import list_presets

SPECS = [MethodSpec("full", "unipetl", "full"),
         # torch's dropout sampler, as PEFT's rows and transformers' own training use it
         MethodSpec("full (torch dropout)", "unipetl", "full", fast_cpu_dropout=False),
         MethodSpec("floor: attention", "floor", "attention"),
         MethodSpec("floor: ffn_output", "floor", "ffn_output"),
         MethodSpec("lora r=8 (q,v)", "unipetl", "lora", {"attn_bn": 8, "lora_alpha": 16, "lora_dropout": 0.0}),
         MethodSpec("peft lora r=8 (q,v)", "peft", "lora", {"r": 8, "lora_alpha": 16}),
         MethodSpec("prefix l=200", "unipetl", "prefix"),
         MethodSpec("peft prefix l=200", "peft", "prefix", {"num_virtual_tokens": 200, "encoder_hidden_size": 800}),
         MethodSpec("prefix l=30", "unipetl", "prefix", {"attn_bn": 30}),
         MethodSpec("peft prefix l=30", "peft", "prefix", {"num_virtual_tokens": 30, "encoder_hidden_size": 800}),
         # mam's two parts at mam's sizes: its FFN adapter alone (prefix l=30 is the row above)
         MethodSpec("parallel bn=512 scale 4", "unipetl", "parallel", {"ffn_bn": 512, "ffn_adapter_scalar": 4.0})]
SPECS += [MethodSpec(name, "unipetl", name) for name in list_presets() if name not in ("full", "prefix")]

# Issue 2's targets (step / full, same run) -> the floor row of the method's lowest site, and PEFT's twin.
TARGETS = {"lora r=8 (q,v)": (0.72, "floor: attention", "peft lora r=8 (q,v)"),
           "pfeiffer": (0.65, "floor: ffn_output", None),
           "parallel": (0.68, "floor: ffn_output", None),
           "prefix l=30": (0.75, "floor: attention", "peft prefix l=30"),
           "prefix l=200": (0.75, "floor: attention", "peft prefix l=200"),
           "mam": (0.80, "floor: attention", None)}


def targets_markdown(result: dict) -> str:
    rows = {row["label"]: row for row in result["rows"] if "step_ratio" in row}
    lines = ["| method | target | ours step / full | its floor | floor step / full | ours - floor | PEFT step / full "
             "| target met? | target above the floor? |", "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for label, (target, floor, twin) in TARGETS.items():
        if label not in rows or floor not in rows:
            continue
        ours, low = rows[label]["step_ratio"], rows[floor]["step_ratio"]
        peft = f"{rows[twin]['step_ratio']:.3f}" if twin in rows else "–"
        lines.append(f"| {label} | {target:.2f} | {ours:.3f} | {floor} | {low:.3f} | {ours - low:+.3f} | {peft} "
                     f"| {'yes' if ours <= target else 'no'} | {'yes' if target >= low else 'no'} |")
    return "\n".join(lines) + "\n"


def rewrite_markdown(output: str) -> None:
    """Rewrite OUTPUT.md from OUTPUT.json (after a change of the tables' format, without measuring again)."""
    result = json.loads(Path(output + ".json").read_text())
    text = to_markdown(result) + "\nIssue 2's targets against our ratio and the floor of the method's lowest site:\n\n" \
        + targets_markdown(result)
    Path(output + ".md").write_text(f"Command: `{result['command']}`\n\n" + text)
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/core_cpu")
    parser.add_argument("--labels", nargs="+", help="measure only these rows (full is always measured)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite OUTPUT.md from OUTPUT.json, measure nothing")
    args = parser.parse_args()
    if args.markdown_only:
        return rewrite_markdown(args.output)
    specs = SPECS
    if args.labels:
        unknown = set(args.labels) - {s.label for s in SPECS}
        if unknown:
            parser.error(f"unknown --labels {sorted(unknown)}; rows: {[s.label for s in SPECS]}")
        specs = [s for s in SPECS if s.label == "full" or s.label in args.labels]
    result = benchmark(specs, default_model_path(), args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds)
    result["command"] = "python benchmarks/bench_core.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(repr, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v not in (None, False))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    rewrite_markdown(args.output)


if __name__ == "__main__":
    main()
