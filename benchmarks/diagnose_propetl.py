"""Why the ProPETL claims fail in the reproduction: `proadapter` below `pfeiffer` and `prolora` below
`lora`, by the most on CoLA and STS-B, the tasks the grid trains for 2 epochs on thousands of examples.

ProPETL's paper trains 20 epochs on CoLA and STS-B (batch 128). Its prototype is shared by every
layer and each layer selects its part with masks that start at random, which may need more steps
than an adapter or LoRA of the layer's own. Here both pairs train with twice the grid's epochs (CoLA
first, then STS-B): if the gaps close, the grid's budget, not the method, is what the claims fail on.

Seed 42, benchmarks/reproduce.py's settings for each task; every epoch's validation score is recorded.

    python benchmarks/diagnose_propetl.py          # trains what is missing (one thread), then the table
    python benchmarks/diagnose_propetl.py --report-only

Each run's results.json is kept in benchmarks/results/diagnose_propetl/<task>/<variant>/ (the module
is not); finished runs are skipped. The table, with the grid's own seed-42 cells beside it, goes to
benchmarks/results/diagnose_propetl/summary.md.
"""

from pathlib import Path

from diagnose_mam import Diagnosis, Variant

PAIRS = ("proadapter", "pfeiffer", "prolora", "lora")
VARIANTS = {f"{preset}, twice the epochs": Variant(preset, ("cola", "stsb"), epochs_factor=2.0) for preset in PAIRS}
PROPETL = Diagnosis(VARIANTS, ("cola", "stsb"), PAIRS, Path("benchmarks/results/diagnose_propetl"),
                    "python benchmarks/diagnose_propetl.py")

if __name__ == "__main__":
    PROPETL.main(__doc__)
