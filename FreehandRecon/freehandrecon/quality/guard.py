"""The shipped quality guard: files, loading with checks, per-frame scores and the sweep verdict.

A guard is two files side by side, like the pose model: ``<name>.safetensors`` (autoencoder
weights ``net.*``, the phase-1 weights ``phase1.*`` kept for the evaluation table, the latent
statistics ``stats.*``) and ``<name>.json`` (architecture, input grid, site names, thresholds,
loss weights, training recipe, metrics and the sha256 of the weights, checked at load).

:func:`check_sweep` resamples the frames to the guard grid (any frame size and pixel spacing is
accepted: the guard looks at the central 38.4 x 38.4 mm at 0.6 mm/pixel), scores every frame
(Mahalanobis OOD score on the encoder features, the input texture and the latent; reconstruction
MAE) and compares them with thresholds calibrated on held-out in-distribution frames. The OOD
score is the feature-ensemble Mahalanobis score of :mod:`.ood` (0 = a typical in-distribution frame, 1 = the 99th percentile of one layer's
in-distribution distances). A frame is *out of distribution* when its OOD score exceeds
``thresholds["ood"]`` (the 99th percentile of held-out in-distribution frames' scores).
Verdict: ``"out-of-distribution"`` when at least ``thresholds["ood_fraction"]`` of the frames
are, ``"warning"`` when at least ``thresholds["warning_fraction"]`` are, else ``"ok"``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import InputError, ResourceError
from ..model_files import MODEL_DIR, resolve_model_files, sha256_file, verify_weights  # noqa: F401 (MODEL_DIR is public here)
from ..sweep import Sweep
from .data import guard_frames
from .ood import EnsembleStats, LatentStats

if TYPE_CHECKING:  # torch is imported only when a guard is built or loaded
    from .model import GuardAE, GuardConfig

DEFAULT_GUARD_NAME = "quality_guard_v1"
FORMAT = "freehandrecon-quality-guard"
VERDICTS = ("ok", "warning", "out-of-distribution")
DEFAULT_THRESHOLDS = {"ood": float("inf"), "recon": float("inf"), "warning_fraction": 0.1, "ood_fraction": 0.5}


@dataclass
class Guard:
    """A loaded guard: network (eval mode), latent statistics, thresholds and the json facts."""

    net: "GuardAE"
    stats: EnsembleStats
    thresholds: dict[str, float]
    sites: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    phase1_state: dict[str, Any] | None = None

    @property
    def config(self) -> "GuardConfig":
        return self.net.config

    def score(self, x: np.ndarray, batch: int = 256,
              progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
        """Guard frames ``[N, S, S]`` in [0, 1] -> ``ood [N]`` (ensemble score), ``layer_scores [L, N]``,
        ``latent_distance [N]`` (Mahalanobis on the latent alone), ``knn [N]``, ``recon [N]``, ``latent [N, p]``."""
        feats, recon = encode_frames(self.net, x, batch, progress)
        feats = select_layers(feats, feature_names(self.net), self.stats.names)
        layer = self.stats.layer_scores(feats)
        return {"ood": layer.max(axis=0), "layer_scores": layer, "latent_distance": self.stats.latent_distance(feats),
                "knn": self.stats.knn(feats[-1]), "recon": recon, "latent": feats[-1], "features": feats}


def feature_names(net: "GuardAE") -> list[str]:
    """Names of the feature layers: ``level1..levelK`` (pooled encoder levels), ``texture`` (input
    Laplacian-pyramid energy, :mod:`.texture`), then ``latent`` (always last)."""
    return [f"level{i + 1}" for i in range(len(net.config.widths))] + ["texture", "latent"]


def select_layers(feats: list[np.ndarray], names: list[str], wanted: list[str]) -> list[np.ndarray]:
    """The feature layers named ``wanted`` (a guard's fitted layers; guards written before the texture layer
    have none) out of all layers ``feats`` named ``names``."""
    return [feats[names.index(n)] for n in wanted]


def encode_frames(net: "GuardAE", x: np.ndarray, batch: int = 256,
                  progress: Callable[[str, float], None] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Feature layers (pooled encoder levels ``[N, 2 C_l]``, the input texture energies ``[N, 3]``, then the
    latent ``[N, p]``; the order of :func:`feature_names`) and per-frame reconstruction MAE ``[N]`` of guard
    frames ``[N, S, S]``."""
    import torch

    from .texture import laplacian_energy

    net.eval()
    n = x.shape[0]
    parts: list[list[np.ndarray]] = []
    errs = []
    with torch.no_grad():
        for s in range(0, n, batch):
            t = torch.from_numpy(np.ascontiguousarray(x[s:s + batch], dtype=np.float32))[:, None]
            pooled, z = net.features(t)
            x_hat = net.decoder(z)
            parts.append([p.double().numpy() for p in pooled] + [laplacian_energy(t).double().numpy(),
                                                                 z.double().numpy()])
            errs.append((x_hat - t).abs().flatten(1).mean(dim=1).double().numpy())
            if progress is not None:
                progress("quality", min(1.0, (s + batch) / n))
    feats = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return feats, np.concatenate(errs)


