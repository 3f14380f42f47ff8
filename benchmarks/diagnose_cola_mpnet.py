"""Does the prefix family's one class on CoLA follow the backbone? On MiniLM `prefix`, `mam_glue` and
`proprefix` predict class 1 for every CoLA test sentence at their defaults, where `pfeiffer` reaches
MCC 11.37 (benchmarks/reproduce.py). Here they and `pfeiffer` train on MPNet-base (`all-mpnet-base-v2`,
12 layers, 768 wide; its head is RoBERTa's, a dense layer and tanh under the classifier) with the
grid's CoLA settings (all 7,695 training sentences, 2 epochs, length 64, seed 42) at each preset's
rate (`mam_glue`'s head at its preset's 3e-3), and `prefix` also with 30 positions instead of 200, with
its head at 3e-3, and with both (`prefix_glue`'s setting), and the one prefix run that left class 1
(200 positions, head at 3e-3) at a second seed. The table lists the runs in the order they train and
says which have not run yet.

    python benchmarks/diagnose_cola_mpnet.py --model FOLDER     # about half an hour a run on one thread
    python benchmarks/diagnose_cola_mpnet.py --report-only

FOLDER: the all-mpnet-base-v2 folder (see benchmarks/reproduce_mpnet.py). Each run's results.json is
kept in benchmarks/results/diagnose_cola_mpnet/cola/<method>/; the table goes to summary.md there.
"""

from pathlib import Path

from diagnose_mam import Diagnosis, Variant

VARIANTS = {method: Variant(method, ("cola",)) for method in ("pfeiffer", "prefix")}
# On MiniLM the untrained 200-position prefix hides the input from [CLS] and 30 positions do not
# (probe_cola.py): is the number of positions what keeps `prefix` at one class here too?
VARIANTS["prefix l=30"] = Variant("prefix", ("cola",), overrides=(("attn_bn", 30),))
# On MiniLM the head at 3e-3 ended `mam_glue`'s and the 30-position prefix's one class, not the
# 200-position one's (diagnose_cola.py): on a backbone where CoLA's signal is strong, is the head enough?
VARIANTS["prefix, head lr 0.003"] = Variant("prefix", ("cola",), head_learning_rate=3e-3)
# both, the candidate default of benchmarks/sweep_head_rate.py: does it learn CoLA here too?
VARIANTS["prefix l=30, head lr 0.003"] = Variant("prefix", ("cola",), head_learning_rate=3e-3,
                                                 overrides=(("attn_bn", 30),))
VARIANTS |= {method: Variant(method, ("cola",)) for method in ("mam_glue", "proprefix")}
# 200 positions with the faster head were the only prefix run here to leave class 1: again at another seed
VARIANTS["prefix, head lr 0.003, seed 43"] = Variant("prefix", ("cola",), head_learning_rate=3e-3, seed=43)
COLA_MPNET = Diagnosis(VARIANTS, ("cola",), (), Path("benchmarks/results/diagnose_cola_mpnet"),
                       "python benchmarks/diagnose_cola_mpnet.py --model FOLDER", "MPNet-base (all-mpnet-base-v2)")

if __name__ == "__main__":
    COLA_MPNET.main(__doc__)
