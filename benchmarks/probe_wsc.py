"""Whether the frozen backbone carries anything about WSC that a head could read: every method of the
grid, full fine-tuning included, predicts class 0 for every WSC test example at most seeds (63.46,
the majority share, as every method in ScaLearn's SuperGLUE table scores).

WSC's examples come as minimal pairs: most training inputs share their "pronoun: sentence" with an
input of the other label and differ only in the candidate noun, so a head that cannot tell which
candidate the pronoun means sees the same input with both labels, and its best answer is the prior.
The script counts those pairs, then fits a logistic-regression probe on the frozen MiniLM's last
layer, at the head's position ([CLS]) and averaged over the tokens (the pooling the backbone was
trained with), for the grid's input (the sentence paired with the candidate). Balanced class
weights, so that it cannot score by the majority class. Reported: 5-fold cross-validated accuracy on
the 554 training pairs, with folds stratified by label (a sentence's twin then often sits in
another fold, with the other label) and with folds grouped by sentence (each sentence in one fold);
the same with the labels shuffled (what no signal scores); and the probe fit on all 554 and scored
on the 104 test pairs, with the share it predicts as class 0.

    python benchmarks/probe_wsc.py     # about a minute on one thread

Writes benchmarks/results/diagnose_wsc/probe.md.
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score
from transformers import AutoModel, AutoTokenizer

import reproduce
import unipetl
from unipetl.bench import machine_description
from unipetl.tasks.loaders import load_split

OUT = reproduce.ROOT / "results" / "diagnose_wsc" / "probe.md"
SHUFFLES = 5  # label permutations averaged for the no-signal row


def pairs(split: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    examples = load_split("wsc", split, reproduce.GLUE)
    return [tuple(example.texts) for example in examples], np.array([example.label for example in examples])


def twins(texts: list[tuple[str, str]], labels: np.ndarray) -> int:
    """How many examples share their first segment ("pronoun: sentence") with one of the other label."""
    seen = {}
    for (sentence, _), label in zip(texts, labels):
        seen.setdefault(sentence, set()).add(label)
    return sum(len(seen[sentence]) > 1 for sentence, _ in texts)


@torch.no_grad()
def features(model, tokenizer, texts: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The last layer at the first position and averaged over the real tokens."""
    found = {"[CLS]": [], "token mean": []}
    for start in range(0, len(texts), 32):
        first, second = zip(*texts[start:start + 32])
        batch = tokenizer(list(first), list(second), padding=True, truncation=True, max_length=64, return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        found["[CLS]"].append(states[:, 0])
        found["token mean"].append((states * mask).sum(1) / mask.sum(1))
    return {name: torch.cat(parts).numpy() for name, parts in found.items()}


def main() -> None:
    torch.set_num_threads(1)
    path = unipetl.defaults.default_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train_x, train_y = pairs("train")
    test_x, test_y = pairs("validation")
    train_f, test_f = features(model, tokenizer, train_x), features(model, tokenizer, test_x)
    stratified = StratifiedKFold(5, shuffle=True, random_state=42)
    by_sentence = list(GroupKFold(5).split(train_x, train_y, groups=[sentence for sentence, _ in train_x]))
    rng = np.random.default_rng(42)
    lines = []
    for name in train_f:
        probe = LogisticRegression(max_iter=5000, class_weight="balanced")
        cells = []
        for folds in (stratified, by_sentence):
            real = cross_val_score(probe, train_f[name], train_y, cv=folds).mean()
            shuffled = np.mean([cross_val_score(probe, train_f[name], rng.permutation(train_y), cv=folds).mean()
                                for _ in range(SHUFFLES)])
            cells += [f"{100 * real:.2f}", f"{100 * shuffled:.2f}"]
        predicted = probe.fit(train_f[name], train_y).predict(test_f[name])
        lines.append(f"| {name} | {' | '.join(cells)} | {100 * (predicted == test_y).mean():.2f} | "
                     f"{100 * (predicted == 0).mean():.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join([
        "Command: `python benchmarks/probe_wsc.py`", "",
        f"Machine: {machine_description()}. Backbone: the embedded MiniLM, frozen.  ",
        f"WSC as the grid feeds it (\"pronoun: sentence\" paired with the candidate, length 64). Training pairs: "
        f"{len(train_y)} ({100 * (train_y == 0).mean():.1f} % class 0); test pairs (the official dev set): {len(test_y)} "
        f"({100 * (test_y == 0).mean():.1f} % class 0). Training pairs that share their \"pronoun: sentence\" with "
        f"one of the other label: {twins(train_x, train_y)} of {len(train_y)}; test: {twins(test_x, test_y)} of "
        f"{len(test_y)}. Logistic regression with balanced class weights; cross-validation: 5 folds, stratified by "
        f"label (seed 42) or grouped by sentence; shuffled: the mean over {SHUFFLES} label permutations.", "",
        "| features | CV accuracy, stratified folds | same, labels shuffled | CV accuracy, folds by sentence | "
        "same, labels shuffled | test accuracy | test predicted class 0 (%) |",
        "|---|---:|---:|---:|---:|---:|---:|", *lines]) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
