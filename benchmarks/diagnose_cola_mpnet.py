"""Does the prefix family's one class on CoLA follow the backbone? On MiniLM `prefix`, `mam_glue` and
`proprefix` predict class 1 for every CoLA test sentence at their defaults, where `pfeiffer` reaches
MCC 11.37 (benchmarks/reproduce.py). Here the same four train on MPNet-base (`all-mpnet-base-v2`, 12
layers, 768 wide; its head is RoBERTa's, a dense layer and tanh under the classifier) with the grid's
CoLA settings (all 7,695 training sentences, 2 epochs, length 64, seed 42) and each preset's rate.

    python benchmarks/diagnose_cola_mpnet.py --model FOLDER     # about half an hour a run on one thread
    python benchmarks/diagnose_cola_mpnet.py --report-only

FOLDER: the all-mpnet-base-v2 folder (see benchmarks/reproduce_mpnet.py). Each run's results.json is
kept in benchmarks/results/diagnose_cola_mpnet/cola/<method>/; the table goes to summary.md there.
"""

from pathlib import Path

from diagnose_mam import Diagnosis, Variant

VARIANTS = {method: Variant(method, ("cola",)) for method in ("pfeiffer", "prefix", "mam_glue", "proprefix")}
COLA_MPNET = Diagnosis(VARIANTS, ("cola",), (), Path("benchmarks/results/diagnose_cola_mpnet"),
                       "python benchmarks/diagnose_cola_mpnet.py --model FOLDER", "MPNet-base (all-mpnet-base-v2)")

if __name__ == "__main__":
    COLA_MPNET.main(__doc__)
