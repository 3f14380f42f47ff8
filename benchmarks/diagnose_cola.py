"""Why the prefix family predicts one class on CoLA: `prefix`, `mam`, `mam_glue`, `prompt_tuning` and
`proprefix` reach MCC 0 (class 1 for every test sentence) in the grid, where adapters and LoRA reach
10 to 16 and full fine-tuning 20.

Two things may stand between these methods and CoLA's weak signal (a logistic-regression probe on the
frozen MiniLM's [CLS] state reaches an MCC under 10; about 70 % of the sentences are class 1):
- the task head (BERT's pooler and the classifier) trains at the method's rate, 3e-4 for `prefix` and
  `mam_glue` and 1e-4 for `mam`, against 1e-3 for the adapters, so it may settle on the majority
  class before it reads anything. Each method trains here with its own rate and the head at 3e-3;
- the untrained module may already hide the signal from the head's position: `probe_cola.py` measures
  that. `prefix` (200 positions) hides all of it, `proprefix` and `prompt_tuning` part, `mam` and
  `mam_glue` none; so `prefix` also trains with 30 positions, at its own rate and with the head at 3e-3.
`mam_glue` with the faster head is checked on SST-2 and STS-B too (SST-2 at two more seeds, with and
without), since a default must not trade one task for another, and with a milder head at 1e-3; `mam`,
which keeps one class with the faster head, also trains at 3e-4 instead of its 1e-4, and each of its
parts alone (its 30-position prefix, its r = 512 scaled parallel adapter) at 1e-4 with the faster head.
For the four left at class 1 (`prefix`, `mam`, `prompt_tuning`, `proprefix`): shorter modules (20 and 100
prompts, ProPrefix with 30 positions), a second seed of ProPrefix's faster head, and three times the
grid's budget (6 epochs) with the head at 3e-3; for `prefix` and `proprefix`, still at class 1 then, their
papers' budgets (He et al.: 10 epochs on GLUE; ProPETL: 20 on CoLA).

Seed 42 unless the run's name gives another; benchmarks/reproduce.py's settings for each task; every
epoch's validation score is recorded.

    python benchmarks/diagnose_cola.py          # trains what is missing (one thread), then the table
    python benchmarks/diagnose_cola.py --report-only

Each run's results.json is kept in benchmarks/results/diagnose_cola/<task>/<variant>/ (the module is
not); finished runs are skipped. The 10- and 20-epoch runs also keep what they printed (train.log: the
Trainer's loss every 50 steps). The table, with the grid's own seed-42 cells beside it, goes to
benchmarks/results/diagnose_cola/summary.md.
"""

from pathlib import Path

from diagnose_mam import Diagnosis, Variant

HEAD_RATE = 3e-3
PREFIX_FAMILY = ("prefix", "mam_glue", "prompt_tuning", "proprefix", "mam")
# prompt_tuning's own rate is 3e-3 already: its variant repeats the grid's run
VARIANTS = {f"{preset}, head lr {HEAD_RATE:g}": Variant(preset, ("cola",), head_learning_rate=HEAD_RATE)
            for preset in PREFIX_FAMILY}
# the one whose collapse goes: does the faster head cost it on the tasks it already learned?
VARIANTS[f"mam_glue, head lr {HEAD_RATE:g}"] = Variant("mam_glue", ("cola", "sst2", "stsb"),
                                                       head_learning_rate=HEAD_RATE)
# the untrained `prefix` hides all of CoLA's signal from the head's position (probe_cola.py): its 200
# positions against 30 (mam's length), at the preset's rate and with the head at 3e-3
VARIANTS |= {f"prefix l=30{extra}": Variant("prefix", ("cola",), head_learning_rate=rate, overrides=(("attn_bn", 30),))
             for extra, rate in (("", None), (f", head lr {HEAD_RATE:g}", HEAD_RATE))}
# SST-2's test split is 872 sentences (a point is 9 of them): two more seeds of both, with and without
for seed in (43, 44):
    # the head at the preset's rate, as it trained before the preset set 3e-3 (sweep_head_rate.py)
    VARIANTS[f"mam_glue, seed {seed}"] = Variant("mam_glue", ("sst2",), head_learning_rate=3e-4, seed=seed)
    VARIANTS[f"mam_glue, head lr {HEAD_RATE:g}, seed {seed}"] = Variant(
        "mam_glue", ("sst2",), head_learning_rate=HEAD_RATE, seed=seed)