@dataclass
class QualityReport:
    """Per-frame guard scores of one sweep and the verdict."""

    ood_score: np.ndarray            # [N] feature-ensemble Mahalanobis score (see module docstring)
    recon_error: np.ndarray          # [N] mean absolute reconstruction error (intensity 0-1)
    thresholds: dict[str, float]
    frame_out: np.ndarray            # [N] bool: OOD score above its threshold
    verdict: str
    message: str
    guard: str = ""
    resampled: bool = False
    input_frame_shape: tuple[int, int] = (0, 0)
    input_spacing: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0

    @property
    def num_frames(self) -> int:
        return int(self.ood_score.shape[0])

    @property
    def fraction_out(self) -> float:
        """Fraction of frames out of distribution."""
        return float(self.frame_out.mean()) if self.num_frames else 0.0

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(self.num_frames, 1)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON dictionary (``json.dumps`` ready) with the summary and the per-frame arrays."""
        return {
            "verdict": self.verdict, "message": self.message, "guard": self.guard,
            "num_frames": self.num_frames, "fraction_out_of_distribution": round(self.fraction_out, 4),
            "frames_out_of_distribution": [int(i) for i in np.flatnonzero(self.frame_out)],
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "median_ood_score": float(np.median(self.ood_score)) if self.num_frames else None,
            "median_recon_error": float(np.median(self.recon_error)) if self.num_frames else None,
            "ood_score": [round(float(v), 4) for v in self.ood_score],
            "recon_error": [round(float(v), 5) for v in self.recon_error],
            "resampled": self.resampled, "input_frame_shape": list(self.input_frame_shape),
            "input_spacing_mm": [float(v) for v in self.input_spacing],
            "seconds": round(self.seconds, 4), "ms_per_frame": round(self.ms_per_frame, 3),
        }


def verdict_for(frame_out: np.ndarray, thresholds: dict[str, float]) -> str:
    """``ok`` / ``warning`` / ``out-of-distribution`` from the per-frame flags and the fraction thresholds."""
    frac = float(np.mean(frame_out)) if len(frame_out) else 0.0
    if frac >= thresholds["ood_fraction"]:
        return "out-of-distribution"
    if frac >= thresholds["warning_fraction"]:
        return "warning"
    return "ok"


def _message(verdict: str, n_out: int, n: int, thr: float) -> str:
    pct = 100.0 * n_out / max(n, 1)
    if verdict == "ok":
        return (f"Sweep looks like the data the learned pose model was trained on ({n_out} of {n} frames, "
                f"{pct:.0f}%, above the out-of-distribution threshold {thr:.1f}).")
    what = ("Most of this sweep is" if verdict == "out-of-distribution" else "Part of this sweep is")
    return (f"{what} unlike the learned pose model's training data: {n_out} of {n} frames ({pct:.0f}%) are out of "
            f"distribution (score above {thr:.1f}). Learned poses may be unreliable; check probe contact, gain and "
            "depth, use tracked poses, or adapt the model to this probe once from a tracked sweep (freehandrecon "
            "adapt; in the module: Adapt to my probe).")


def check_sweep(sweep: Sweep, *, guard: Guard | None = None,
                progress: Callable[[str, float], None] | None = None) -> QualityReport:
    """Score every frame of ``sweep`` with the guard (default: the shipped one) and give a verdict.

    Frames of another size or pixel spacing are resampled to the guard grid (area averaging or
    bilinear, then a centre crop/pad; ``report.resampled`` tells). Raises :class:`ResourceError`
    when the guard files are missing or fail their checksum.
    """
    guard = load_guard() if guard is None else guard
    cfg = guard.config
    t0 = time.perf_counter()
    x = guard_frames(sweep.frames, sweep.pixel_spacing, cfg.input_spacing, cfg.input_size)
    s = guard.score(x, progress=progress)
    seconds = time.perf_counter() - t0
    thr = {**DEFAULT_THRESHOLDS, **guard.thresholds}
    flags = s["ood"] > thr["ood"]
    verdict = verdict_for(flags, thr)
    native = sweep.frame_shape != (cfg.input_size, cfg.input_size) or any(
        abs(float(v) - cfg.input_spacing) > 1e-6 for v in sweep.pixel_spacing)
    return QualityReport(s["ood"], s["recon"], thr, flags, verdict,
                         _message(verdict, int(flags.sum()), int(flags.size), thr["ood"]),
                         guard=str(guard.meta.get("name", "")), resampled=bool(native),
                         input_frame_shape=sweep.frame_shape,
                         input_spacing=tuple(float(v) for v in sweep.pixel_spacing), seconds=seconds)


# --- files ------------------------------------------------------------------------------------------------------

def save_guard(net: "GuardAE", stats: EnsembleStats, thresholds: dict[str, float], sites: list[str], out_dir: str | Path,
               name: str = DEFAULT_GUARD_NAME, phase1_state: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` and ``<name>.json`` (with the weights' sha256) into ``out_dir``."""
    import torch
    from safetensors.torch import save_file


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for k, v in (phase1_state or {}).items():  # phase 1 only serves the evaluation table: half precision
        v = v.detach().cpu().clone()
        tensors[f"phase1.{k}"] = (v.half() if v.is_floating_point() else v).contiguous()
    for layer, st in zip(stats.names, stats.layers):
        tensors[f"stats.{layer}.means"] = torch.from_numpy(st.means.astype(np.float32))
        tensors[f"stats.{layer}.precision"] = torch.from_numpy(st.precision.astype(np.float32))
    tensors["stats.bank"] = torch.from_numpy(stats.bank.astype(np.float16))  # kNN baseline only
    weights = out / f"{name}.safetensors"
    save_file(tensors, str(weights), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": 1, "name": name, "weights": weights.name, "sha256": sha256_file(weights),
            "config": net.config.to_dict(), "sites": list(sites),
            "thresholds": {k: float(v) for k, v in thresholds.items()},
            "knn_k": int(stats.k),
            "feature_layers": [{"name": n, "dims": int(st.means.shape[1]), "shrinkage": float(st.shrinkage),
                                "median": float(c), "scale": float(sc)}
                               for n, st, c, sc in zip(stats.names, stats.layers, stats.centre, stats.scale)],
            "input": f"frames resampled to {net.config.input_spacing} mm/pixel, centre {net.config.input_size} x "
                     f"{net.config.input_size} crop, intensity /255 (uint8) or /max"}
    meta.update(extra or {})
    js = out / f"{name}.json"
    js.write_text(json.dumps(meta, indent=2))
    return weights, js


