"""Learned sensorless pose estimation: model files, loading with checks, and inference.

A model is two files side by side: ``<name>.safetensors`` (the weights) and ``<name>.json``
(architecture config, per-DoF output scales, input spacing/size, window, training recipe,
metrics and the sha256 of the weights). :func:`load_model` verifies the checksum and builds
the network from the json with strict state-dict checking. :func:`estimate_relative` returns
forward-canonical relative motions in the centre frame (see :mod:`freehandrecon.poses.common`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import geometry
from ..errors import Cancelled, InputError, ResourceError
from ..model_files import (DEFAULT_POSE_MODEL, MODEL_DIR, resolve_model_files, sha256_file,  # noqa: F401 (public)
                           verify_weights)
from ..sweep import Sweep
from . import common
from .network import PoseNet, PoseNetConfig, build_pose_net

DEFAULT_MODEL_NAME = DEFAULT_POSE_MODEL
FORMAT = "freehandrecon-posenet"
DOF_NAMES = ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")
INFERENCE_MODES = ("window", "full")
ROTATION_SOURCES = ("network", "speckle")


@dataclass
class LoadedModel:
    """A ready-to-run network with the facts stored beside it."""

    net: PoseNet
    config: PoseNetConfig
    scales: np.ndarray                 # [6] per-DoF output scales (mm, degrees)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    device: str = "cpu"
    bundle: dict[str, Path] = field(default_factory=dict)  # files a probe model carries: "curve", "guard"

    @property
    def window(self) -> int:
        return self.config.window

    @property
    def elevation_gain(self) -> float:
        """Factor on the forward elevational step (a probe model's calibration, :mod:`.elevation_gain`); 1 if none."""
        return float(self.meta.get("elevation_gain", 1.0))

    @property
    def learned_curve(self) -> str:
        """Which curve the network's features use by default: ``"probe"`` (the bundled one, if any) or
        ``"typical"`` (``adapt`` found the network drifts less with the typical curve; speckle still uses the
        bundled one)."""
        return str(self.meta.get("learned_curve", "probe"))

    @property
    def out_of_plane_rotations(self) -> str:
        """Where the tilt and yaw (rx, ry) come from: ``"network"``, or ``"speckle"`` (a probe model from ``adapt``
        whose held-out frames drifted least with speckle decorrelation's rotations, through the probe's curve)."""
        return str(self.meta.get("out_of_plane_rotations", "network"))

    @property
    def min_frames(self) -> int:
        """Shortest sweep accepted: one full window of pairs."""
        return self.config.window + 1


def save_model(net: PoseNet, scales: np.ndarray, out_dir: str | Path, name: str,
               extra: dict[str, Any] | None = None, half: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` and ``<name>.json`` (with the weights' sha256) into ``out_dir``.

    ``half`` stores floating-point tensors as float16 (half the file size); loading casts them
    back to the network's float32.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": 1,
        "name": name,
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "config": net.config.to_dict(),
        "scales": [float(v) for v in np.asarray(scales).reshape(6)],
        "dof_names": list(DOF_NAMES),
        "input_spacing_mm": net.config.input_spacing,
        "input_size": net.config.input_size,
        "window": net.config.window,
        "weights_dtype": "float16" if half else "float32",
        "output": "relative motion of frame t+1 in frame t, centre frame, forward-canonical; "
                  "[tx,ty,tz mm, rx,ry,rz deg] (R = Rz Ry Rx) divided by scales",
    }
    meta.update(extra or {})
    js = out / f"{name}.json"
    js.write_text(json.dumps(meta, indent=2))
    return weights, js


_FIX = ("Re-download/reinstall FreehandRecon to restore the shipped model, or retrain with `freehandrecon train` "
        "(which writes matching files).")
BUNDLED = ("curve", "guard")  # what a probe model from `freehandrecon adapt` carries beside its weights


def bundled_files(js: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """The files a model description names under "curve" and "guard" (``{"file", "sha256"}``, written by
    ``freehandrecon adapt``), checked against their sha256; ``{}`` for a model that bundles none."""
    out = {}
    for key in BUNDLED:
        entry = meta.get(key)
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        p = js.parent / str(entry["file"])
        fix = ("Keep the files `freehandrecon adapt` wrote together (move or copy the whole folder), or run adapt "
               "again.")
        if not p.is_file():
            raise ResourceError(f"The {key} file {p} that {js.name} carries is missing.", fix)
        if sha256_file(p) != entry.get("sha256"):
            raise ResourceError(f"The {key} file {p} does not match the checksum in {js.name}: it was changed or "
                                "belongs to another probe model.", fix)
        out[key] = p
    return out


def model_bundle(path: str | Path | None) -> dict[str, Path]:
    """:func:`bundled_files` of the pose model at ``path``; ``{}`` when ``path`` is None or is not a pose model
    description (e.g. a speckle curve JSON given as ``--model``)."""
    if path is None:
        return {}
    p = Path(path)
    p = p.with_suffix(".json") if p.suffix == ".safetensors" else p
    if p.suffix != ".json" or not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return {}
    return bundled_files(p, meta)


def load_model(path: str | Path | None = None, device: str = "cpu") -> LoadedModel:
    """Load a model (default: the shipped one in Resources/Models), verifying checksum and architecture.

    Raises :class:`ResourceError` for missing files, a checksum mismatch or weights that do not
    fit the architecture described in the json.
    """
    from safetensors.torch import load_file

    js, weights, meta = resolve_model_files(path, DEFAULT_MODEL_NAME, FORMAT, "pose model", _FIX)
    verify_weights(js, weights, meta, "pose model", _FIX)
    try:
        config = PoseNetConfig.from_dict(meta["config"])
        net = build_pose_net(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResourceError(f"The architecture in {js} is not one this FreehandRecon version can build ({exc}).",
                            "Update FreehandRecon or use a model trained with this version.") from exc
    state = load_file(str(weights))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ResourceError(f"The weights in {weights.name} do not fit the architecture described in {js.name} "
                            f"(architecture mismatch: {' '.join(first)}).",
                            "Use the .json written together with these weights, or retrain.") from exc
    net.eval().to(device)
    scales = np.asarray(meta["scales"], dtype=np.float64)
    if scales.shape != (6,) or not np.all(scales > 0):
        raise ResourceError(f"{js} has invalid per-DoF scales {meta.get('scales')}.", "Retrain or reinstall the model.")
    if meta.get("out_of_plane_rotations", "network") not in ROTATION_SOURCES:
        raise ResourceError(f"{js} has an unknown out_of_plane_rotations {meta.get('out_of_plane_rotations')!r}.",
                            f"Use one of {ROTATION_SOURCES}, or run freehandrecon adapt again.")
    gain = meta.get("elevation_gain", 1.0)
    if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not 0.0 < float(gain) < float("inf"):
        raise ResourceError(f"{js} has an invalid elevation_gain {gain!r}: it must be a positive number.",
                            "Run freehandrecon adapt again, or remove the entry to use the model uncalibrated.")
    return LoadedModel(net, config, scales, meta, js, device, bundled_files(js, meta))


def _window_starts(pairs: int, window: int, stride: int) -> list[int]:
    if pairs <= window:
        return [0]
    starts = list(range(0, pairs - window + 1, stride))
    if starts[-1] != pairs - window:
        starts.append(pairs - window)
    return starts


def predict_scaled(net: PoseNet, frames: np.ndarray, *, window: int, mode: str = "window", device: str = "cpu",
                   batch: int = 64, progress: Callable[[str, float], None] | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   decor: np.ndarray | None = None) -> np.ndarray:
    """Model-input frames ``[N, S, S]`` in [0, 1] (and, for a v2 network, the decorrelation features
    ``[N-1, 2L, g, g]`` of :func:`decorrelation_inputs`) -> scaled predictions ``[N-1, 6]``.

    The frame encoder runs once per frame, the pair encoder once per pair; then the LSTMs run
    over overlapping windows of ``window`` pairs (stride ``window // 2``), averaging the overlaps
    with triangular weights (``mode="window"``), or once over the whole sequence (``"full"``).
    """
    import torch

    if mode not in INFERENCE_MODES:
        raise InputError(f"Unknown inference mode '{mode}'.", f"Use one of {INFERENCE_MODES}.")
    n = frames.shape[0]
    pairs = n - 1
    steps = max(1, 2 * ((n + batch - 1) // batch))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if should_cancel is not None and should_cancel():
            raise Cancelled("Pose estimation was cancelled.")
        if progress is not None:
            progress("poses", min(1.0, done / steps))

    was_training = net.training
    net.eval()
    x_all = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
    d_all = None if decor is None else torch.from_numpy(np.ascontiguousarray(decor, dtype=np.float32))
    with torch.inference_mode():
        feats = []
        for s in range(0, n, batch):
            feats.append(net.encode_frames(x_all[s:s + batch].to(device)))
            tick()
        f = torch.cat(feats)
        loc, glo = [], []
        for s in range(0, pairs, batch):
            e = min(pairs, s + batch)
            lo, gl = net.pair_features(f[s:e], f[s + 1:e + 1], x_all[s:e].to(device), x_all[s + 1:e + 1].to(device),
                                       None if d_all is None else d_all[s:e].to(device))
            loc.append(lo)
            glo.append(gl)
            tick()
        loc_t, glo_t = torch.cat(loc), torch.cat(glo)
        if mode == "full" or pairs <= window:
            out = net.motion(loc_t[None], glo_t[None])["pred"][0]
        else:
            starts = _window_starts(pairs, window, max(1, window // 2))
            idx = torch.tensor(starts)[:, None] + torch.arange(window)[None]
            pred = net.motion(loc_t[idx], glo_t[idx])["pred"]                 # [K, W, 6]
            w = torch.minimum(torch.arange(1, window + 1), torch.arange(window, 0, -1)).float().to(pred)
            acc = torch.zeros(pairs, 6, device=pred.device)
            wsum = torch.zeros(pairs, 1, device=pred.device)
            acc.index_add_(0, idx.flatten().to(pred.device), (pred * w[None, :, None]).reshape(-1, 6))
            wsum.index_add_(0, idx.flatten().to(pred.device), w.repeat(len(starts))[:, None])
            out = acc / wsum
    if was_training:
        net.train()
    return out.float().cpu().numpy().astype(np.float64)


def params_to_relative(params: np.ndarray) -> np.ndarray:
    """Unscaled 6-vectors ``[N-1, 6]`` -> ``[N-1, 4, 4]`` relative motions."""
    return geometry.params_to_matrix(params)


def decorrelation_inputs(config: PoseNetConfig, frames: np.ndarray, frame_shape: tuple[int, int],
                         spacing: tuple[float, float], curve) -> np.ndarray | None:
    """The v2 network's decorrelation features for model-input ``frames`` (None for a v1 network).
    ``curve`` is a :class:`~freehandrecon.poses.speckle.DecorrelationCurve`."""
    if not config.decorrelation_lags:
        return None
    from .decorrelation import model_features

    return model_features(frames, frame_shape, spacing, curve, input_spacing=config.input_spacing,
                          input_size=config.input_size, lags=config.decorrelation_lags,
                          floor_lag=config.decorrelation_floor_lag)


def adapted_geometry_warnings(model: LoadedModel, sweep: Sweep) -> list[str]:
    """A warning when a probe model (``freehandrecon adapt``) meets frames of another size or pixel spacing than
    it was adapted on (another depth or probe setting, for which its curve and fine-tuning do not hold)."""
    inputs = (model.meta.get("adaptation") or {}).get("inputs") or []
    if not inputs:
        return []
    size = list(inputs[0].get("frame_size", []))
    spacing = inputs[0].get("pixel_spacing_mm", [])
    here = [sweep.frame_shape[1], sweep.frame_shape[0]]
    if size == here and len(spacing) == 2 and np.allclose(spacing, sweep.pixel_spacing, rtol=0.01, atol=1e-6):
        return []
    msg = (f"The probe model was adapted on frames of {size[0]}x{size[1]} pixels at "
           f"{' x '.join(f'{float(v):.4g}' for v in spacing)} mm, but this sweep has {here[0]}x{here[1]} at "
           f"{' x '.join(f'{float(v):.4g}' for v in sweep.pixel_spacing)} mm: its curve and fine-tuning may not hold. "
           "Run freehandrecon adapt on sweeps with this probe setting.")
    import logging

    logging.getLogger(__name__).warning(msg)
    return [msg]


def estimate_relative(sweep: Sweep, *, model: LoadedModel | str | Path | None = None, device: str = "cpu",
                      progress: Callable[[str, float], None] | None = None,
                      should_cancel: Callable[[], bool] | None = None,
                      mode: str = "window", curve=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Forward-canonical relative motions ``[N-1, 4, 4]`` in the centre frame, and an info dict.

    ``curve`` (v2 models): the probe's decorrelation curve, a ``DecorrelationCurve`` or a curve JSON
    from ``freehandrecon calibrate-speckle``; default the curve the model carries (a probe model from
    ``freehandrecon adapt`` whose ``learned_curve`` is ``"probe"``), else :func:`decorrelation.curve_for_sweep`.
    A curve whose calibration checked this model (:mod:`.curve_check`) and found it drifting more with the curve
    is left out of the network's features (info ``probe_curve`` says so).
    A probe model's ``elevation_gain`` multiplies the forward elevational step; with ``out_of_plane_rotations``
    ``"speckle"`` the tilt and yaw come from speckle decorrelation through the probe's curve (the bundled one, or
    ``curve``).
    """
    common.check_pixel_spacing_known(sweep)
    m = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    common.require_min_frames(sweep.num_frames, m.min_frames, "the learned pose estimator")
    warnings = common.check_speckle(sweep.frames) + adapted_geometry_warnings(m, sweep)
    t0 = time.perf_counter()
    frames = common.resample_frames(sweep.frames, sweep.pixel_spacing, m.config.input_spacing, m.config.input_size)
    if should_cancel is not None and should_cancel():
        raise Cancelled("Pose estimation was cancelled.")
    decor = curve_source = checked = None
    if m.config.decorrelation_lags:
        from .curve_check import describe, verdict
        from .decorrelation import curve_for_sweep
        from .speckle import DecorrelationCurve

        if curve is not None and not isinstance(curve, DecorrelationCurve):
            curve = DecorrelationCurve.load(curve)
        check = verdict(curve, m.meta.get("sha256")) if curve is not None else None
        bundled = m.bundle.get("curve") if m.learned_curve == "probe" else None
        given = curve if check is None or check["use_curve"] else None
        checked = describe(check) if check is not None else None
        c = curve_for_sweep(sweep, given if given is not None else bundled)
        curve_source = c.source
        decor = decorrelation_inputs(m.config, frames, sweep.frame_shape, sweep.pixel_spacing, c)
    scaled = predict_scaled(m.net, frames, window=m.window, mode=mode, device=m.device, progress=progress,
                            should_cancel=should_cancel, decor=decor)
    params = scaled * m.scales[None]
    params[:, 2] *= m.elevation_gain
    if m.out_of_plane_rotations == "speckle":
        from . import speckle

        if should_cancel is not None and should_cancel():
            raise Cancelled("Pose estimation was cancelled.")
        srel, _ = speckle.estimate_relative(sweep, curve=curve if curve is not None else m.bundle.get("curve"))
        params[:, 3:5] = geometry.matrix_to_params(srel)[:, 3:5]
    seconds = time.perf_counter() - t0
    info = {
        "model": str(m.path) if m.path else None,
        "model_name": m.meta.get("name"),
        "inference_mode": mode,
        **({"decorrelation_curve": curve_source} if curve_source else {}),
        **({"probe_curve": checked} if checked else {}),
        **({"elevation_gain": round(m.elevation_gain, 4)} if m.elevation_gain != 1.0 else {}),
        **({"out_of_plane_rotations": "speckle"} if m.out_of_plane_rotations == "speckle" else {}),
        "frames_per_second": round(sweep.num_frames / max(seconds, 1e-9), 1),
        "warnings": warnings,
    }
    return params_to_relative(params), info


def benchmark_inference(num_frames: int = 256, threads: int = 2, model: LoadedModel | None = None,
                        device: str = "cpu", repeats: int = 2) -> dict[str, float]:
    """Frames/s of the network on ``num_frames`` random model-input frames (best of ``repeats``).

    Uses the shipped model when it loads, else an untrained network of the default
    architecture (speed does not depend on the weights).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if model is None:
            try:
                model = load_model(device=device)
            except ResourceError:
                net = build_pose_net().eval().to(device)
                model = LoadedModel(net, net.config, np.ones(6), device=device)
        s = model.config.input_size
        frames = np.random.default_rng(0).random((num_frames, s, s), dtype=np.float32)
        curve = None
        if model.config.decorrelation_lags:
            from .speckle import DecorrelationCurve

            curve = DecorrelationCurve.default()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            decor = decorrelation_inputs(model.config, frames, (s, s), (model.config.input_spacing,) * 2, curve)
            predict_scaled(model.net, frames, window=model.window, device=device, decor=decor)
            best = min(best, time.perf_counter() - t0)
        return {"frames": num_frames, "threads": threads, "device": device, "seconds": best,
                "frames_per_second": num_frames / best, "input_size": s}
    finally:
        torch.set_num_threads(previous)
