"""Training options: a light module, so that the command line checks them before importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import ConfigError


DECODER_HEADS = ("label_words", "sequence_classification")


@dataclass
class TrainOptions:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float | None = None  # None: the preset's default (presets.LEARNING_RATES)
    head_learning_rate: float | None = None  # the task head's and a trained pooler's; None: learning_rate
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    warmup_ratio: float | None = None  # None: the task type's default (0.06; 0 for generation, as §3.5)
    weight_decay: float | None = None  # None: the task type's default (0.0; 0.01 for generation)
    seed: int = 42
    protocol: str = "dev_as_test"
    max_train_samples: int | None = None
    max_validation_samples: int | None = None  # not under dev_as_test, where validation is the test split
    early_stopping_patience: int | None = None
    precision: str = "auto"  # fp32 | fp16 | bf16 | auto (bf16 where the GPU has it, else fp32)
    logging_steps: int = 50
    progress: bool = True
    fast_cpu_dropout: bool = True  # CPU training: unipetl.dropout's sampler (False: torch's)
    cpu: bool = False  # train on the CPU even where a GPU is visible (torchrun/accelerate on a CPU machine)
    keep_checkpoints: bool = False  # keep OUTPUT/checkpoints after a successful run (they only serve --resume)
    # How a decoder-only LM classifies: its LM head scoring label words, or a new sequence-classification
    # head on the last token (which also does regression).
    decoder_head: str = "label_words"
    packing: bool = False  # instruction tuning: several examples per training sequence
    # A regression head's output bias starts at the training labels' mean (False: at 0, as transformers does)
    regression_bias_at_mean: bool = True

    def validate(self) -> None:
        for field in fields(self):  # NaN passes every comparison below, and inf trains to garbage or crashes
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{field.name.replace('_', '-')}={value} must be a finite number")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ConfigError(f"--epochs={self.epochs} must be positive (or give --max-steps)")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be a positive integer")
        for name in ("learning_rate", "head_learning_rate"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be positive")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio={self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay={self.weight_decay} must be zero or more")
        if self.decoder_head not in DECODER_HEADS:
            raise ConfigError(f"--decoder-head={self.decoder_head!r}; allowed: {', '.join(DECODER_HEADS)}")
        if self.precision not in ("fp32", "fp16", "bf16", "auto"):
            raise ConfigError(f"--precision={self.precision!r}; allowed: fp32, fp16, bf16, auto")
