"""Two-stage training of the guard autoencoder.

Phase 1 (global): ``1 - MS-SSIM`` on whole guard frames. Phase 2 (ROI refinement): the global
term plus the ROI L1 and ROI normalised-Sobel-edge terms, weighted by ``lambda_k`` initialised
from gradient magnitudes at the last decoder layer (formula in :mod:`.losses`). Each phase has an
epoch count and a wall-clock budget (whichever ends first); checkpoints go to ``checkpoint_dir``.
Random lateral flips augment both phases (the ROI flips with its frame).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...errors import Cancelled
from ...quality.data import FrameSet, check_roi
from .losses import calibrate_weights, ms_ssim_loss, roi_edge, roi_l1
from ...quality.model import GuardAE, GuardConfig, build_guard

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Recipe of both phases."""

    epochs1: int = 40
    epochs2: int = 20
    budget1_s: float = 600.0
    budget2_s: float = 360.0
    batch: int = 64
    lr1: float = 2e-3
    lr2: float = 5e-4
    calib_batches: int = 4
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[s:s + batch] for s in range(0, n - batch + 1, batch)] or [order]


def _tensors(data: FrameSet, idx: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.frames[idx].astype(np.float32) / 255.0
    r = data.roi[idx]
    flip = rng.random(len(idx)) < 0.5
    x[flip] = x[flip, :, ::-1]
    r = r.copy()
    r[flip] = r[flip, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.from_numpy(np.ascontiguousarray(r))[:, None]


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, net: GuardAE) -> bool:
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    for p in net.parameters():  # MS-SSIM's fractional powers can give inf gradients at exactly zero similarity
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    opt.step()
    return True


def train_guard(train: FrameSet, cfg: TrainConfig, config: GuardConfig | None = None,
                checkpoint_dir: Path | None = None, progress: Callable[[str, float], None] | None = None,
                should_cancel: Callable[[], bool] | None = None) -> tuple[GuardAE, dict[str, Any], dict[str, Any]]:
    """Phase 1 then phase 2 on ``train``; returns ``(net after phase 2, phase-1 state dict, history)``."""
    check_roi(train.roi, "the ROI of the training frames")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        net = build_guard(config)
        history: dict[str, Any] = {"recipe": cfg.to_dict()}

        def cancel_check() -> None:
            if should_cancel is not None and should_cancel():
                raise Cancelled("Quality-guard training was cancelled.")

        # --- phase 1: global MS-SSIM
        losses, seconds = _run_phase(net, train, rng, lambda x_hat, x, r: ms_ssim_loss(x_hat, x), cfg.epochs1,
                                     cfg.lr1, cfg.budget1_s, cfg.batch, "phase 1", progress, cancel_check)
        history["phase1"] = {"epochs": len(losses), "loss": losses, "seconds": seconds}
        phase1_state = copy.deepcopy(net.state_dict())
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            torch.save(phase1_state, Path(checkpoint_dir) / "phase1.pt")

        # --- phase 2: ROI refinement with gradient-calibrated weights
        last = net.decoder.last.weight
        net.train()
        calib = []
        for idx in _batches(len(train), cfg.batch, rng)[: max(cfg.calib_batches * 4, cfg.calib_batches)]:
            x, r = _tensors(train, idx, rng)
            if bool(r.any()):
                calib.append((x, r))
            if len(calib) == cfg.calib_batches:
                break
        weights = calibrate_weights(calib, lambda x: net(x)[0], last)
        lam_roi, lam_edge = weights["lambda_roi"], weights["lambda_edge"]
        losses, seconds = _run_phase(
            net, train, rng,
            lambda x_hat, x, r: ms_ssim_loss(x_hat, x) + lam_roi * roi_l1(x_hat, x, r) + lam_edge * roi_edge(x_hat, x, r),
            cfg.epochs2, cfg.lr2, cfg.budget2_s, cfg.batch, "phase 2", progress, cancel_check)
        history["phase2"] = {"epochs": len(losses), "loss": losses, "seconds": seconds, "weights": weights}
        if checkpoint_dir is not None:
            torch.save(net.state_dict(), Path(checkpoint_dir) / "phase2.pt")
        net.eval()
        return net, phase1_state, history
    finally:
        torch.set_num_threads(old_threads)


def _run_phase(net: GuardAE, train: FrameSet, rng: np.random.Generator,
               loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], epochs: int, lr: float,
               budget_s: float, batch: int, name: str, progress: Callable[[str, float], None] | None,
               cancel_check: Callable[[], None]) -> tuple[list[float], float]:
    """One training phase: Adam with cosine decay over ``epochs``, stopped early after ``budget_s`` seconds.
    ``loss_fn(x_hat, x, roi)``. Returns the mean loss per epoch and the seconds taken."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    t0, losses = time.perf_counter(), []
    for epoch in range(epochs):
        net.train()
        total, count = 0.0, 0
        for idx in _batches(len(train), batch, rng):
            cancel_check()
            x, r = _tensors(train, idx, rng)
            x_hat, _ = net(x)
            loss = loss_fn(x_hat, x, r)
            if _step(opt, loss, net):
                total, count = total + loss.item(), count + 1
        sched.step()
        losses.append(total / max(count, 1))
        if progress is not None:
            progress(name, (epoch + 1) / epochs)
        log.info("%s epoch %d loss %.4f (%.0f s)", name, epoch, losses[-1], time.perf_counter() - t0)
        if time.perf_counter() - t0 > budget_s:
            break
    return losses, round(time.perf_counter() - t0, 1)


def with_state(state: dict[str, Any], config: GuardConfig) -> GuardAE:
    """A guard network carrying ``state`` (e.g. the phase-1 weights), in eval mode."""
    net = build_guard(config)
    net.load_state_dict(state, strict=True)
    return net.eval()