_FIX = "Reinstall FreehandRecon to restore the shipped guard, or retrain with `freehandrecon quality-train`."


def _resolve(path: str | Path | None) -> tuple[Path, Path, dict[str, Any]]:
    return resolve_model_files(path, DEFAULT_GUARD_NAME, FORMAT, "quality guard", _FIX)


def load_guard(path: str | Path | None = None) -> Guard:
    """Load a guard (default: the shipped one in Resources/Models), verifying checksum and architecture."""
    from safetensors.torch import load_file

    from .model import GuardConfig, build_guard

    js, weights, meta = _resolve(path)
    verify_weights(js, weights, meta, "quality guard", _FIX)
    tensors = load_file(str(weights))
    try:
        config = GuardConfig.from_dict(meta["config"])
        net = build_guard(config)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        layers = meta["feature_layers"]
        stats = EnsembleStats(
            [LatentStats(tensors[f"stats.{f['name']}.means"].double().numpy(),
                         tensors[f"stats.{f['name']}.precision"].double().numpy(), float(f["shrinkage"]))
             for f in layers],
            [f["name"] for f in layers], np.array([f["median"] for f in layers], np.float64),
            np.array([f["scale"] for f in layers], np.float64), tensors["stats.bank"].double().numpy(),
            int(meta.get("knn_k", 5)))
        known = feature_names(net)
        if not stats.names or stats.names[-1] != "latent" or any(n not in known for n in stats.names):
            raise ValueError(f"feature layers {stats.names} do not match the architecture ({known})")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ResourceError(f"The quality guard in {js} does not fit this FreehandRecon version ({str(exc)[:200]}).",
                            "Use the .json written together with these weights, update FreehandRecon or retrain."
                            ) from exc
    phase1 = {k[7:]: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()
              if k.startswith("phase1.")} or None
    thresholds = {**DEFAULT_THRESHOLDS, **meta.get("thresholds", {})}
    return Guard(net.eval(), stats, thresholds, list(meta.get("sites", [])), meta, js, phase1)


def guard_available(path: str | Path | None = None) -> bool:
    """True when the guard files exist (the checksum is checked only when loading)."""
    try:
        _, weights, _ = _resolve(path)
    except ResourceError:
        return False
    return weights.exists()


def calibrate_thresholds(ood: np.ndarray, recon: np.ndarray, quantile: float = 0.99,
                         warning_fraction: float = 0.1, ood_fraction: float = 0.5) -> dict[str, float]:
    """Frame thresholds at the ``quantile`` of held-out in-distribution frames' scores."""
    if len(ood) == 0:
        raise InputError("No held-out in-distribution frames to calibrate the thresholds on.",
                         "Keep some sweeps of the training sites for validation.")
    return {"ood": float(np.quantile(ood, quantile)), "recon": float(np.quantile(recon, quantile)),
            "quantile": float(quantile), "warning_fraction": float(warning_fraction),
            "ood_fraction": float(ood_fraction)}
