"""The fine-tuning recipe of ``adapt`` as plain data (no torch: the command line reads it at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FineTuneOptions:
    """Length and optimiser of the fine-tuning (defaults: under half a minute on 2 free CPU cores)."""

    epochs: int = 4                # 100 steps: ~0.22 s each on 2 free CPU cores (measured 2026-12-06) -> ~22 s
    steps_per_epoch: int = 25
    batch_size: int = 6
    lr: float = 1e-3               # 3e-4 moved the N-wire sweep's held-out drift far less in the same steps
    weight_decay: float = 1e-2
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
