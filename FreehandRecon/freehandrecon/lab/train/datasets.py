"""Training data for the learned pose estimator: sweeps -> model-ready records -> random windows.

* A :class:`SweepRecord` holds one sweep resampled to the model input (uint8 ``[N, S, S]``),
  its forward-canonical relative motions as 6-vectors ``[N-1, 6]`` (backward sweeps mirrored
  with :func:`poses.common.mirror_elevation`), and the original geometry for drift checks.
* Simulated sweeps come from :func:`freehandrecon.simulate.random_sweep` and are cached as
  ``.npz`` files (one per site/seed/length/kind) so later runs and epochs reuse them.
* Tracked files are read with :func:`freehandrecon.io.read_sweep`. Their **group key** for
  held-out splits is, by ``--split-by``: ``file`` the file name; ``subject`` the metadata
  ``subject`` (or ``subject_id``) when present, else the parent folder name; ``site`` the
  metadata ``site`` when present, else the parent folder's parent name.
  Groups go to validation by a stable hash of the key (``val_fraction`` of the groups).
* With a curve mix (``train --curve-mix``), each simulated sweep's v2 features use one of: a curve calibrated
  (as ``calibrate-speckle`` fits it) on a separately simulated structure-free speckle phantom of the same probe,
  the probe's beam model, or the typical probe's curve (:func:`mixed_curve`), so the network learns to read the
  curves users give it, not only the theoretical ones.
* :class:`WindowDataset` draws windows of ``W + 1`` frames with a random start (a seeded,
  epoch-dependent draw per index, so DistributedSampler shards stay disjoint), with optional
  lateral-flip and time-reversal augmentation (labels transformed exactly).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ... import geometry
from ...errors import InputError
from ...sweep import Sweep
from ...poses import common
from ...poses.decorrelation import mirror_lateral

FLIP_SIGNS = np.array([-1.0, 1.0, 1.0, 1.0, -1.0, -1.0])  # lateral mirror: tx, ry, rz change sign
TRAJECTORY_KINDS = ("linear", "fan", "tilt", "s-curve", "mixed")


@dataclass
class SweepRecord:
    """One sweep, ready for training."""

    name: str
    group: str
    frames: np.ndarray            # uint8 [N, S, S] model input * 255
    params: np.ndarray            # float32 [N-1, 6] forward-canonical relative motions (mm, deg)
    direction: int                # +1 forward, -1 backward (as acquired)
    image_to_world: np.ndarray    # [N, 4, 4] original poses (for drift)
    frame_shape: tuple[int, int]  # original (H, W)
    spacing: tuple[float, float]  # original (sx, sy)
    decor: np.ndarray | None = None  # float16 [N-1, 2L, g, g] decorrelation features (v2 networks)

    @property
    def num_pairs(self) -> int:
        return int(self.params.shape[0])


def prepare_record(sweep: Sweep, input_spacing: float, input_size: int, name: str, group: str,
                   lags: Sequence[int] = (), curve=None, floor_lag: int = 0) -> SweepRecord:
    """Resample a tracked sweep to the model input and compute forward-canonical labels (and, when
    ``lags`` are given, the v2 decorrelation features with ``curve``, default
    :func:`poses.decorrelation.curve_for_sweep`)."""
    if sweep.image_to_world is None:
        raise InputError(f"Training sweep {name} has no poses.",
                         "Train on tracked sweeps (with calibration) or simulated ones.")
    rel = common.relative_centre(sweep.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
    direction = common.resolve_direction(sweep, "auto")
    if direction < 0:
        rel = common.mirror_elevation(rel)
    frames = common.resample_frames(sweep.frames, sweep.pixel_spacing, input_spacing, input_size)
    frames_u8 = np.round(frames * 255).astype(np.uint8)
    decor = None
    if lags:
        from ...poses import decorrelation

        decor = decorrelation.model_features(frames_u8.astype(np.float32) / 255.0, sweep.frame_shape,
                                             sweep.pixel_spacing, decorrelation.curve_for_sweep(sweep, curve),
                                             input_spacing=input_spacing, input_size=input_size, lags=lags,
                                             floor_lag=floor_lag).astype(np.float16)
    return SweepRecord(name, group, frames_u8, geometry.matrix_to_params(rel).astype(np.float32), direction,
                       np.asarray(sweep.image_to_world, dtype=np.float64), sweep.frame_shape, sweep.pixel_spacing,
                       decor)


# --- simulated data ------------------------------------------------------------------------------

def sim_kind(seed: int, kinds: Sequence[str]) -> str:
    """Trajectory kind used for a seed: kinds cycle with the seed, so any seed range mixes them."""
    return kinds[seed % len(kinds)]


def sim_step(site: str, seed: int, step_range: tuple[float, float]) -> float:
    """Elevational step (mm/frame) of a sweep drawn from ``step_range`` (deterministic per site and seed)."""
    lo, hi = (float(v) for v in step_range)
    rng = np.random.default_rng([int(seed), zlib.crc32(site.encode()), 1])
    return float(rng.uniform(lo, hi))


def simulated_sweep(site: str, seed: int, num_frames: int, kind: str, cache: Path | None,
                    step_range: tuple[float, float] | None = None) -> Sweep:
    """``random_sweep(site, seed, num_frames, kind)``, read from / written to the cache folder; with
    ``step_range`` the elevational step is drawn from it (:func:`sim_step`) instead of the simulator's
    default range (0.1-0.6 mm/frame)."""
    from ...simulate import random_sweep
    from ...simulate.cache import cached_sweep

    if step_range is None:
        return cached_sweep(cache, f"{site}_s{seed}_n{num_frames}_{kind}",
                            lambda: random_sweep(site, seed, num_frames=num_frames, kind=kind))
    step = sim_step(site, seed, step_range)
    return cached_sweep(cache, f"{site}_s{seed}_n{num_frames}_{kind}_step{step_range[0]:g}-{step_range[1]:g}",
                        lambda: random_sweep(site, seed, num_frames=num_frames, kind=kind, step_mm=step))


CURVE_KINDS = ("phantom", "beam", "typical")
PHANTOM_CALIBRATIONS = (("linear", 0.1), ("linear", 0.2), ("mixed", None))  # (trajectory, mm/frame) of the phantom


def check_curve_mix(mix: Sequence[float]) -> tuple[float, float, float]:
    """``(phantom, beam, typical)`` shares in tenths that add up to 1, else InputError."""
    shares = tuple(float(v) for v in mix)
    if (len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6
            or any(abs(v * 10 - round(v * 10)) > 1e-6 for v in shares)):
        raise InputError(f"--curve-mix needs three shares in tenths that add up to 1; got {list(mix)}.",
                         "Give e.g. --curve-mix 0.5 0.3 0.2 (phantom-calibrated, beam model, typical).")
    return shares  # type: ignore[return-value]


def mixed_curve(sweep: Sweep, mix: Sequence[float], cache: Path | None = None) -> tuple[Any, str]:
    """The curve a simulated sweep's v2 features use under the curve mix ``(phantom, beam, typical)``, and its kind.

    The choice is fixed by a hash of the sweep's probe settings and seed. ``phantom``: a curve
    :meth:`DecorrelationCurve.calibrate` fits (``min_bands=2``) on a structure-free speckle phantom of the same probe
    simulated for the purpose (32 frames straight at 0.1 or 0.2 mm/frame, or 40 freehand frames), as a user
    calibrates a probe; when that fails, the beam model. ``beam``: the probe's beam model. ``typical``: the typical
    probe's curve, as an uncalibrated probe gets. With a ``cache`` folder the phantom-calibrated curves are kept
    there too (one JSON per probe settings and seed), so later runs on the same sweeps skip the phantoms."""
    from ...poses import decorrelation, speckle

    settings = (sweep.metadata or {}).get("settings")
    if not isinstance(settings, dict):
        return decorrelation.curve_for_sweep(sweep), "beam"
    key = json.dumps(settings, sort_keys=True) + json.dumps(sweep.metadata.get("seed", ""), default=str)
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    tenths = np.cumsum([round(v * 10) for v in check_curve_mix(mix)])
    kind = CURVE_KINDS[int(np.searchsorted(tenths, h % 10, side="right"))]
    if kind == "typical":
        return speckle.DecorrelationCurve.default(), kind
    if kind == "phantom":
        try:
            return _phantom_curve(settings, h, cache), kind
        except InputError:
            pass
    return decorrelation.curve_for_sweep(sweep), "beam"


def _phantom_curve(settings: dict[str, Any], seed: int, cache: Path | None = None) -> Any:
    from ...poses.speckle import DecorrelationCurve
    from ...simulate import SIMULATOR_VERSION
    from ..phantom_curve import phantom_calibrated_curve

    path = None
    if cache is not None:
        key = hashlib.sha1((json.dumps(settings, sort_keys=True) + str(seed)).encode()).hexdigest()[:20]
        path = Path(cache) / f"phantom_curve_{key}_sim{SIMULATOR_VERSION}.json"
        if path.exists():
            try:
                return DecorrelationCurve.load(path)
            except InputError:
                path.unlink(missing_ok=True)  # a broken entry is made again
    kind, step = PHANTOM_CALIBRATIONS[seed % len(PHANTOM_CALIBRATIONS)]
    curve = phantom_calibrated_curve(settings, seed, kind=kind, frames=32 if kind == "linear" else 40, step_mm=step)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        curve.save(path, force=True)
    return curve


def _simulated_record(site: str, seed: int, num_frames: int, kind: str, input_spacing: float, input_size: int,
                      cache: Path | None, lags: Sequence[int], floor_lag: int,
                      step_range: tuple[float, float] | None, curve_mix: Sequence[float] | None) -> SweepRecord:
    """One (site, seed) record: simulate (or read from the cache), pick the curve, prepare."""
    sweep = simulated_sweep(site, seed, num_frames, kind, cache, step_range)
    curve = mixed_curve(sweep, curve_mix, cache)[0] if curve_mix is not None and lags else None
    tag = "" if step_range is None else f"/step{step_range[0]:g}-{step_range[1]:g}"
    return prepare_record(sweep, input_spacing, input_size, f"{site}/seed{seed}/{kind}{tag}", site, lags, curve,
                          floor_lag=floor_lag)


def _worker_start() -> None:
    import torch

    torch.set_num_threads(1)  # one core per process: the processes are the parallelism


def simulated_records(sites: Sequence[str], seeds: Iterable[int], num_frames: int, kinds: Sequence[str],
                      input_spacing: float, input_size: int, cache: Path | None = None,
                      progress: Callable[[str, float], None] | None = None,
                      lags: Sequence[int] = (), floor_lag: int = 0,
                      step_range: tuple[float, float] | None = None,
                      curve_mix: Sequence[float] | None = None, workers: int = 1) -> list[SweepRecord]:
    """Records for every (site, seed): the kind cycles with the seed (:func:`sim_kind`); ``step_range``
    as in :func:`simulated_sweep`; ``curve_mix`` as in :func:`mixed_curve` (default: each probe's beam model).

    ``workers`` > 1 simulates and prepares the sweeps in that many processes of one thread each (a sweep's data
    depends only on its site and seed, so the records are the same); the list keeps the (seed, site) order. The
    processes are spawned: a script that calls this with workers must do so under ``if __name__ == "__main__":``."""
    jobs = [(site, int(seed), num_frames, sim_kind(int(seed), kinds), input_spacing, input_size, cache,
             tuple(lags), floor_lag, step_range, None if curve_mix is None else tuple(curve_mix))
            for seed in seeds for site in sites]
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for k, job in enumerate(jobs):
            out.append(_simulated_record(*job))
            if progress is not None:
                progress("simulate", (k + 1) / len(jobs))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child of a process whose torch thread pool already ran can hang
    ctx = multiprocessing.get_context("spawn")
    records: list[SweepRecord | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_worker_start)
    try:
        futures = {pool.submit(_simulated_record, *job): k for k, job in enumerate(jobs)}
        for done, fut in enumerate(as_completed(futures), 1):
            records[futures[fut]] = fut.result()
            if progress is not None:
                progress("simulate", done / len(jobs))
    except BaseException:  # an error or Ctrl-C: drop the queued sweeps instead of simulating them all first
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return records  # type: ignore[return-value]


# --- tracked files ---------------------------------------------------------------------------------

SPLIT_BY = ("subject", "site", "file")


def group_key(sweep: Sweep, path: Path, split_by: str) -> str:
    """Held-out group of a file (see the module docstring)."""
    meta = sweep.metadata or {}
    if split_by == "file":
        return path.name
    if split_by == "subject":
        value = meta.get("subject", meta.get("subject_id"))
        return str(value) if value is not None else path.resolve().parent.name
    if split_by == "site":
        value = meta.get("site")
        return str(value) if value is not None else path.resolve().parent.parent.name
    raise InputError(f"Unknown split '{split_by}'.", f"Use one of: {', '.join(SPLIT_BY)}.")


def file_records(paths: Sequence[Path], split_by: str, input_spacing: float, input_size: int,
                 read_options: dict[str, Any] | None = None, lags: Sequence[int] = (),
                 curve=None, floor_lag: int = 0) -> list[SweepRecord]:
    """Read tracked sweeps (any format :func:`freehandrecon.io.read_sweep` supports) into records."""
    from ...io import read_sweep

    out = []
    for p in paths:
        p = Path(p)
        sweep = read_sweep(p, **(read_options or {}))
        out.append(prepare_record(sweep, input_spacing, input_size, str(p), group_key(sweep, p, split_by), lags, curve,
                                  floor_lag))
    return out


def split_records(records: Sequence[SweepRecord], val_fraction: float) -> tuple[list[SweepRecord], list[SweepRecord]]:
    """Split by group: a group is validation when its stable hash falls below ``val_fraction``.

    With at least two groups, both sides get at least one group.
    """
    groups = sorted({r.group for r in records})
    score = {g: zlib.crc32(g.encode()) / 2**32 for g in groups}
    val = {g for g in groups if score[g] < val_fraction}
    if len(groups) >= 2 and val_fraction > 0:
        ranked = sorted(groups, key=score.get)
        if not val:
            val = {ranked[0]}
        if val == set(groups):
            val = set(ranked[:-1])
    return [r for r in records if r.group not in val], [r for r in records if r.group in val]


def label_scales(records: Sequence[SweepRecord], percentile: float = 98.0) -> np.ndarray:
    """Per-DoF ``percentile`` of |label| over all training pairs (floored at 1e-3)."""
    allp = np.concatenate([r.params for r in records])
    return np.maximum(np.percentile(np.abs(allp), percentile, axis=0), 1e-3)


# --- windows ---------------------------------------------------------------------------------------

def reverse_params(params: np.ndarray) -> np.ndarray:
    """Labels of the time-reversed window, re-canonicalised to forward: ``M inv(R) M`` in reverse order."""
    rel = geometry.params_to_matrix(params[::-1].astype(np.float64))
    return geometry.matrix_to_params(common.mirror_elevation(np.linalg.inv(rel))).astype(np.float32)


class WindowDataset:
    """``length`` random windows of ``window + 1`` frames per epoch (map-style, torch-compatible).

    Item i of epoch e is drawn from ``default_rng([seed, e, i])``: a record chosen with
    probability proportional to its number of windows, a uniform start, and (when
    ``augment``) a lateral flip and a time reversal, each with probability 1/2.
    Returns ``(frames float32 [W+1, S, S] in [0, 1], scaled labels float32 [W, 6], decorrelation
    features float32 [W, 2L, g, g])`` (the last is ``[0]``-shaped when the records have none).
    """

    def __init__(self, records: Sequence[SweepRecord], window: int, length: int, scales: np.ndarray,
                 seed: int = 0, augment: bool = True) -> None:
        self.records = [r for r in records if r.num_pairs >= window]
        if not self.records:
            raise InputError(f"No training sweep has the {window + 1} frames a window needs.",
                             "Use longer sweeps or a smaller --window.")
        self.window, self.length, self.seed, self.augment = window, length, seed, augment
        self.scales = np.asarray(scales, dtype=np.float32)
        counts = np.array([r.num_pairs - window + 1 for r in self.records], dtype=np.float64)
        self.prob = counts / counts.sum()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        rec = self.records[int(rng.choice(len(self.records), p=self.prob))]
        start = int(rng.integers(0, rec.num_pairs - self.window + 1))
        frames = rec.frames[start:start + self.window + 1]
        params = rec.params[start:start + self.window]
        decor = None if rec.decor is None else rec.decor[start:start + self.window]
        if self.augment:
            if rng.random() < 0.5:
                frames = frames[:, :, ::-1]
                params = params * FLIP_SIGNS.astype(np.float32)
                decor = None if decor is None else mirror_lateral(decor)
            if rng.random() < 0.5:
                frames = frames[::-1]
                params = reverse_params(params)
                decor = None if decor is None else decor[::-1]  # correlations are symmetric in time
        x = np.ascontiguousarray(frames, dtype=np.float32) / 255.0
        d = np.zeros(0, np.float32) if decor is None else np.ascontiguousarray(decor, dtype=np.float32)
        return x, (params / self.scales).astype(np.float32), d


def fixed_windows(records: Sequence[SweepRecord], window: int, scales: np.ndarray,
                  max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Deterministic, non-overlapping validation windows: frames ``[K, W+1, S, S]``, scaled labels and
    decorrelation features ``[K, W, 2L, g, g]`` (None when the records have none)."""
    xs, ys, ds = [], [], []
    for r in records:
        for s in range(0, r.num_pairs - window + 1, window):
            xs.append(r.frames[s:s + window + 1])
            ys.append(r.params[s:s + window] / scales)
            if r.decor is not None:
                ds.append(r.decor[s:s + window])
    if not xs:
        raise InputError(f"No validation sweep has the {window + 1} frames a window needs.",
                         "Use longer validation sweeps or a smaller --window.")
    if max_windows is not None and len(xs) > max_windows:
        pick = np.linspace(0, len(xs) - 1, max_windows).round().astype(int)
        xs, ys = [xs[i] for i in pick], [ys[i] for i in pick]
        ds = [ds[i] for i in pick] if ds else ds
    d = np.stack(ds).astype(np.float32) if len(ds) == len(xs) else None
    return np.stack(xs).astype(np.float32) / 255.0, np.stack(ys).astype(np.float32), d


def records_digest(records: Sequence[SweepRecord]) -> str:
    """Short digest of record names (recorded in checkpoints to spot a changed data set)."""
    return hashlib.sha256("\n".join(r.name for r in records).encode()).hexdigest()[:16]
