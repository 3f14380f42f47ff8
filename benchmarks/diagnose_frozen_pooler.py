"""Why LoRA does not learn STS-B on MiniLM in the reproduction: the frozen BERT pooler.

BertForSequenceClassification puts its regression head on the pooler (dense + tanh over [CLS]),
which belongs to the backbone and so stays frozen under every PETL method (as under PEFT). On the
sentence-transformers MiniLM checkpoint, whose [CLS] was never trained for pooling, the pooler's
outputs are small and nearly constant across inputs, so a method that cannot move [CLS] quickly
(LoRA on q, v) leaves the head predicting the mean. This script measures the pooler's outputs and
fits 1,024 STS-B training pairs for a fixed number of steps with the pooler frozen and trained
(`train_pooler`).

    python benchmarks/diagnose_frozen_pooler.py [--steps 120] [--methods lora pfeiffer]
"""

import argparse
import csv
import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from unipetl import PetlConfig, get_petl_model
from unipetl.defaults import default_model_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "STS-B" / "train.tsv"


def load_pairs(n: int, tokenizer, max_length: int):
    with open(DATA, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    batch = tokenizer([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True,
                      max_length=max_length, padding="max_length", return_tensors="pt")
    return batch, torch.tensor([float(r["score"]) for r in rows])


def fit(method: str, train_pooler: bool, batch, labels, steps: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=1)
    model = get_petl_model(base, PetlConfig.from_preset(method, train_pooler=train_pooler))
    groups = model.parameter_groups(lr, 0.0)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(0, labels.numel(), (16,))
        loss = model(**{k: v[index] for k, v in batch.items()}, labels=labels[index]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        predictions = model(**batch).logits.squeeze(-1)
    return {"method": method, "pooler": "trained" if train_pooler else "frozen",
            "loss_first_20": sum(losses[:20]) / 20, "loss_last_20": sum(losses[-20:]) / 20,
            "train_pearson": float(torch.corrcoef(torch.stack([predictions, labels]))[0, 1]),
            "prediction_std": float(predictions.std())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--methods", nargs="+", default=["lora", "pfeiffer"])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/frozen_pooler_cpu")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    batch, labels = load_pairs(args.examples, tokenizer, 64)
    base = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=1).eval()
    with torch.no_grad():
        out = base.bert(**batch)
    stats = {"pooler_abs_mean": float(out.pooler_output.abs().mean()),
             "pooler_per_dim_std": float(out.pooler_output.std(0).mean()),
             "cls_per_dim_std": float(out.last_hidden_state[:, 0].std(0).mean())}
    rows = [fit(m, trained, batch, labels, args.steps, args.learning_rate, args.seed)
            for m in args.methods for trained in (False, True)]
    command = "python benchmarks/diagnose_frozen_pooler.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "output")
    lines = [f"Command: `{command}`", "",
             f"Machine: CPU, {torch.get_num_threads()} threads; torch {torch.__version__}. MiniLM, STS-B's first "
             f"{args.examples} training pairs (length 64), {args.steps} AdamW steps of 16 at lr {args.learning_rate}, "
             "scored on the same pairs (a fitting test, not a generalisation test).", "",
             f"Frozen pooler over these pairs: mean |output| {stats['pooler_abs_mean']:.3f}, per-dimension standard "
             f"deviation {stats['pooler_per_dim_std']:.3f} ([CLS] hidden state: {stats['cls_per_dim_std']:.3f}).", "",
             "| method | pooler | loss, first 20 steps | loss, last 20 steps | Pearson on the fitted pairs | prediction std |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['pooler']} | {r['loss_first_20']:.3f} | {r['loss_last_20']:.3f} | "
              f"{r['train_pearson']:.3f} | {r['prediction_std']:.4f} |" for r in rows]
    Path(args.output + ".json").write_text(json.dumps({"command": command, "pooler": stats, "rows": rows}, indent=1) + "\n")
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
