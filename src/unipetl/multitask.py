"""Multi-task training: one backbone and one PETL method shared by several tasks, a head per task.

Each task gets its own transformers model object whose backbone *is* the shared backbone module, so
the method attached once (to that shared module) serves every task, and each task keeps its own
head class and loss (classification, regression, multiple choice). Batches hold one task each; the
task of a batch is drawn with temperature sampling, p_i proportional to n_i^(1/T) (ALGORITHMS.md
§2.9: T = 10 for ProPETL-T5, T = 1 (proportional) for ScaLearn's joint baselines).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Sampler

from .errors import ConfigError


def share_backbone(models: list[nn.Module]) -> None:
    """Make every model use the first model's backbone module (heads stay separate)."""
    first = models[0]
    prefix = first.base_model_prefix
    for model in models[1:]:
        if type(model.base_model) is not type(first.base_model):
            raise ConfigError("multi-task models must share one backbone architecture")
        setattr(model, prefix, first.base_model)


class MultiTaskModel(nn.Module):
    """Routes each batch to its task's model; `petl` is the PetlModel attached to the shared backbone."""

    def __init__(self, petl, task_names: list[str], task_models: list[nn.Module]):
        super().__init__()
        self.petl = petl
        self.task_names = list(task_names)
        # Heads only: the shared backbone is registered once, through self.petl.
        self.heads = nn.ModuleDict({name: nn.ModuleDict({n: m for n, m in model.named_children()
                                                         if n != model.base_model_prefix})
                                    for name, model in zip(task_names, task_models)})
        self._task_models = dict(zip(task_names, task_models))

    def forward(self, task: torch.Tensor, **inputs):
        name = self.task_names[int(task.reshape(-1)[0])]
        self.petl.set_task(name)
        return self.petl.forward_on(self._task_models[name], **inputs)

    def parameter_groups(self, learning_rate: float, weight_decay: float,
                         head_learning_rate: float | None = None) -> list[dict]:
        """The method's groups over every task; with ``head_learning_rate``, every task's head (and the
        shared trained pooler) at that rate."""
        return self.petl.parameter_groups(learning_rate, weight_decay, self.named_parameters(), head_learning_rate,
                                          heads=list(self.heads.parameters()))

    def extra_loss(self):
        return self.petl.extra_loss()


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each; a batch's task is drawn with p_i ∝ n_i^(1/T), its examples uniformly.

    The number of batches per epoch is that of one pass over all examples, so epochs, schedules and
    evaluation intervals keep their usual meaning.
    """

    def __init__(self, sizes: list[int], batch_size: int, temperature: float = 1.0, seed: int = 42):
        if temperature <= 0:
            raise ConfigError(f"temperature={temperature} must be positive")
        self.sizes, self.batch_size, self.seed = list(sizes), batch_size, seed
        weights = np.asarray(self.sizes, dtype=float) ** (1.0 / temperature)
        self.probabilities = weights / weights.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(sum(self.sizes) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)  # the Trainer calls set_epoch every epoch
        for _ in range(len(self)):
            task = int(rng.choice(len(self.sizes), p=self.probabilities))
            picks = rng.integers(0, self.sizes[task], size=min(self.batch_size, self.sizes[task]))
            yield (self.offsets[task] + picks).tolist()


class TaskTaggedCollator:
    """Pads a one-task batch with that task's collator and adds the task index."""

    def __init__(self, collators: list):
        self.collators = collators

    def __call__(self, features: list[dict]) -> dict:
        task = features[0]["task"]
        batch = self.collators[task]([{k: v for k, v in f.items() if k != "task"} for f in features])
        batch["task"] = torch.tensor(task)
        return batch


class TaggedDataset(torch.utils.data.Dataset):
    def __init__(self, dataset, task_index: int):
        self.dataset, self.task_index = dataset, task_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "task": self.task_index}


def concat_tagged(datasets: list) -> ConcatDataset:
    return ConcatDataset([TaggedDataset(d, i) for i, d in enumerate(datasets)])
