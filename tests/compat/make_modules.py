"""Write the task modules and logits that tests/test_compat_modules.py loads (run once, with the code
of the day; the files are committed). They pin the on-disk format and the behaviour of each method:
a later refactor must load them and give the same logits.

    python tests/compat/make_modules.py
"""

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import unipetl  # noqa: E402
from tiny_models import tiny_batch, tiny_model  # noqa: E402
from unipetl import PetlConfig  # noqa: E402

PRESETS = ("pfeiffer", "lora", "proadapter", "prolora", "mam", "bitfit", "prompt_tuning", "houlsby")


def perturb(petl, seed):
    """Trained-looking weights: every method (and head) tensor moved off its initialisation."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in petl.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)


def inputs():
    return {k: v for k, v in tiny_batch("bert").items() if k != "labels"}


def main():
    out = HERE / "modules"
    if out.exists():
        shutil.rmtree(out)
    expected = {}
    for index, preset in enumerate(PRESETS):
        petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset(preset, attn_bn=8) if preset in (
            "mam", "prompt_tuning") else preset)
        perturb(petl, index)
        petl.eval()
        with torch.no_grad():
            expected[preset] = petl(**inputs()).logits
        petl.save(out / preset)

    # Diff pruning: the L0 stage's diff and gates, projected to a sparse diff, then saved.
    petl = unipetl.get_petl_model(tiny_model("bert"), PetlConfig.from_preset("diffprune", diff_density=0.05))
    perturb(petl, 50)
    petl.project()
    petl.eval()
    with torch.no_grad():
        expected["diffprune"] = petl(**inputs()).logits
    petl.save(out / "diffprune")

    # ProPETL-m: two tasks sharing one prototype, saved as a family.
    from unipetl.multitask import MultiTaskModel, share_backbone
    from unipetl.storage import save_family

    models = [tiny_model("bert", num_labels=3), tiny_model("bert", num_labels=2, seed=5)]
    models[1].bert = models[0].bert
    share_backbone(models)
    petl = unipetl.PetlModel(models[0], PetlConfig.from_preset("proadapter", mask_keep=0.3), tasks=["a", "b"])
    joint = MultiTaskModel(petl, ["a", "b"], models)
    perturb(joint, 60)
    joint.eval()
    with torch.no_grad():
        for index, task in enumerate(("a", "b")):
            expected[f"family_{task}"] = joint(task=torch.tensor(index), **inputs()).logits
    save_family({t: (petl.for_task_model(m, task=t), {"name": t}) for t, m in zip(("a", "b"), models)}, out / "family")

    # ScaLearn over two Pfeiffer sources (stored beside it).
    from unipetl.transfer import get_transfer_model

    for i in range(2):
        source = unipetl.get_petl_model(tiny_model("bert"), "pfeiffer")
        perturb(source, 70 + i)
        source.save(out / "sources" / f"source{i}")
    sources = [out / "sources" / f"source{i}" for i in range(2)]
    for index, method in enumerate(("scalearn", "adapterfusion")):
        petl = get_transfer_model(tiny_model("bert"), sources, method)
        perturb(petl, 80 + index)
        petl.eval()
        with torch.no_grad():
            expected[method] = petl(**inputs()).logits
        petl.save(out / method)
    save_file({k: v.contiguous() for k, v in expected.items()}, str(HERE / "logits.safetensors"))
    print(f"wrote {len(expected)} modules under {out}")


if __name__ == "__main__":
    main()
