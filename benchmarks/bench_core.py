"""Training step time and peak memory of every preset on MiniLM, as ratios to full fine-tuning,
with PEFT's LoRA and prefix tuning in the same run.

    python benchmarks/bench_core.py [--rounds 2] [--steps 6] [--output benchmarks/results/core_cpu]
"""

import argparse
import json
from pathlib import Path

from unipetl.bench import MethodSpec, benchmark, to_markdown
from unipetl.defaults import default_model_path
from unipetl.presets import list_presets

SPECS = [MethodSpec("full", "unipetl", "full"),
         MethodSpec("lora r=8 (q,v)", "unipetl", "lora", {"attn_bn": 8, "lora_alpha": 16, "lora_dropout": 0.0}),
         MethodSpec("peft lora r=8 (q,v)", "peft", "lora", {"r": 8, "lora_alpha": 16}),
         MethodSpec("prefix l=200", "unipetl", "prefix"),
         MethodSpec("peft prefix l=200", "peft", "prefix", {"num_virtual_tokens": 200, "encoder_hidden_size": 800}),
         MethodSpec("prefix l=30", "unipetl", "prefix", {"attn_bn": 30}),
         MethodSpec("peft prefix l=30", "peft", "prefix", {"num_virtual_tokens": 30, "encoder_hidden_size": 800})]
SPECS += [MethodSpec(name, "unipetl", name) for name in list_presets() if name not in ("full", "prefix")]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/core_cpu")
    args = parser.parse_args()
    result = benchmark(SPECS, default_model_path(), args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds)
    result["command"] = "python benchmarks/bench_core.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.output + ".md").write_text(f"Command: `{result['command']}`\n\n" + to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
