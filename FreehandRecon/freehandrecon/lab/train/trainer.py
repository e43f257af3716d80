"""Training loop of the learned pose estimator: AdamW + warm-up/cosine schedule, checkpoints,
resume, AMP on CUDA, DistributedDataParallel under ``torchrun``, validation and export.

Distributed runs: ``torchrun --nproc_per_node K -m freehandrecon.commands.main train ...`` sets
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; the process group uses gloo on the CPU and nccl on CUDA,
every rank draws its own shard of the windows (DistributedSampler), gradients are averaged, and
only rank 0 writes files and logs. Files in ``--out``: ``last.pt`` (every epoch), ``best.pt``
(lowest validation loss), ``log.jsonl`` (one line per epoch), and at the end
``<name>.safetensors`` + ``<name>.json`` exported from the best checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ... import geometry
from ...errors import InputError
from ...poses import common
from ...poses.learned import DOF_NAMES, predict_scaled, save_model
from ...poses.losses import LossWeights, drift_rate_loss, total_loss
from ...poses.network import PoseNetConfig, build_pose_net, count_parameters, rescale_outputs
from . import datasets


@dataclass
class TrainOptions:
    """Everything a training run needs (the command line fills it)."""

    out: Path
    name: str = "posenet"
    data: Sequence[str] = ("sim",)
    sites: Sequence[str] | None = None          # default simulate.TRAIN_SITES
    train_seeds: tuple[int, int] = (0, 60)      # [start, stop) per site
    val_seeds: tuple[int, int] = (10_000, 10_004)
    extra_seeds: tuple[int, int] | None = None  # more simulated sweeps [start, stop) per site, steps from extra_steps
    extra_steps: tuple[float, float] = (0.04, 0.8)
    frames: int = 80
    kinds: Sequence[str] = datasets.TRAJECTORY_KINDS
    cache: Path | None = None
    split_by: str = "subject"
    val_fraction: float = 0.2
    read_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    augment: bool = True
    loss: LossWeights = field(default_factory=LossWeights)
    config: PoseNetConfig = field(default_factory=PoseNetConfig)
    device: str = "cpu"
    amp: bool = False
    threads: int | None = None
    workers: int = 1  # processes simulating and preparing the simulated sweeps
    resume: bool = False
    seed: int = 0
    max_val_windows: int = 64
    init: Path | None = None                     # start from this model's weights (new input channels at zero)
    rescale_outputs: bool = False                # with init: output scales from this run's training data
    chain: int = 1                               # windows per training sequence (drift-rate loss over all of them)
    curve: Path | None = None                    # decorrelation curve for tracked files (v2 networks)
    curve_mix: tuple[float, float, float] | None = None  # simulated sweeps: phantom-calibrated / beam / typical
    drift_sweeps: int = 4
    time_budget: float | None = None             # seconds: stop after the first epoch that ends past it
    export: str = "best"                         # exported weights: lowest validation loss, or the last epoch's
    ema: float = 0.0                             # decay of an exponential moving average of the weights (0: off)
    quiet: bool = False                          # no progress bar (the per-epoch JSON lines still print)
    command: str = ""

    def recipe(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["cache"] = None if self.cache is None else str(self.cache)
        d["init"] = None if self.init is None else Path(self.init).name
        d["curve"] = None if self.curve is None else Path(self.curve).name
        d["config"] = self.config.to_dict()
        for k in ("data", "sites", "kinds"):
            d[k] = None if d[k] is None else list(d[k])
        return d


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str):
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(world, rank, local), device


def load_records(opts: TrainOptions, rank_main: bool, barrier: Callable[[], None],
                 progress: Callable[[str, float], None] | None = None):
    """Training and validation records for the options' data sources."""
    cfg = opts.config
    train, val = [], []
    for source in opts.data:
        if source == "sim":
            from ...simulate import TRAIN_SITES

            sites = list(opts.sites or TRAIN_SITES)
            kw = dict(num_frames=opts.frames, kinds=list(opts.kinds), input_spacing=cfg.input_spacing,
                      input_size=cfg.input_size, cache=opts.cache, lags=cfg.decorrelation_lags,
                      floor_lag=cfg.decorrelation_floor_lag, curve_mix=opts.curve_mix, workers=opts.workers)
            if opts.cache is not None and not rank_main:
                barrier()  # rank 0 fills the cache first
            train += datasets.simulated_records(sites, range(*opts.train_seeds), progress=progress, **kw)
            if opts.extra_seeds:
                train += datasets.simulated_records(sites, range(*opts.extra_seeds), progress=progress,
                                                    step_range=tuple(opts.extra_steps), **kw)
            val += datasets.simulated_records(sites, range(*opts.val_seeds), **kw)
            if opts.cache is not None and rank_main:
                barrier()
        else:
            p = Path(source)
            files = sorted(q for q in p.rglob("*") if q.is_file() and _is_sweep_file(q)) if p.is_dir() else [p]
            if not files:
                raise InputError(f"No sweep files found in {p}.",
                                 "Give 'sim' or sweep files/folders (.igs.mha, .mha, .h5, .seq.nrrd, .npz).")
            recs = datasets.file_records(files, opts.split_by, cfg.input_spacing, cfg.input_size, opts.read_options,
                                         cfg.decorrelation_lags, opts.curve, cfg.decorrelation_floor_lag)
            tr, va = datasets.split_records(recs, opts.val_fraction)
            train += tr
            val += va
    if not train:
        raise InputError("The training set is empty.", "Give more sweeps or a smaller --val-fraction.")
    return train, val


