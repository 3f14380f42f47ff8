"""Split protocols: which examples train, which select checkpoints, which report the score.

* ``dev_as_test`` (default): train = official train; validation = test = official dev. Model
  selection then sees the test set; that is the common GLUE practice (dev numbers in papers), so
  numbers are comparable with the literature but optimistic.
* ``hyperformer`` (ProPETL-RoBERTa, Compacter/HyperFormer; ALGORITHMS.md §2.6): a task with fewer
  than 10,000 training rows splits a seeded permutation of dev in halves, validation first (the
  smaller half when odd) then test; a larger task moves 1,000 seeded training rows to validation
  and tests on the full dev set.
* ``scalearn`` (§5.5): a stratified 10 % of train (sklearn's train_test_split, seeded; no
  stratification for STS-B, ReCoRD and CB) is validation, dev is test. ReCoRD keeps its full train
  and uses dev as both validation and test, as ScaLearn does.

Splits act on dataset rows as the reference code does: one row per example, except ReCoRD, whose
rows are queries, so all candidate examples of one query move together. Permutations use
``numpy.random.default_rng(seed).permutation``, the generator HF's ``Dataset.shuffle(seed=...)``
uses. MNLI also returns ``test_mismatched``. The polarity corpus has no official dev set and
always uses its own fixed seeded split (see polarity.py), whatever the protocol.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from .loaders import load_split
from .polarity import load_polarity, local_polarity_file
from .registry import Example, TaskSpec, get_task

PROTOCOLS = ("dev_as_test", "hyperformer", "scalearn")
SMALL_TASK_ROWS = 10_000
HYPERFORMER_VALIDATION = 1_000


def _units(spec: TaskSpec, examples: list[Example]) -> list[list[int]]:
    """Rows as lists of example indices: one each, or one per ReCoRD query."""
    if spec.name != "record":
        return [[i] for i in range(len(examples))]
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group, []).append(i)
    return list(groups.values())


def _take(examples: list[Example], units: list[list[int]], chosen) -> list[Example]:
    return [examples[i] for u in chosen for i in units[u]]


def make_splits(
    task: str | TaskSpec,
    data_dir: str | os.PathLike | None = None,
    protocol: str = "dev_as_test",
    seed: int = 42,
    max_train_samples: int | None = None,
    max_validation_samples: int | None = None,
) -> dict[str, list[Example]]:
    """{'train', 'validation', 'test'} (plus 'test_mismatched' for MNLI) under a protocol.

    ``max_validation_samples`` caps the split that picks the best epoch (it is evaluated every
    epoch); it is refused where the validation split is also the test split (dev_as_test)."""
    spec = get_task(task)
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown split protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    if spec.name == "polarity":
        out = load_polarity(seed=seed, path=local_polarity_file(data_dir))
    else:
        out = _protocol_splits(spec, data_dir, protocol, seed)
        if spec.name == "mnli":
            out["test_mismatched"] = load_split(spec, "validation_mismatched", data_dir)
    if max_train_samples is not None:
        out["train"] = _subsample(spec, out["train"], max_train_samples, seed)
    if max_validation_samples is not None:
        if out["validation"] is out["test"]:
            raise DataError(f"max_validation_samples: under protocol {protocol!r} {spec.name}'s validation split is "
                            "its test split, which is never subsampled; use protocol 'scalearn' or 'hyperformer'")
        out["validation"] = _subsample(spec, out["validation"], max_validation_samples, seed, "max_validation_samples")
    return out


def _protocol_splits(spec: TaskSpec, data_dir, protocol: str, seed: int) -> dict[str, list[Example]]:
    train = load_split(spec, "train", data_dir)
    dev = load_split(spec, "validation", data_dir)
    if protocol == "dev_as_test":
        return {"train": train, "validation": dev, "test": dev}

    rng = np.random.default_rng(seed)
    train_units = _units(spec, train)
    if protocol == "hyperformer":
        if len(train_units) < SMALL_TASK_ROWS:
            dev_units = _units(spec, dev)
            order = rng.permutation(len(dev_units))
            half = len(order) // 2
            return {"train": train, "validation": _take(dev, dev_units, order[:half]),
                    "test": _take(dev, dev_units, order[half:])}
        order = rng.permutation(len(train_units))
        return {"train": _take(train, train_units, order[HYPERFORMER_VALIDATION:]),
                "validation": _take(train, train_units, order[:HYPERFORMER_VALIDATION]), "test": dev}

    # scalearn
    if spec.name == "record":
        return {"train": train, "validation": dev, "test": dev}
    from sklearn.model_selection import train_test_split

    ids = np.arange(len(train_units))
    stratify = [train[u[0]].label for u in train_units] if spec.stratify else None
    keep, held = train_test_split(ids, test_size=0.1, random_state=seed, shuffle=True, stratify=stratify)
    return {"train": _take(train, train_units, keep), "validation": _take(train, train_units, held), "test": dev}


def _subsample(spec: TaskSpec, train: list[Example], n: int, seed: int, name: str = "max_train_samples") -> list[Example]:
    """A seeded subset of n rows, kept in their original order."""
    if n < 1:
        raise DataError(f"{name} must be a positive number of rows, got {n}")
    units = _units(spec, train)
    if n >= len(units):
        return train
    # A generator of its own (seed + 1) so the subset does not repeat the protocol's permutation.
    chosen = np.sort(np.random.default_rng(seed + 1).permutation(len(units))[:n])
    return _take(train, units, chosen)


def split_off_validation(examples: list[Example], fraction: float, seed: int,
                         stratify: bool = True) -> tuple[list[Example], list[Example]]:
    """(rest, validation): a seeded, optionally label-stratified fraction held out (users' own data)."""
    from sklearn.model_selection import train_test_split

    if len(examples) < 10:
        raise DataError(f"{len(examples)} training rows are too few to hold out a validation split; give a validation file")
    ids = np.arange(len(examples))
    labels = [ex.label for ex in examples] if stratify else None
    try:
        keep, held = train_test_split(ids, test_size=fraction, random_state=seed, shuffle=True, stratify=labels)
    except ValueError:  # a class too rare to stratify: fall back to a plain seeded split
        keep, held = train_test_split(ids, test_size=fraction, random_state=seed, shuffle=True)
    return [examples[i] for i in keep], [examples[i] for i in held]
