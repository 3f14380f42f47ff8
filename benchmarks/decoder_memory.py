"""Peak memory of diff pruning's L0 stage on SmolLM2-135M against full fine-tuning's (issue 23: at most 2.5x).

Each configuration runs in a process of its own (a process's peak resident set cannot be reset): load the
fp32 model, attach the method, run --steps AdamW steps on a batch of 8 x 64 tokens, and report the peak
resident set (ru_maxrss) with what it holds. Diff pruning's L0 stage trains a diff and a gate score per
weight of the backbone (two tensors of the backbone's size, each with a gradient and two AdamW moments)
beside the frozen weights; full fine-tuning trains the weights themselves (one gradient, two moments).

    python benchmarks/decoder_memory.py [--steps 2]
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

CONFIGURATIONS = ("full", "diffprune", "lora")


def measure(method: str, steps: int) -> dict:
    import torch
    import transformers

    import unipetl
    from unipetl.defaults import resolve_model

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    petl = unipetl.get_petl_model(model, method).train()
    trainable = [p for p in petl.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = torch.randint(100, 40000, (8, 64))
    for _ in range(steps):
        loss = petl(input_ids=batch, labels=batch).loss
        extra = petl.extra_loss()
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"method": method, "trainable_parameters": sum(p.numel() for p in trainable),
            "backbone_parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "after_load_rss_mib": loaded / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/decoder_memory_cpu")
    parser.add_argument("--one", choices=CONFIGURATIONS, help=argparse.SUPPRESS)  # the child process's configuration
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    from unipetl.bench import machine_description

    rows = []
    for method in CONFIGURATIONS:
        done = subprocess.run([sys.executable, __file__, "--one", method, "--steps", str(args.steps)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    full = next(r for r in rows if r["method"] == "full")["peak_rss_mib"]
    lines = ["Command: `python benchmarks/decoder_memory.py`", "", f"Machine: {machine_description()}  ",
             f"SmolLM2-135M-Instruct in fp32, {args.steps} AdamW steps on 8 x 64 tokens, each in its own process; "
             "peak resident set (ru_maxrss).", "",
             "| method | trainable parameters | peak RSS (MiB) | after loading the model (MiB) | peak / full fine-tuning's |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_parameters']:,} | {r['peak_rss_mib']:,.0f} | "
                     f"{r['after_load_rss_mib']:,.0f} | {r['peak_rss_mib'] / full:.2f} |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"rows": rows, "steps": args.steps}, indent=2) + "\n")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