def _is_sweep_file(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith((".igs.mha", ".mha", ".mhd", ".h5", ".hdf5", ".seq.nrrd", ".npz"))


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def chain_windows(x, y, d, window: int, chain: int):
    """Cut chains of ``chain`` consecutive windows (``x [B, K*W+1, S, S]``, ``y [B, K*W, 6]``, ``d [B, K*W, ...]``
    or None) into ``B*K`` windows of ``W`` pairs; window k+1 starts on the frame where window k ends."""
    import torch

    b = x.shape[0]
    x = torch.stack([x[:, k * window:k * window + window + 1] for k in range(chain)], 1).flatten(0, 1)
    y = y.reshape(b * chain, window, y.shape[-1])
    if d is not None:
        d = d.reshape(b * chain, window, *d.shape[2:])
    return x, y, d


def validate(net, val_x: np.ndarray, val_y: np.ndarray, scales, opts: TrainOptions, device: str,
             drift_records: Sequence[datasets.SweepRecord], val_d: np.ndarray | None = None) -> dict[str, Any]:
    """Validation loss, mean relative error per DoF (MAE / mean |label|) and drift on whole sweeps."""
    import torch

    from ...poses.metrics import final_drift_rate_length_pct, lpe

    cfg = opts.config
    half = (cfg.input_size * cfg.input_spacing / 2,) * 2
    net.eval()
    losses, preds = [], []
    with torch.no_grad():
        for s in range(0, len(val_x), 16):
            x = torch.from_numpy(val_x[s:s + 16]).to(device)
            y = torch.from_numpy(val_y[s:s + 16]).to(device)
            out = net(x, None if val_d is None else torch.from_numpy(val_d[s:s + 16]).to(device))
            loss, _ = total_loss(out, y, scales, half, opts.loss)
            losses.append(float(loss) * len(x))
            preds.append(out["pred"].float().cpu().numpy())
    p = np.concatenate(preds) * scales.cpu().numpy()
    y = val_y * scales.cpu().numpy()
    mae = np.abs(p - y).reshape(-1, 6).mean(0)
    rel = mae / np.maximum(np.abs(y).reshape(-1, 6).mean(0), 1e-9)
    res: dict[str, Any] = {
        "val_loss": sum(losses) / len(val_x),
        "val_mae": {k: float(v) for k, v in zip(DOF_NAMES, mae)},
        "val_relative_error": {k: float(v) for k, v in zip(DOF_NAMES, rel)},
    }
    drifts, lpes = [], []
    for r in drift_records:
        est = predict_scaled(net, r.frames.astype(np.float32) / 255.0, window=cfg.window, device=device,
                             decor=None if r.decor is None else r.decor.astype(np.float32))
        rel_c = geometry.params_to_matrix(est * scales.cpu().numpy())
        if r.direction < 0:
            rel_c = common.mirror_elevation(rel_c)
        poses = common.absolute_from_centre(rel_c, r.frame_shape, r.spacing, r.image_to_world[0])
        drifts.append(final_drift_rate_length_pct(r.image_to_world, poses, r.frame_shape, r.spacing))
        lpes.append(lpe(r.image_to_world, poses, r.frame_shape, r.spacing, max_points=256))
    if drifts:
        res["val_final_drift_rate_length_pct"] = float(np.nanmean(drifts))
        res["val_lpe_mm"] = float(np.mean(lpes))
    net.train()
    return res


def train(opts: TrainOptions, progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Run a training job; returns a summary (on rank 0 it includes the exported model paths)."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but PyTorch sees no CUDA GPU.",
                         "Use --device cpu, or install a CUDA build of PyTorch on a machine with a GPU.")
    ddp, device = _init_distributed(opts.device)
    barrier = (lambda: dist.barrier()) if ddp.world > 1 else (lambda: None)
    out = Path(opts.out)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    t_start = time.perf_counter()
    train_recs, val_recs = load_records(opts, ddp.main, barrier, progress if ddp.main else None)
    t_data = time.perf_counter() - t_start
    cfg = opts.config
    net = build_pose_net(cfg).to(device)
    start_epoch, best_val, history = 0, float("inf"), []
    scales_np = datasets.label_scales(train_recs)
    ckpt_path = out / "last.pt"
    ckpt = None
    if opts.resume:
        if not ckpt_path.exists():
            raise InputError(f"--resume was given but {ckpt_path} does not exist.",
                             "Drop --resume to start a new run, or point --out at the earlier run's folder.")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise InputError(f"The checkpoint {ckpt_path} was trained with another architecture.",
                             "Resume with the same architecture options, or start a new --out folder.")
        net.load_state_dict(ckpt["model"])
        scales_np = np.asarray(ckpt["scales"])
        start_epoch, best_val, history = ckpt["epoch"], ckpt["best_val"], ckpt["history"]
    elif opts.init is not None:
        init_scales = init_from_model(net, opts.init)
        if opts.rescale_outputs:
            rescale_outputs(net, init_scales, scales_np)
        else:
            scales_np = init_scales
    scales = torch.tensor(scales_np, dtype=torch.float32, device=device)
    model = net
    if ddp.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ddp.local_rank] if device.startswith("cuda") else None)
    ema = None
    if opts.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # the averaged weights (BatchNorm statistics included) are the ones validated, saved and exported
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(opts.ema), use_buffers=True)
        if ckpt is not None:  # net holds the saved average, now copied into ema: keep averaging from it
            ema.n_averaged.fill_(1)
            net.load_state_dict(ckpt.get("raw_model", ckpt["model"]))
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = opts.epochs * opts.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(opts.warmup_steps, total_steps))
    use_amp = bool(opts.amp and device.startswith("cuda"))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if ckpt is not None:
        optim.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    # a chain of K windows is drawn as one window of K * W pairs and cut into K windows of W (see chain_windows)
    dataset = datasets.WindowDataset(train_recs, cfg.window * opts.chain,
                                     opts.steps_per_epoch * opts.batch_size * ddp.world, scales_np, seed=opts.seed,
                                     augment=opts.augment)
    sampler = DistributedSampler(dataset, ddp.world, ddp.rank, shuffle=False) if ddp.world > 1 else None
    loader = DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler, shuffle=False, num_workers=0)
    val_x = val_y = val_d = None
    drift_recs: list = []
    if val_recs:
        val_x, val_y, val_d = datasets.fixed_windows(val_recs, cfg.window, scales_np, opts.max_val_windows)
        drift_recs = val_recs[:opts.drift_sweeps]
    half = (cfg.input_size * cfg.input_spacing / 2,) * 2
    # with --chain the drift rate is taken over the whole chain below, not per window
    window_weights = opts.loss if opts.chain == 1 else replace(opts.loss, drift_rate=0.0)
    if ddp.main:
        print(json.dumps({"event": "start", "train_sweeps": len(train_recs), "val_sweeps": len(val_recs),
                          "train_pairs": int(sum(r.num_pairs for r in train_recs)),
                          "parameters": count_parameters(net), "scales": scales_np.round(4).tolist(),
                          "data_seconds": round(t_data, 1), "start_epoch": start_epoch}), flush=True)
    first_loss = last_loss = None
    for epoch in range(start_epoch, opts.epochs):
        dataset.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        bar = None
        if ddp.main and not opts.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{opts.epochs}", leave=False)
        for x, y, d in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            d = d.to(device, non_blocking=True) if d.numel() else None
            y_chain = y
            if opts.chain > 1:
                x, y, d = chain_windows(x, y, d, cfg.window, opts.chain)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                outd = model(x, d)
            outd = {k: v.float() for k, v in outd.items()}
            loss, terms = total_loss(outd, y, scales, half, window_weights)
            if opts.chain > 1 and opts.loss.drift_rate:
                pred_chain = outd["pred"].reshape(y_chain.shape)
                chain_drift = drift_rate_loss(pred_chain * scales, y_chain * scales, half)
                loss = loss + opts.loss.drift_rate * chain_drift
                terms["drift_rate"] = float(chain_drift.detach())
            optim.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.grad_clip:
                scaler.unscale_(optim)
                torch.nn.utils.clip_grad_norm_(net.parameters(), opts.grad_clip)
            scaler.step(optim)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            lv = float(loss.detach())
            if first_loss is None:
                first_loss = lv
            last_loss = lv
            sums["loss"] = sums.get("loss", 0.0) + lv
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.3f}")
            if progress is not None and ddp.main:
                progress("train", ((epoch - start_epoch) * len(loader) + n) /
                         max(1, (opts.epochs - start_epoch) * len(loader)))
        if bar is not None:
            bar.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 1),
                               "lr": sched.get_last_lr()[0], **{k: v / max(n, 1) for k, v in sums.items()}}
        if ddp.main:
            kept = net if ema is None else ema.module
            if val_x is not None:
                row.update(validate(kept, val_x, val_y, scales, opts, device, drift_recs, val_d))
            history.append(row)
            score = row.get("val_loss", row["loss"])
            state = {"model": kept.state_dict(), "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict() if use_amp else None, "epoch": epoch + 1,
                     "best_val": min(best_val, score), "history": history, "config": cfg.to_dict(),
                     "scales": scales_np.tolist(), "recipe": opts.recipe(),
                     "data": {"train": datasets.records_digest(train_recs), "val": datasets.records_digest(val_recs)}}
            if ema is not None:
                state["raw_model"] = net.state_dict()
            _atomic_save(state, out / "last.pt")
            if score <= best_val:
                best_val = score
                _atomic_save(state, out / "best.pt")
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        barrier()
        if opts.time_budget is not None and epoch + 1 < opts.epochs:
            over = torch.tensor([float(time.perf_counter() - t_start > opts.time_budget)], device=device)
            if ddp.world > 1:  # every rank stops after the same epoch
                dist.all_reduce(over, op=dist.ReduceOp.MAX)
            if over.item():
                if ddp.main:
                    print(json.dumps({"event": "time_budget", "epochs_done": epoch + 1,
                                      "seconds": round(time.perf_counter() - t_start, 1)}), flush=True)
                break
    summary: dict[str, Any] = {"first_loss": first_loss, "last_loss": last_loss, "history": history,
                               "parameters": count_parameters(net), "seconds": time.perf_counter() - t_start}
    if ddp.main:
        summary.update(export(out, opts, train_recs, val_recs))
    barrier()
    if ddp.world > 1:
        dist.destroy_process_group()
    return summary