# a milder head rate for mam_glue: does 1e-3 end the collapse without the cost on SST-2?
VARIANTS["mam_glue, head lr 0.001"] = Variant("mam_glue", ("cola", "sst2"), head_learning_rate=1e-3)
for seed in (43, 44):
    VARIANTS[f"mam_glue, head lr 0.001, seed {seed}"] = Variant("mam_glue", ("sst2",), head_learning_rate=1e-3, seed=seed)
# `mam` keeps class 1 with the faster head: at its rate 1e-4, is it the rest of the module that is slow?
VARIANTS[f"mam, lr 3e-4, head lr {HEAD_RATE:g}"] = Variant("mam", ("cola",), 3e-4, head_learning_rate=HEAD_RATE)
# ... and which of its parts keeps it there: each alone, at mam's rate 1e-4 with the head at 3e-3
VARIANTS[f"mam's prefix alone, head lr {HEAD_RATE:g}"] = Variant(
    "mam", ("cola",), head_learning_rate=HEAD_RATE, overrides=(("ffn_mode", "none"), ("ffn_option", "none")))
VARIANTS[f"mam's FFN adapter alone, head lr {HEAD_RATE:g}"] = Variant(
    "mam", ("cola",), head_learning_rate=HEAD_RATE, overrides=(("attn_mode", "none"), ("attn_option", "none")))
# `prompt_tuning` (200 prompts, He et al.'s summarisation length) and `proprefix` (64 positions) keep class 1
# with the faster head too: is it their length against CoLA's 12-token sentences, as for `prefix`?
# Lester et al.'s prompt lengths 20 and 100 (their default); ProPrefix with prefix_glue's 30 positions.
VARIANTS |= {f"prompt_tuning l={n}": Variant("prompt_tuning", ("cola",), overrides=(("attn_bn", n),)) for n in (20, 100)}
VARIANTS |= {f"proprefix l=30{extra}": Variant("proprefix", ("cola",), head_learning_rate=rate, overrides=(("attn_bn", 30),))
             for extra, rate in (("", None), (f", head lr {HEAD_RATE:g}", HEAD_RATE))}
# proprefix's both classes at MCC -2.07 with the faster head: a second seed says whether that is chance
VARIANTS[f"proprefix, head lr {HEAD_RATE:g}, seed 43"] = Variant("proprefix", ("cola",), head_learning_rate=HEAD_RATE, seed=43)
# None of the lengths above leaves class 1 for `prompt_tuning` or `proprefix`: is it the grid's 2 epochs?
# Three times the budget (6 epochs; ProPETL's paper trains CoLA for 20) for each method still at class 1,
# with the head at 3e-3 (`prompt_tuning` at 20 prompts: 200 take 40-70 minutes a run here).
VARIANTS |= {f"{name}, 6 epochs": Variant(preset, ("cola",), epochs_factor=3.0, head_learning_rate=HEAD_RATE,
                                          overrides=overrides)
             for name, preset, overrides in ((f"prefix, head lr {HEAD_RATE:g}", "prefix", ()),
                                             (f"proprefix, head lr {HEAD_RATE:g}", "proprefix", ()),
                                             ("prompt_tuning l=20", "prompt_tuning", (("attn_bn", 20),)),
                                             (f"mam, head lr {HEAD_RATE:g}", "mam", ()))}
# `mam` learns CoLA in 6 epochs with the faster head: does the budget alone do it, at the preset's own rate?
VARIANTS["mam, 6 epochs"] = Variant("mam", ("cola",), epochs_factor=3.0)
# `prefix` and `proprefix` keep class 1 at 6 epochs too: at their papers' own budgets? He et al. train GLUE
# tasks for 10 epochs, ProPETL trains CoLA for 20 (with the head at 3e-3, as the 6-epoch runs).
VARIANTS |= {f"{preset}, head lr {HEAD_RATE:g}, {epochs} epochs": Variant(preset, ("cola",), epochs_factor=epochs / 2,
                                                                         head_learning_rate=HEAD_RATE)
             for preset, epochs in (("prefix", 10), ("proprefix", 20))}
COLA = Diagnosis(VARIANTS, ("cola", "sst2", "stsb"), PREFIX_FAMILY + ("parallel",),
                 Path("benchmarks/results/diagnose_cola"), "python benchmarks/diagnose_cola.py")

if __name__ == "__main__":
    COLA.main(__doc__)
