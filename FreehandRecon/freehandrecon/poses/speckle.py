"""Classical sensorless poses from speckle: block matching in-plane, decorrelation out of plane.

Method (no training), for each pair of consecutive frames k, k+1:

1. **In-plane** (:mod:`.blockmatch`): sub-pixel FFT block matching of a ``rows x cols`` patch grid
   and a weighted rigid fit give the lateral/axial translation and the rotation about z, in the
   centre frame.
2. **Correlation**: each patch of frame k+1 is correlated with frame k at the matched position
   (exact integer shifts, Gaussian peak interpolation, no resampling). B-mode frames are
   log-compressed; for fully developed speckle the correlation of log-intensities is
   ``(6 / pi^2) Li2(rho_I)`` of the intensity correlation ``rho_I`` (log of correlated exponential
   variables), so it is converted to ``rho_I`` first (``log_compressed=False`` skips that for
   linear-envelope frames). The curve is in the same ``rho_I`` domain.
3. **Elevational distance** per patch by inverting the depth-dependent decorrelation curve
   ``rho_I(d; depth)`` (:class:`DecorrelationCurve`). Distances are unsigned (taken as forward);
   :func:`freehandrecon.poses.estimate_poses` applies the sweep direction.
4. **Out-of-plane pose**: a patch at centre-frame ``(x, y)`` of frame k+1 lies at elevation
   ``z = tz - sin(ry) x + cos(ry) sin(rx) y`` in frame k (``R = Rz Ry Rx``). A weighted
   least-squares plane ``d = tz + a y + b x`` through the patch distances gives
   ``ry = -asin(b)``, ``rx = asin(a / cos(ry))``.

Weights (partially developed speckle and saturation): patches whose frame-k+1 content is flat
(no texture: anechoic or blank regions) get no weight, nor do patches with more than 2 % of pixels that
never change over the sweep (outside a curvilinear fan, burnt-in overlays: a static edge correlates whatever
the motion; the calibration of a curve leaves them out too); patches holding structure (intensity std more than
1.3x the frame's typical patch's: tissue layers, bone, vessel walls, which decorrelate far slower than speckle)
are down-weighted to 0.05 (the calibration leaves them out); patches with ``rho_I`` above 0.97 (too
little motion to resolve against noise) or below 0.1 (nearly fully decorrelated: the distance is
only a lower bound) are down-weighted to 0.2 and 0.1; the in-plane fit weighs patches by the
square of their matching peak. Frames larger than ``max_size`` pixels are block-averaged first
(the curve is in mm, so it still applies).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import geometry
from ..errors import Cancelled, InputError
from . import blockmatch, common


CURVE_FORMAT = "freehandrecon-decorrelation-curve"
RHO_HIGH, RHO_LOW = 0.97, 0.1
TEXTURE_MIN_STD = 0.02  # of full scale: a flatter patch (anechoic, blank) has no speckle to correlate
STRUCTURE_STD_RATIO = 1.3  # a patch whose intensity std exceeds its frame's typical patch's by this: structure
STRUCTURE_WARN_FRACTION = 0.10  # calibration: more structure than this gets a warning
# calibration: depth bands with speckle a user's curve needs (of 5); bands without texture (water above a phantom,
# the black corners above a convex probe's fan) are left out and take the nearest kept band's curve
MIN_CALIBRATION_BANDS = 2
NO_TEXTURE_BANDS_WARNING = (
    "The calibration sweep has no speckle at depth {depths} mm (water, or outside the image): the curve is fitted on "
    "the other {kept} of {rows} depth bands, and those depths use the nearest one's. If the probe had tissue or "
    "phantom there, recalibrate with good contact over the whole depth.")
STRUCTURE_CALIBRATION_WARNING = (
    "{pct:.0f} % of the calibration sweep's patch pairs hold tissue structure (left out). Structure decorrelates "
    "slower than speckle, and what is left of it makes curves calibrated on tissue too wide: on our simulator, the "
    "learned model drifts 27-40 % with a curve calibrated on tissue against 8-11 % with one calibrated on a speckle "
    "phantom. Calibrate on a speckle phantom without structure (or a region of plain speckle) when you can.")
NO_SPECKLE_FRACTION = 0.9  # calibration: this much structure means the sweep has hardly any plain speckle
NO_SPECKLE_WARNING = (
    "{pct:.0f} % of the calibration sweep's textured patch pairs are structure, not speckle: the sweep shows almost "
    "no plain speckle (wires or targets in water, an anechoic phantom). A curve fitted on it does not describe the "
    "probe's speckle, and sensorless poses (speckle or learned) cannot be trusted on sweeps like it. Calibrate on a "
    "speckle phantom, or on tissue with plain speckle, and estimate sweeps of such tissue.")
STRUCTURE_WEIGHT = 0.05  # estimation: such patches count this much (all structure: the fit is as unweighted)
CALIBRATED_SOURCE = "calibrated from a tracked sweep"  # the source of every curve DecorrelationCurve.calibrate fits
_SIMULATED_CURVES: dict[tuple, "DecorrelationCurve"] = {}


# --- log-compressed <-> intensity correlation ------------------------------------------------

def _dilog(x: np.ndarray) -> np.ndarray:
    """Dilogarithm ``Li2(x)`` for ``x`` in [0, 1] (series below 1/2, reflection formula above)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    low = x <= 0.5
    k = np.arange(1, 80)[:, None]
    xl = x[low]
    out[low] = (xl[None] ** k / k ** 2).sum(0)
    xh = x[~low]
    y = 1.0 - xh
    li_y = (y[None] ** k / k ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prod = np.where((xh < 1) & (xh > 0), np.log(np.clip(xh, 1e-300, None)) * np.log(np.clip(y, 1e-300, None)), 0.0)
    out[~low] = math.pi ** 2 / 6 - prod - li_y
    return out


_RHO_I = np.linspace(0.0, 1.0, 4097)
_RHO_LOG = 6.0 / math.pi ** 2 * _dilog(_RHO_I)


def log_to_intensity_correlation(rho_log: np.ndarray | torch.Tensor):
    """Intensity correlation ``rho_I`` from the correlation of log-compressed speckle (inverse of
    ``(6/pi^2) Li2``); values <= 0 map to 0 and >= 1 to 1. Accepts numpy or torch."""
    if isinstance(rho_log, torch.Tensor):
        grid = torch.as_tensor(_RHO_LOG, dtype=rho_log.dtype)
        vals = torch.as_tensor(_RHO_I, dtype=rho_log.dtype)
        r = rho_log.clamp(0.0, 1.0).contiguous()
        j = torch.searchsorted(grid, r).clamp(1, len(grid) - 1)
        g0, g1 = grid[j - 1], grid[j]
        f = ((r - g0) / (g1 - g0).clamp_min(1e-12)).clamp(0, 1)
        return vals[j - 1] + f * (vals[j] - vals[j - 1])
    return np.interp(np.clip(rho_log, 0.0, 1.0), _RHO_LOG, _RHO_I)


# --- decorrelation curve --------------------------------------------------------------------

@dataclass
class DecorrelationCurve:
    """Intensity correlation ``rho[b, i]`` at depth ``depths_mm[b]`` and elevational distance
    ``distances_mm[i]`` (non-increasing in distance). Depths between bands are interpolated
    linearly, outside they take the nearest band."""

    depths_mm: np.ndarray
    distances_mm: np.ndarray
    rho: np.ndarray
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.depths_mm = np.asarray(self.depths_mm, dtype=np.float64).ravel()
        self.distances_mm = np.asarray(self.distances_mm, dtype=np.float64).ravel()
        self.rho = np.asarray(self.rho, dtype=np.float64)
        b, d = self.depths_mm.size, self.distances_mm.size
        if self.rho.shape != (b, d) or b < 1 or d < 2:
            raise InputError(f"Decorrelation curve table is {self.rho.shape}, expected ({b}, {d}) with at least "
                             "2 distances.", "Give one correlation per depth band and distance.")
        if np.any(np.diff(self.depths_mm) <= 0) or np.any(np.diff(self.distances_mm) <= 0):
            raise InputError("Decorrelation curve depths and distances must be strictly increasing.",
                             "Sort the table by depth and by distance.")
        if not np.all(np.isfinite(self.rho)):
            raise InputError("Decorrelation curve has non-finite correlations.", "Recalibrate the curve.")
        # monotone in distance, so the inversion is well defined
        self.rho = np.minimum.accumulate(np.clip(self.rho, 0.0, 1.0), axis=1)

    # --- evaluation -------------------------------------------------------------------
    def _rows(self, depth: np.ndarray) -> np.ndarray:
        """Curve rows ``[Q, D]`` interpolated at depths ``[Q]``."""
        dep = np.asarray(depth, dtype=np.float64).ravel()
        if self.depths_mm.size == 1:
            return np.repeat(self.rho, dep.size, axis=0)
        j = np.clip(np.searchsorted(self.depths_mm, dep), 1, self.depths_mm.size - 1)
        d0, d1 = self.depths_mm[j - 1], self.depths_mm[j]
        f = np.clip((dep - d0) / (d1 - d0), 0.0, 1.0)[:, None]
        return (1 - f) * self.rho[j - 1] + f * self.rho[j]

    def correlation(self, depth_mm, distance_mm) -> np.ndarray:
        """``rho_I`` at (broadcast) depths and distances."""
        dep, dist = np.broadcast_arrays(np.asarray(depth_mm, float), np.asarray(distance_mm, float))
        rows = self._rows(dep)
        d = np.clip(dist.ravel(), self.distances_mm[0], self.distances_mm[-1])
        j = np.clip(np.searchsorted(self.distances_mm, d), 1, self.distances_mm.size - 1)
        x0, x1 = self.distances_mm[j - 1], self.distances_mm[j]
        f = (d - x0) / (x1 - x0)
        q = np.arange(d.size)
        return ((1 - f) * rows[q, j - 1] + f * rows[q, j]).reshape(dep.shape)

    def distance(self, rho, depth_mm) -> np.ndarray:
        """Elevational distance (mm) where the curve at ``depth_mm`` reaches ``rho`` (same shapes).

        Correlations above the curve's first value give its first distance (0), below its last
        value its last distance (the distance is then only a lower bound).
        """
        r, dep = np.broadcast_arrays(np.asarray(rho, float), np.asarray(depth_mm, float))
        rows = self._rows(dep)  # [Q, D], non-increasing
        rv = r.ravel()
        j = (rows > rv[:, None]).sum(axis=1)  # first index with rows <= r
        jj = np.clip(j, 1, rows.shape[1] - 1)
        q = np.arange(rv.size)
        r0, r1 = rows[q, jj - 1], rows[q, jj]
        f = np.clip((r0 - rv) / np.maximum(r0 - r1, 1e-12), 0.0, 1.0)
        x = self.distances_mm[jj - 1] + f * (self.distances_mm[jj] - self.distances_mm[jj - 1])
        x = np.where(j == 0, self.distances_mm[0], x)
        x = np.where(j >= rows.shape[1], self.distances_mm[-1], x)
        return x.reshape(r.shape)

    def patch_averaged(self, height_mm: float, samples: int = 15) -> "DecorrelationCurve":
        """The curve seen by patches ``height_mm`` tall: the correlation of a patch is the mean of the
        local correlations over its depth span, so each row becomes the average of the rows over
        ``depth +- height_mm / 2`` (matters near the elevation focus, where the curve changes fast)."""
        offsets = np.linspace(-height_mm / 2, height_mm / 2, samples)
        depths = np.clip(self.depths_mm[:, None] + offsets[None, :], 0.0, None)
        rows = self._rows(depths.ravel()).reshape(self.depths_mm.size, samples, -1).mean(axis=1)
        meta = dict(self.meta, patch_height_mm=float(height_mm))
        return DecorrelationCurve(self.depths_mm, self.distances_mm, rows, self.source, meta)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings, depths_mm: np.ndarray | None = None,
                      max_distance_mm: float | None = None, num_distances: int = 256) -> "DecorrelationCurve":
        """Curve of a simulated probe from its beam model (``freehandrecon.simulate``): the
        theoretical intensity correlation at each depth. ``settings`` is an AcquisitionSettings or its dict."""
        from ..simulate import AcquisitionSettings, theoretical_correlation
        from ..simulate.beam import elevation_sigma_mm

        s = settings if isinstance(settings, AcquisitionSettings) else AcquisitionSettings.from_dict(dict(settings))
        depths = np.linspace(0.0, s.depth_mm, 33) if depths_mm is None else np.asarray(depths_mm, float)
        if max_distance_mm is None:
            max_distance_mm = 4.0 * float(np.max(elevation_sigma_mm(s, depths)))
        dist = np.linspace(0.0, max_distance_mm, num_distances)
        rho = theoretical_correlation(s, depths[:, None], dist[None, :])
        return cls(depths, dist, rho, source="beam model of the simulated probe", meta={"settings": s.to_dict()})

    @classmethod
    def from_simulation(cls, settings, *, frames: int = 40, step_mm: float = 0.08, max_lag: int = 24,
                        seed: int = 0, rows: int = 5, cols: int = 5) -> "DecorrelationCurve":
        """Calibrate, as :meth:`calibrate` does, on a simulated structure-free pure elevational sweep
        of the probe ``settings`` (AcquisitionSettings or dict). Unlike :meth:`from_settings` this
        includes what the images do to the correlation: log compression, noise, quantisation,
        finite scatterer density and the patch size. Results are cached per settings."""
        from ..simulate import AcquisitionSettings

        s = settings if isinstance(settings, AcquisitionSettings) else AcquisitionSettings.from_dict(dict(settings))
        key = (json.dumps(s.to_dict(), sort_keys=True), frames, step_mm, max_lag, seed, rows, cols)
        if key not in _SIMULATED_CURVES:
            from ..simulate import phantom_for, simulate_sweep
            from ..simulate.trajectory import make_trajectory

            rng = np.random.default_rng(seed)
            poses = make_trajectory("linear", frames, rng, step_mm=step_mm, pivot_mm=s.skin_point_mm,
                                    depth_mm=s.depth_mm)
            sweep = simulate_sweep(s, poses, phantom_for(s, poses, rng, structure=False), rng)
            # a band without texture (low-contrast near field) takes its neighbour's curve, as for a user's sweep
            curve = cls.calibrate(sweep, max_lag=max_lag, rows=rows, cols=cols, min_bands=2)
            curve.source = "calibrated on a simulated sweep of the probe's settings"
            _SIMULATED_CURVES[key] = curve
        c = _SIMULATED_CURVES[key]
        return DecorrelationCurve(c.depths_mm, c.distances_mm, c.rho, c.source, dict(c.meta))

    @classmethod
    def default(cls) -> "DecorrelationCurve":
        """Curve of a typical probe: the mean of the beam-model curves of the mid-range settings of the
        simulator's training sites (used when neither a curve nor the probe's settings are known)."""
        from ..simulate import SITES, TRAIN_SITES, AcquisitionSettings

        depths = np.linspace(0.0, 60.0, 61)
        dist = np.linspace(0.0, 6.0, 301)
        rows = []
        for site in TRAIN_SITES:
            spec = SITES[site]
            mid = {k: (float(np.mean(v)) if isinstance(v, tuple) else v) for k, v in spec.items()}
            rows.append(cls.from_settings(AcquisitionSettings(**mid), depths, 6.0, 301).rho)
        return cls(depths, dist, np.mean(rows, axis=0),
                   source="default: mean beam-model curve of the simulator's training-site probes",
                   meta={"sites": list(TRAIN_SITES)})

    @classmethod
    def calibrate(cls, sweep, *, max_lag: int = 12, rows: int = 5, cols: int = 5, bins: int = 24,
                  log_compressed: bool = True, max_size: int = 256,
                  min_bands: int | None = None,
                  structure_ratio: float | None = STRUCTURE_STD_RATIO) -> "DecorrelationCurve":
        """Fit a curve from a tracked calibration sweep of speckle (mostly elevational motion).

        Frame pairs up to ``max_lag`` apart (about 10 roughly geometric lags) are matched in-plane and their patch correlations paired
        with the true elevational distance of the patch centres (from the sweep's poses). Per depth
        band (patch row) the mean correlation in ``bins`` distance bins, anchored at ``rho(0) = 1`` and
        made non-increasing, is the curve (no shape is assumed: patch-averaged curves near the focus
        are not Gaussian). Estimation must then use the same patch grid and frame size.

        ``min_bands``: by default every depth band must have enough textured pairs; with a number, bands
        without them (e.g. water above a wire phantom) are left out as long as ``min_bands`` remain
        (depths outside the kept bands take the nearest one).

        ``structure_ratio``: patches holding structure (:func:`speckle_like`) are left out; a depth band with too
        few speckle-like pairs uses all of its textured pairs (listed in ``meta["bands_with_structure_mm"]``).
        None keeps every patch.

        What the user should know (much structure, bands left out) is in ``meta["warnings"]``, not logged: the
        commands that calibrate for a user log it (``calibrate-speckle``, ``adapt``), training data do not.
        """
        if sweep.image_to_world is None:
            raise InputError("A calibration sweep needs tracked poses.",
                             "Record the calibration sweep with a tracker (or simulate one).")
        common.check_speckle(sweep.frames)
        frames, spacing, _ = prepare_frames(sweep.frames, sweep.pixel_spacing, max_size)
        n, h, w = frames.shape
        try:
            grid = blockmatch.patch_grid((h, w), rows, cols)
        except ValueError as err:
            raise InputError(f"Frames of {w}x{h} pixels are too small to calibrate speckle decorrelation ({err}).",
                             "Use a calibration sweep with frames of at least about 64x64 pixels.") from None
        centres = _patch_centres_mm(grid, (h, w), spacing)  # [P, 2] centre frame
        depth = centres[:, 1] + (h - 1) * spacing[1] / 2
        rel_all = sweep.image_to_world
        c = common.centre_matrix(sweep.frame_shape, sweep.pixel_spacing)
        pts = np.concatenate([centres, np.zeros((len(centres), 1)), np.ones((len(centres), 1))], axis=1)
        d_all, r_all, band_all = [], [], []
        transform = log_to_intensity_correlation if log_compressed else None
        # roughly geometric lags: distances spread evenly on a log scale at a fraction of the cost of all lags
        lags = np.unique(np.round(np.geomspace(1, max(1, min(max_lag, n - 1)), 10)).astype(int))
        imaging_t = imaging_patches(torch.from_numpy(frames), grid)
        imaging = imaging_t.numpy()
        spk_all = []
        for lag in lags:
            rel = np.linalg.inv(c) @ np.linalg.inv(rel_all[:-lag]) @ rel_all[lag:] @ c  # k+lag in k, centre frame
            z = np.abs(np.einsum("mab,pb->mpa", rel, pts)[..., 2])  # [M, P]
            a = torch.from_numpy(frames[:-lag])
            b = torch.from_numpy(frames[lag:])
            res = blockmatch.in_plane_motion(a, b, grid, spacing, transform=transform)
            std_b = patch_std(b, grid)
            ok = (std_b > TEXTURE_MIN_STD).numpy() & imaging[None]
            d_all.append(z[ok])
            r_all.append(res.rho.numpy()[ok])
            band_all.append(np.broadcast_to(np.arange(len(depth)) // cols, z.shape)[ok])
            spk_all.append(speckle_like(std_b, speckle_std(std_b, imaging_t), structure_ratio).numpy()[ok])
        d, r, band, spk = (np.concatenate(v) for v in (d_all, r_all, band_all, spk_all))
        row_depths = depth.reshape(rows, cols)[:, 0]
        max_d = max(float(np.percentile(d, 99.5)), 1e-3)
        edges = np.linspace(0.0, max_d, bins + 1)
        dist = np.linspace(0.0, max_d, 256)
        table, fits, kept, missing, structured = [], [], [], [], []

        def binned(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            which = np.clip(np.digitize(d[m], edges) - 1, 0, bins - 1)
            count = np.bincount(which, minlength=bins)
            return which, count, count >= 3

        for i in range(rows):
            m = (band == i) & spk
            which, count, ok = binned(m)
            if ok.sum() < 3:  # a band of structure only (a tissue layer across the image): all its pairs
                m = band == i
                which, count, ok = binned(m)
                if ok.sum() >= 3 and structure_ratio is not None:
                    structured.append(i)
            if ok.sum() < 3:
                missing.append(i)
                continue
            mean_d = np.bincount(which, d[m], bins)[ok] / count[ok]
            mean_r = np.bincount(which, r[m], bins)[ok] / count[ok]
            # anchor at (0, 1): identical planes correlate fully (noise shows up in the first bins)
            xs, ys = np.concatenate([[0.0], mean_d]), np.concatenate([[1.0], mean_r])
            table.append(np.interp(dist, xs, ys))
            fits.append({"depth_mm": float(row_depths[i]), "pairs": int(m.sum()), "bins": int(ok.sum())})
            kept.append(i)
        if missing and (min_bands is None or len(kept) < min_bands):
            i = missing[0]
            raise InputError(f"The calibration sweep gives too few usable frame pairs at depth "
                             f"{row_depths[i]:.1f} mm.", "Use a longer calibration sweep of speckle with "
                             "steady elevational motion of about 0.05-0.3 mm per frame.")
        meta = {"fits": fits, "max_lag": max_lag, "patch_height_mm": grid.size * spacing[1],
                "static_patches_left_out": int((~imaging).sum()),
                "structure_std_ratio": structure_ratio,
                "structure_pairs_left_out": int((~spk).sum()),
                "structure_pairs_fraction": round(float((~spk).mean()), 4) if spk.size else 0.0}
        if meta["structure_pairs_fraction"] > STRUCTURE_WARN_FRACTION:
            text = (NO_SPECKLE_WARNING if meta["structure_pairs_fraction"] >= NO_SPECKLE_FRACTION
                    else STRUCTURE_CALIBRATION_WARNING)
            meta["warnings"] = [text.format(pct=100 * meta["structure_pairs_fraction"])]
        if structured:
            meta["bands_with_structure_mm"] = [round(float(row_depths[i]), 2) for i in structured]
        if missing:
            meta["bands_without_texture_mm"] = [round(float(row_depths[i]), 2) for i in missing]
            text = NO_TEXTURE_BANDS_WARNING.format(depths=", ".join(f"{row_depths[i]:.1f}" for i in missing),
                                                   kept=len(kept), rows=rows)
            meta.setdefault("warnings", []).append(text)
        return cls(row_depths[kept], dist, np.array(table), source=CALIBRATED_SOURCE, meta=meta)

    # --- storage ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": CURVE_FORMAT, "version": 1, "source": self.source, "meta": self.meta,
                "depths_mm": self.depths_mm.tolist(), "distances_mm": self.distances_mm.tolist(),
                "rho": self.rho.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecorrelationCurve":
        if not isinstance(d, dict) or d.get("format") != CURVE_FORMAT:
            raise InputError("This is not a FreehandRecon decorrelation curve.",
                             "Give a curve JSON written by DecorrelationCurve.save().")
        try:
            return cls(d["depths_mm"], d["distances_mm"], d["rho"], d.get("source", ""), d.get("meta", {}))
        except KeyError as err:
            raise InputError(f"The decorrelation curve lacks '{err.args[0]}'.", "Recalibrate and save it again.") from err

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the curve JSON atomically (a killed run, or a parallel reader, never sees half a file)."""
        from ..io.common import atomic_write, check_output

        path = Path(path)
        check_output(path, force)
        atomic_write([(path, [json.dumps(self.to_dict()).encode()])])
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DecorrelationCurve":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise InputError(f"Decorrelation curve file '{path}' does not exist.", "Check the path.") from err
        except json.JSONDecodeError as err:
            raise InputError(f"'{path}' is not valid JSON ({err}).", "Give a curve saved by FreehandRecon.") from err
        return cls.from_dict(d)


def curve_for(sweep, curve: DecorrelationCurve | str | os.PathLike | None,
              beam_model: bool = False) -> DecorrelationCurve:
    """The curve to use: the given one (object or JSON path), else, when the sweep's metadata carries simulator
    settings, the probe's curve - calibrated on a simulation of the probe
    (:meth:`DecorrelationCurve.from_simulation`), or its beam model (:meth:`DecorrelationCurve.from_settings`)
    with ``beam_model`` - else :meth:`DecorrelationCurve.default`."""
    if isinstance(curve, DecorrelationCurve):
        return curve
    if curve is not None:
        return DecorrelationCurve.load(curve)
    settings = (sweep.metadata or {}).get("settings")
    if isinstance(settings, dict) and "elevation_focus_mm" in settings:
        return DecorrelationCurve.from_settings(settings) if beam_model else DecorrelationCurve.from_simulation(settings)
    return DecorrelationCurve.default()


# --- estimation -----------------------------------------------------------------------------

def prepare_frames(frames: np.ndarray, spacing: tuple[float, float], max_size: int):
    """Float32 frames in [0, 1], block-averaged by an integer factor so both sides are <= max_size."""
    f = common.normalise_intensity(frames)
    factor = max(1, int(math.ceil(max(f.shape[1:]) / max_size)))
    if factor > 1:
        t = torch.nn.functional.avg_pool2d(torch.from_numpy(f)[:, None], factor)[:, 0]
        f = t.numpy()
    return np.ascontiguousarray(f), (spacing[0] * factor, spacing[1] * factor), factor


def _patch_centres_mm(grid: blockmatch.PatchGrid, shape: tuple[int, int], spacing) -> np.ndarray:
    h, w = shape
    return (grid.centres_px() - [(w - 1) / 2, (h - 1) / 2]) * np.asarray(spacing)


def patch_std(frames: torch.Tensor, grid: blockmatch.PatchGrid) -> torch.Tensor:
    """``[M, P]`` intensity standard deviation of every patch of ``frames`` ``[M, H, W]``."""
    return blockmatch.extract_patches(frames, grid).std(dim=(-2, -1))


def speckle_std(std: torch.Tensor, imaging: torch.Tensor) -> torch.Tensor:
    """``[M, 1]`` the typical patch's intensity std in each frame (``std`` ``[M, P]`` from :func:`patch_std`): the
    median over the patches that image (``imaging`` ``[P]``). Fully developed speckle, log-compressed, has the same
    std everywhere (about 5.6 dB of the display's dynamic range), whatever the gain; most patches are speckle, so
    the median is its std. Per frame, so that each pair of frames is judged on its own (live windows give the
    offline poses)."""
    sel = std[:, imaging] if bool(imaging.any()) else std
    return sel.median(dim=1, keepdim=True).values


def speckle_like(std: torch.Tensor, reference: torch.Tensor | float,
                 ratio: float | None = STRUCTURE_STD_RATIO) -> torch.Tensor:
    """``[M, P]`` True where a patch looks like speckle: its std at most ``ratio`` times its frame's typical
    ``reference`` (:func:`speckle_std`). Bright or anechoic structures (tissue layers, bone, vessel walls) raise
    the std and decorrelate far slower than speckle as the probe moves: read with the speckle curve they give
    short distances, and a curve calibrated on them is too wide. ``ratio`` None: every patch."""
    if ratio is None:
        return torch.ones_like(std, dtype=torch.bool)
    return std <= ratio * reference


MIN_IMAGING_PATCHES = 3  # fewer patches free of static pixels: use them all (e.g. wires in water, no speckle)


def imaging_patches(frames: torch.Tensor, grid: blockmatch.PatchGrid, max_static: float = 0.02) -> torch.Tensor:
    """``[P]`` True where at most ``max_static`` of a patch's pixels are static over the sweep ``[N, H, W]``:
    black all along (outside a curvilinear fan) or unchanging (a burnt-in overlay). A patch straddling the fan
    edge keeps the edge in the same place in every frame, so it correlates highly whatever the motion and would
    make the elevational distance read short, and a calibrated curve far too wide. When fewer than
    :data:`MIN_IMAGING_PATCHES` patches are free of static pixels (an image mostly black, such as wires in
    water), every patch is kept: there is no speckle to prefer."""
    static = (frames.amax(dim=0) <= 1.0 / 255) | (frames.std(dim=0, correction=0) < 1e-3)
    ok = blockmatch.extract_patches(static[None].float(), grid).mean(dim=(-2, -1))[0] <= max_static
    return ok if int(ok.sum()) >= MIN_IMAGING_PATCHES else torch.ones_like(ok)


def plane_fit(dist: np.ndarray, weight: np.ndarray, centres: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Weighted plane ``d = tz + a y + b x`` per pair: ``dist, weight [M, P]``, ``centres [P, 2]`` (x, y mm)
    -> ``[M, 3]`` (tz, a, b). A small ridge on the slopes keeps degenerate grids finite."""
    x, y = centres[:, 0], centres[:, 1]
    design = np.stack([np.ones_like(x), y, x], axis=1)  # [P, 3]
    wd = weight[..., None] * design  # [M, P, 3]
    normal = np.einsum("mpi,pj->mij", wd, design)
    normal += ridge * np.diag([0.0, 1.0, 1.0]) * np.maximum(weight.sum(1), 1e-9)[:, None, None] \
        * float(np.mean(x ** 2 + y ** 2))
    rhs = np.einsum("mpi,mp->mi", wd, dist)
    normal[:, 0, 0] += 1e-12
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


def estimate_relative(sweep, *, curve: DecorrelationCurve | str | os.PathLike | None = None,
                      progress: Callable[[str, float], None] | None = None,
                      should_cancel: Callable[[], bool] | None = None, rows: int = 5, cols: int = 5,
                      log_compressed: bool = True, max_size: int = 256,
                      batch: int = 32,
                      structure_ratio: float | None = STRUCTURE_STD_RATIO) -> tuple[np.ndarray, dict[str, Any]]:
    """Forward-canonical relative motions ``[N-1, 4, 4]`` in the centre frame and an info dict.

    See the module docstring for the method. ``curve`` is a :class:`DecorrelationCurve` or its JSON
    file (default: :func:`curve_for`). ``structure_ratio``: see :func:`speckle_like` (None: no patch is
    down-weighted as structure).
    """
    warnings = common.check_speckle(sweep.frames)
    chosen = curve_for(sweep, curve)
    frames, spacing, factor = prepare_frames(sweep.frames, sweep.pixel_spacing, max_size)
    n, h, w = frames.shape
    try:
        grid = blockmatch.patch_grid((h, w), rows, cols)
    except ValueError as err:
        raise InputError(f"Frames of {w}x{h} pixels are too small for speckle tracking ({err}).",
                         "Use frames of at least about 64x64 pixels, or fewer patches.") from err
    centres = _patch_centres_mm(grid, (h, w), spacing)
    depth = centres[:, 1] + (h - 1) * spacing[1] / 2
    if "patch_height_mm" not in chosen.meta:  # point curves (beam model) -> as seen by our patches
        chosen = chosen.patch_averaged(grid.size * spacing[1])
    transform = log_to_intensity_correlation if log_compressed else None
    params = np.zeros((n - 1, 6))
    rho_all = np.zeros((n - 1, len(depth)), np.float32)
    used = np.zeros(n - 1)
    t = torch.from_numpy(frames)
    imaging_t = imaging_patches(t, grid)
    imaging = imaging_t.numpy()
    structure = 0.0
    for start in range(0, n - 1, batch):
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        stop = min(n - 1, start + batch)
        a, b = t[start:stop], t[start + 1:stop + 1]
        res = blockmatch.in_plane_motion(a, b, grid, spacing, transform=transform)
        rho = res.rho.numpy().astype(np.float64)
        dist = chosen.distance(rho, np.broadcast_to(depth, rho.shape))
        std_b = patch_std(b, grid)
        weight = (std_b > TEXTURE_MIN_STD).numpy().astype(np.float64) * imaging[None]
        weight *= np.where(rho > RHO_HIGH, 0.2, np.where(rho < RHO_LOW, 0.1, 1.0))
        like = speckle_like(std_b, speckle_std(std_b, imaging_t), structure_ratio).numpy()
        weight *= np.where(like, 1.0, STRUCTURE_WEIGHT)
        structure += float((~like[:, imaging]).sum())
        tz, slope_y, slope_x = plane_fit(dist, weight, centres).T
        ry = -np.arcsin(np.clip(slope_x, -0.5, 0.5))
        rx = np.arcsin(np.clip(slope_y / np.cos(ry), -0.5, 0.5))
        params[start:stop, 0:2] = res.t.numpy()
        params[start:stop, 2] = np.maximum(tz, 0.0)
        params[start:stop, 3] = np.rad2deg(rx)
        params[start:stop, 4] = np.rad2deg(ry)
        params[start:stop, 5] = np.rad2deg(res.theta.numpy())
        rho_all[start:stop] = rho
        used[start:stop] = (weight >= 1.0).mean(axis=1)
        if progress is not None:
            progress("speckle", stop / (n - 1))
    rel = geometry.params_to_matrix(params)
    info = {"curve": chosen.source, "patch_grid": [rows, cols], "patch_size_px": grid.size,
            "downsample_factor": factor, "log_compressed": log_compressed,
            "mean_correlation": float(rho_all.mean()),
            "fraction_patches_in_range": float(used.mean()),
            "static_patches_left_out": int((~imaging).sum()),
            "structure_patches_fraction": round(structure / max(1, (n - 1) * int(imaging.sum())), 4),
            "warnings": warnings}
    return rel, info