def init_from_model(net, path: Path) -> np.ndarray:
    """Copy a trained model's weights into ``net`` (fine-tuning start); returns its per-DoF scales.

    Tensors of the same shape are copied; a convolution that gained input channels (v1 -> v2: the
    decorrelation features) keeps the old channels and starts the new ones at zero, so the network
    begins as the old model did.
    """
    import torch

    from ...poses.learned import load_model

    src = load_model(path)
    own = net.state_dict()
    for k, v in src.net.state_dict().items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            own[k] = v.clone()
        elif own[k].dim() == v.dim() == 4 and own[k].shape[0] == v.shape[0] and own[k].shape[2:] == v.shape[2:] \
                and own[k].shape[1] > v.shape[1]:
            w = torch.zeros_like(own[k])
            w[:, :v.shape[1]] = v
            own[k] = w
    net.load_state_dict(own)
    return np.asarray(src.scales, dtype=np.float64)


def _atomic_save(state: dict, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def export(out: Path, opts: TrainOptions, train_recs=(), val_recs=()) -> dict[str, Any]:
    """Write ``<name>.safetensors`` + ``<name>.json`` from ``best.pt`` (else ``last.pt``) in ``out``; from
    ``last.pt`` when ``opts.export`` is ``"last"``."""
    import torch

    best = out / "best.pt"
    src = best if opts.export == "best" and best.exists() else out / "last.pt"
    if not src.exists():
        raise InputError(f"No checkpoint in {out} to export.", "Train for at least one epoch first.")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    cfg = PoseNetConfig.from_dict(ckpt["config"])
    net = build_pose_net(cfg)
    net.load_state_dict(ckpt["model"])
    hist = ckpt["history"]
    chosen = (hist[-1] if opts.export == "last" else min(hist, key=lambda r: r.get("val_loss", r["loss"]))) \
        if hist else {}
    extra = {
        "recipe": ckpt["recipe"],
        "command": ckpt["recipe"].get("command", ""),
        "trained_epochs": ckpt["epoch"],
        "exported_from": src.name,
        "parameters": count_parameters(net),
        "training_data": {"train_sweeps": len(train_recs), "val_sweeps": len(val_recs),
                          "train_pairs": int(sum(r.num_pairs for r in train_recs)), **ckpt.get("data", {})},
        "metrics": {"validation": {k: v for k, v in chosen.items() if k.startswith("val") or k == "epoch"}},
    }
    w, j = save_model(net, np.asarray(ckpt["scales"]), out, opts.name, extra)
    return {"weights": str(w), "json": str(j)}
