"""Fine-tune a learned pose model on a few tracked sweeps of one probe (the ``adapt`` training step).

The same ingredients as ``freehandrecon train`` (records, random windows with flip/reverse
augmentation, the training losses, AdamW with warm-up and cosine decay), in a loop small enough for
a few minutes on two CPU cores. The model's output scales are kept; batch-norm statistics follow
the probe's frames.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..errors import Cancelled
from ..poses.learned import LoadedModel
from ..poses.losses import LossWeights, total_loss
from ..sweep import Sweep
from ..lab.train import datasets
from ..lab.train.trainer import lr_lambda
from .options import FineTuneOptions


def records_for(sweeps: list[tuple[str, Sweep]], model: LoadedModel, curve) -> list[datasets.SweepRecord]:
    """Training records (model-input frames, labels, decorrelation features with ``curve``) of tracked sweeps."""
    cfg = model.config
    return [datasets.prepare_record(s, cfg.input_spacing, cfg.input_size, name, name, cfg.decorrelation_lags, curve,
                                    cfg.decorrelation_floor_lag) for name, s in sweeps]


def fine_tune(model: LoadedModel, records: list[datasets.SweepRecord], opts: FineTuneOptions, *,
              progress: Callable[[str, float], None] | None = None,
              should_cancel: Callable[[], bool] | None = None) -> dict:
    """Train ``model.net`` in place on ``records``; returns the loss history and the seconds taken."""
    import torch
    from torch.utils.data import DataLoader

    net, cfg, device = model.net, model.config, model.device
    torch.manual_seed(opts.seed)
    scales = torch.tensor(model.scales, dtype=torch.float32, device=device)
    dataset = datasets.WindowDataset(records, cfg.window, opts.steps_per_epoch * opts.batch_size, model.scales,
                                     seed=opts.seed, augment=True)
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=False, num_workers=0)
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    total = opts.epochs * opts.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(opts.warmup_steps, total))
    half = (cfg.input_size * cfg.input_spacing / 2,) * 2
    weights = LossWeights()
    history = []
    done = 0
    t0 = time.perf_counter()
    net.train()
    try:
        for epoch in range(opts.epochs):
            dataset.set_epoch(epoch)
            losses = []
            for x, y, d in loader:
                if should_cancel is not None and should_cancel():
                    raise Cancelled("Adaptation was cancelled.", "Run it again when ready; nothing was written.")
                x, y = x.to(device), y.to(device)
                d = d.to(device) if d.numel() else None
                loss, _ = total_loss(net(x, d), y, scales, half, weights)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), opts.grad_clip)
                optim.step()
                sched.step()
                losses.append(float(loss.detach()))
                done += 1
                if progress is not None:
                    progress("adapt", done / total)
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
    finally:
        net.eval()
    return {"history": history, "steps": done, "seconds": time.perf_counter() - t0}
