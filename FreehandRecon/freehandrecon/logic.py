"""The one reconstruction workflow: read -> poses -> compound -> MRML nodes -> files.

The same :class:`ReconstructionLogic` serves the Slicer module (with ``slicer.mrmlScene``),
the Python console and the ``freehandrecon`` command line (with a scene from
:func:`freehandrecon.io.slicer_scene.new_scene`). Nodes are created only after the computation
succeeded, so a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .compound import CompoundOptions, CompoundResult, OutputGrid, compound, fit_grid, grid_from_roi
from .compound import HoleFilling as HoleFilling  # re-exported: callers above build requests from logic's names
from .compound.masks import normalise_importance
from .compound.memory import check_reconstruction_memory, expected_holes
from .compound.options import channel_options
from .errors import Cancelled, InputError, OutputExistsError
from .fan import FanMask, detect_fan
from .poses import IMAGE_CURVE_WARNING, PoseEstimate, estimate_poses, sweep_with_poses
from .sweep import Sweep

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]
"""``progress(stage, fraction)`` with fraction in [0, 1] for the named stage."""


@dataclass
class Roi:
    """An output box: centre and size in world mm, optional 3x3 orientation (columns = box axes)."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    orientation: np.ndarray | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` unless the centre is 3 finite numbers and the size 3 positive ones."""
        try:
            c = np.asarray(self.center, dtype=np.float64).reshape(-1)
            z = np.asarray(self.size, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            c = z = np.array([])
        if c.size != 3 or z.size != 3 or not np.isfinite(c).all() or not (np.isfinite(z).all() and (z > 0).all()):
            raise InputError(f"The output box (ROI) needs a finite centre and a positive size in mm; got centre "
                             f"{self.center!r}, size {self.size!r}.",
                             "Give e.g. --roi 0 0 0 100 100 100 (centre x y z, size x y z, mm), or leave it out to "
                             "fit the box to the frames.")


@dataclass
class PoseRequest:
    """Where the poses come from: the tracker, the learned estimator or speckle decorrelation."""

    method: str = "tracked"  # tracked | learned | speckle
    model: str | None = None  # learned: the model file (None: the shipped one); speckle: a curve JSON, as --model
    curve: str | None = None  # probe decorrelation curve JSON (speckle; learned v2); None: probe model or typical
    sweep_direction: str = "auto"  # auto | forward | backward
    device: str = "cpu"
    check_quality: bool = True  # run the quality guard before learned poses (when it is installed)


def checked_pose_request(poses: PoseRequest) -> PoseRequest:
    """``poses`` with an empty model or curve path ("" or "." from a path widget) as None; for estimated poses,
    :class:`InputError` before any slow work when the model (a file or a probe model's folder) or the curve
    file does not exist. Tracked poses use neither."""

    def optional_path(value: Any, what: str, fix: str, folder_ok: bool) -> str | None:
        if value is None or str(value) in ("", "."):
            return None
        path = Path(value)
        if poses.method != "tracked" and not (path.is_file() or (folder_ok and path.is_dir())):
            raise InputError(f"The {what} '{value}' does not exist.", fix)
        return str(value)

    model = optional_path(poses.model, "model file",
                          "Give an existing pose model (a probe_model.json from adapt, or a .safetensors model), or none for the "
                          "bundled model.", True)
    curve = optional_path(poses.curve, "decorrelation curve file",
                          "Give a curve JSON from 'freehandrecon calibrate-speckle', or none for the default.", False)
    return replace(poses, model=model, curve=curve)


@dataclass
class ReconstructionRequest:
    """Everything a reconstruction needs besides the sweep."""

    spacing_mm: float | tuple[float, float, float] = 1.0
    poses: PoseRequest = field(default_factory=PoseRequest)
    options: CompoundOptions = field(default_factory=CompoundOptions)
    roi: Roi | None = None
    oriented_grid: bool = False
    channels: tuple[str, ...] | None = None  # None: every channel the sweep has
    # per-channel compounding: a mode name or full options; unnamed channels use channels.CHANNEL_COMPOUNDING
    # (max for photoacoustic and Doppler, else ``options``)
    channel_compounding: dict[str, CompoundOptions | str] = field(default_factory=dict)
    skip_interval: int = 1  # compound every Nth frame (poses are estimated on every frame first)
    # the fan mask: None keeps ``options.fan``; "none": no fan; "auto": detected from the frames used (none
    # found: every pixel is used, or InputError with ``require_fan``); or a FanMask
    fan: FanMask | str | None = None
    require_fan: bool = False
    quality_report: Any = None  # a QualityReport already computed for this sweep: the guard is not run again
    # 4x4 world -> the frame the output grid (``roi``) is given in, e.g. an ROI's parent transform; None: world
    grid_frame: np.ndarray | None = None


@dataclass
class ReconstructionResult:
    """Arrays, grid and figures of a finished reconstruction (no MRML yet)."""

    bmode: CompoundResult
    channels: dict[str, CompoundResult]
    grid: OutputGrid
    seconds: float
    memory_estimate_bytes: int
    input_dtype: np.dtype
    sweep: Sweep | None = None  # the sweep with the poses used (estimated ones for learned/speckle)
    pose_estimate: PoseEstimate | None = None
    quality: dict[str, Any] | None = None  # the quality guard's report (learned poses), as JSON
    quality_report: Any = None  # the same report as a QualityReport
    options: CompoundOptions | None = None  # the B-mode options used (with the detected or given fan)

    def volume_array(self, name: str | None = None) -> np.ndarray:
        """Intensity volume ``[k, j, i]`` in the input pixel type (rounded and clipped)."""
        res = self.bmode if name is None else self.channels[name]
        return res.volume_as(self.input_dtype) if np.issubdtype(self.input_dtype, np.integer) else res.volume

    @property
    def coverage_fraction(self) -> float:
        return float(np.count_nonzero(self.bmode.coverage) / self.bmode.coverage.size)


def _stage(progress: ProgressCallback | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done / max(total, 1))


def reconstruct_sweep(sweep: Sweep, request: ReconstructionRequest, progress: ProgressCallback | None = None,
                      should_cancel: Callable[[], bool] | None = None, *, render: bool = False,
                      files: bool = False, mrb: bool = False) -> ReconstructionResult:
    """The whole reconstruction, in this order: check the request, find the fan, run the quality guard (learned
    poses), estimate poses when asked, keep every ``skip_interval``-th frame in the grid's frame, fit the grid,
    check the memory, then compound the B-mode frames and every requested channel.

    The memory check covers the whole job (:func:`check_job_memory`): the result's MRML nodes, and with
    ``files`` the sweep's browser and files, ``mrb`` the scene bundle, ``render`` the 3D view (as
    :func:`run_reconstruct_job` makes them)."""
    t0 = time.perf_counter()
    check_request(sweep, request)
    poses = checked_pose_request(request.poses)
    opts = replace(request.options, fan=resolve_fan(sweep, request))
    report = request.quality_report if request.quality_report is not None else check_quality(sweep, poses, progress)
    quality = None if report is None else report.to_json()
    sweep, estimate = posed_sweep(sweep, poses, progress, should_cancel)
    sweep = frames_used(sweep, request)
    grid = output_grid(sweep, request, opts)
    names = list(sweep.channels) if request.channels is None else list(request.channels)
    for name in names:
        sweep.channel_frames(name)  # refuse an unknown channel before any slow work
    channel_opts = {name: channel_options(opts, name, request.channel_compounding) for name in names}
    memory = check_job_memory(sweep, request, grid, [opts, *channel_opts.values()], names, render=render,
                              files=files, mrb=mrb)
    bmode = compound(sweep, grid, opts, progress=_stage(progress, "B-mode"), should_cancel=should_cancel)
    channels = {name: compound(sweep, grid, channel_opts[name], channel=name, progress=_stage(progress, name),
                               should_cancel=should_cancel) for name in names}  # the B-mode poses, every channel
    for name, res in channels.items():
        res.stats["compounding"] = channel_opts[name].compounding
    return ReconstructionResult(bmode, channels, grid, time.perf_counter() - t0, memory, sweep.frames.dtype,
                                sweep, estimate, quality, report, opts)


def resolve_fan(sweep: Sweep, request: ReconstructionRequest) -> FanMask | None:
    """The fan mask ``request.fan`` asks for ("auto": detected from the frames that are compounded)."""
    fan = request.fan
    if fan is None:
        return request.options.fan
    if isinstance(fan, FanMask):
        fan.validate()
        return fan
    if fan == "none":
        return None
    if fan != "auto":
        raise InputError(f"Unknown fan mask setting {fan!r}.", "Use 'none', 'auto' or a FanMask.")
    found = detect_fan(sweep.frames[::request.skip_interval])
    if found is None:
        if request.require_fan:
            raise InputError("--fan auto found no curvilinear fan in the frames.",
                             "Give the fan explicitly: --fan OX OY A0 A1 R0 R1, or drop --fan for linear probes.")
        log.info("FreehandRecon: no curvilinear fan found in the frames; every pixel is used.")
    return found


def frames_used(sweep: Sweep, request: ReconstructionRequest) -> Sweep:
    """The frames that are compounded: every ``skip_interval``-th one, with its pose in the grid's frame."""
    if request.skip_interval > 1:
        sweep = sweep.subset(slice(None, None, request.skip_interval))
    if request.grid_frame is not None and sweep.image_to_world is not None:
        sweep = sweep.with_poses(np.asarray(request.grid_frame, dtype=np.float64) @ sweep.image_to_world)
    return sweep


def _grid_at(sweep: Sweep, request: ReconstructionRequest, opts: CompoundOptions, spacing: Any) -> OutputGrid:
    if request.roi is not None:
        return grid_from_roi(request.roi.center, request.roi.size, spacing, request.roi.orientation)
    return fit_grid(sweep, spacing, clip_rectangle=opts.clip_rectangle, fan=opts.fan,
                    oriented=request.oriented_grid, plus_compatible=opts.plus_arithmetic)


def output_grid(sweep: Sweep, request: ReconstructionRequest, options: CompoundOptions | None = None) -> OutputGrid:
    """The output grid: the ROI box when given, else fitted around the frames (inside the clip rectangle and fan)."""
    return _grid_at(sweep, request, request.options if options is None else options, request.spacing_mm)


def job_memory_bytes(sweep: Sweep, request: ReconstructionRequest, grid: OutputGrid, options: list[CompoundOptions],
                     channels: list[str], *, render: bool = False, files: bool = False, mrb: bool = False,
                     input_bytes: int | None = None, check: bool = False) -> int:
    """Peak bytes the reconstruction job needs above the imported modules: reading, the input held, one
    compounding per entry of ``options`` (B-mode, then ``channels``), the MRML nodes, and with ``files`` the
    sweep's browser and files, ``mrb`` the scene bundle, ``render`` the 3D view. ``input_bytes``: the frames'
    and channels' bytes (default: the sweep's). With ``check``, :class:`~freehandrecon.errors.ResourceError`
    over the memory limit, suggesting the finest spacing whose estimate fits (searched over spacing with the
    grid a run at that spacing would use)."""
    opts = options[0]
    frames = [sweep.channel_frames(name) for name in [None, *channels]]
    if input_bytes is None:
        input_bytes = sum(int(f.nbytes) for f in frames)
    itemsize = max(f.itemsize for f in frames)
    p2w = sweep.pixel_to_world()

    def grid_at(spacing: np.ndarray) -> OutputGrid:
        return _grid_at(sweep, request, opts, spacing)

    def holes_at(g: OutputGrid) -> list[int | None]:
        return [expected_holes(p2w, sweep.frame_shape, g, o) for o in options]

    return check_reconstruction_memory(grid, options, sweep.frame_shape, sweep.num_frames, int(input_bytes),
                                       grid_at=grid_at, holes_at=holes_at, itemsize=itemsize, nodes=True,
                                       render=render, browser=files, mrb=mrb, check=check)


def check_job_memory(sweep: Sweep, request: ReconstructionRequest, grid: OutputGrid, options: list[CompoundOptions],
                     channels: list[str], *, render: bool = False, files: bool = False, mrb: bool = False) -> int:
    """:func:`job_memory_bytes`, refusing a job over the memory limit with a spacing that fits."""
    return job_memory_bytes(sweep, request, grid, options, channels, render=render, files=files, mrb=mrb,
                            check=True)


def estimate_job_memory_bytes(sweep: Sweep, request: ReconstructionRequest, channels: list[str]) -> int:
    """Peak bytes :func:`reconstruct_sweep` would need for ``sweep`` and ``request``, from the geometry alone.

    ``sweep`` may be frame-free (zero-stride frames, e.g. read from a scene's nodes without the pixels);
    ``channels`` names the extra channels the run would compound (held by ``sweep`` or not). Poses are not
    estimated: a sweep without poses needs an ROI (InputError otherwise). A skip interval that leaves too few
    frames is ignored here (the run refuses it)."""
    check_spacing_mm(request.spacing_mm)
    if request.skip_interval > 1 and sweep.num_frames < 2 * request.skip_interval - 1:
        request = replace(request, skip_interval=1)
    sweep = frames_used(sweep, request)
    if request.roi is None and sweep.image_to_world is None:
        raise InputError("The output box is not known before the poses are estimated.",
                         "Select an ROI to see the memory estimate, or use a tracked sweep.")
    opts = request.options
    options = [opts, *(channel_options(opts, name, request.channel_compounding) for name in channels)]
    return job_memory_bytes(sweep, request, output_grid(sweep, request), options, [],
                            input_bytes=int(sweep.frames.nbytes) * (1 + len(channels)))


def check_spacing_mm(spacing: Any) -> tuple[float, float, float]:
    """An output spacing given as one or three positive numbers (mm) -> three floats; InputError otherwise."""
    values = spacing if isinstance(spacing, (list, tuple, np.ndarray)) else [spacing]
    ok = len(values) in (1, 3) and all(isinstance(v, (int, float, np.integer, np.floating))
                                       and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in values)
    if not ok:
        raise InputError(f"The output spacing must be one or three positive numbers in mm; got {spacing!r}.",
                         "Give e.g. spacing 0.5 (mm), or (0.5, 0.5, 1.0).")
    return tuple(float(v) for v in values) * (3 if len(values) == 1 else 1)


def check_request(sweep: Any, request: Any) -> None:
    """Refuse, before any slow work, arguments that are not a sweep and a request, or settings that cannot work."""
    if not isinstance(sweep, Sweep):
        raise InputError(f"Expected a freehandrecon.sweep.Sweep to reconstruct, got {type(sweep).__name__}.",
                         "Read the sweep first, e.g. freehandrecon.io.read_sweep(path).")
    if not isinstance(request, ReconstructionRequest):
        raise InputError(f"Expected a ReconstructionRequest, got {type(request).__name__}.",
                         "Build one with freehandrecon.logic.ReconstructionRequest(spacing_mm=..., ...).")
    check_spacing_mm(request.spacing_mm)
    if request.roi is not None:
        request.roi.validate()
    skip = request.skip_interval
    if isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or skip < 1:
        raise InputError(f"The skip interval must be a whole number >= 1, got {skip!r}.",
                         "Use 1 for every frame, 2 for every other frame, ...")
    if skip > 1 and sweep.num_frames < 2 * skip - 1:
        raise InputError(f"A skip interval of {skip} leaves fewer than 2 of the {sweep.num_frames} frames.",
                         "Use a smaller skip interval.")
    if request.grid_frame is not None:
        m = np.asarray(request.grid_frame, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], (0, 0, 0, 1)):
            raise InputError("The output grid's frame must be a finite 4x4 affine transform (world to grid frame).",
                             "Pass the inverse of the ROI parent's transform to world, or None for world.")
    mask = request.options.importance_mask
    if mask is not None and request.options.compounding == "importance":
        normalise_importance(mask, sweep.frame_shape)  # a wrong size or range is refused before any slow work
    thr = request.options.pixel_threshold
    if thr is not None:
        request.options.validate()
        if not (sweep.frames >= float(thr)).any():
            raise InputError(f"No pixel of the sweep reaches the pixel threshold {thr:g} (the brightest is "
                             f"{float(sweep.frames.max()):g}); the volume would be empty.",
                             "Lower the threshold (--pixel-threshold) below the echo intensities, or leave it out.")


def check_quality(sweep: Sweep, poses: PoseRequest, progress: ProgressCallback | None = None) -> Any:
    """Run the quality guard before learned poses: warn when the sweep is unlike the model's training data.

    The guard is the one a probe model from ``freehandrecon adapt`` carries, else the shipped one.
    Returns the guard's :class:`~freehandrecon.quality.QualityReport` (None when not asked, not
    learned, or no guard is installed).
    """
    if poses.method != "learned" or not poses.check_quality:
        return None
    from .poses.learned import model_bundle
    from .quality import check_sweep, guard_available, load_guard

    probe_guard = model_bundle(poses.model).get("guard")  # a probe model from `freehandrecon adapt` brings its own
    if probe_guard is None and not guard_available():
        log.warning("The quality guard is not installed; learned poses are not checked for out-of-distribution "
                    "sweeps.")
        return None
    report = check_sweep(sweep, guard=None if probe_guard is None else load_guard(probe_guard), progress=progress)
    if report.verdict != "ok":
        log.warning(report.message)
    return report


def posed_sweep(sweep: Sweep, poses: PoseRequest, progress: ProgressCallback | None = None,
                should_cancel: Callable[[], bool] | None = None) -> tuple[Sweep, PoseEstimate | None]:
    """The sweep with the poses ``poses`` asks for (unchanged for tracked) and the estimate, if any."""
    poses = checked_pose_request(poses)
    if poses.method == "tracked":
        if sweep.image_to_world is None:
            sweep.pixel_to_world()  # raises the no-poses error with its fix
        return sweep, None
    estimate = estimate_poses(sweep, poses.method, model=poses.model, sweep_direction=poses.sweep_direction,
                              device=poses.device, progress=progress, should_cancel=should_cancel, curve=poses.curve)
    if IMAGE_CURVE_WARNING in estimate.warnings:
        log.warning(IMAGE_CURVE_WARNING)
    if estimate.info.get("probe_curve"):  # what the curve's check decided (calibrate-speckle)
        log.info("FreehandRecon: %s.", estimate.info["probe_curve"])
    return sweep_with_poses(sweep, estimate), estimate


def check_sweep_quality(sweep: Sweep, guard: Any = None, progress: ProgressCallback | None = None) -> Any:
    """The quality guard's :class:`~freehandrecon.quality.QualityReport` on ``sweep``: is it like the data the
    learned pose model was trained on? ``guard``: a loaded guard, a guard .json path, or None (or an empty
    path) for the shipped one."""
    from .quality import Guard, check_sweep, load_guard

    loaded = guard if isinstance(guard, Guard) else load_guard(None if guard in (None, "", ".") else guard)
    return check_sweep(sweep, guard=loaded, progress=progress)


def learned_model_available() -> bool:
    """Whether learned poses can run with the bundled model (the pose package and its weights are installed)."""
    try:
        from .poses import learned
    except ImportError:
        return False
    stem = Path(getattr(learned, "MODEL_DIR", "")) / str(getattr(learned, "DEFAULT_MODEL_NAME", ""))
    return stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file()


def quality_guard_available() -> bool:
    """Whether the quality guard's files are installed (the checksum is checked when it loads)."""
    try:
        from .quality.guard import guard_available
    except ImportError:
        return False
    return guard_available()


class ReconstructionLogic:
    """Reconstruction on a given MRML scene: the object the module, console and CLI share."""

    def __init__(self, scene: Any = None) -> None:
        from .io.slicer_scene import new_scene  # slicer-core is imported only when MRML work is asked for

        self.scene = scene if scene is not None else new_scene()

    def add_result_nodes(self, sweep: Sweep, result: ReconstructionResult, name: str = "Reconstruction",
                         replace_volume: Any = None, coverage: bool = True,
                         transform_sequence: bool = False, replace: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the output nodes (volume, coverage, channels, optional pose sequence) in the scene.

        ``replace`` maps a node key ("coverage", "channel:<name>") to an existing volume to update in place
        instead of adding a new one (the companions of a replaced output volume).
        """
        from .io.slicer_sequences import add_transform_sequence
        from .scene.nodes import add_volume_node

        replace = replace or {}
        ijk_to_ras = result.grid.ijk_to_world()
        nodes: dict[str, Any] = {"volume": add_volume_node(self.scene, result.volume_array(), ijk_to_ras, name, replace=replace_volume)}
        if coverage:
            nodes["coverage"] = add_volume_node(self.scene, result.bmode.coverage, ijk_to_ras,
                                                f"{name}_Coverage", replace=replace.get("coverage"))
        for ch in result.channels:
            nodes[f"channel:{ch}"] = add_volume_node(self.scene, result.volume_array(ch), ijk_to_ras,
                                                     f"{name}_{ch}", replace=replace.get(f"channel:{ch}"))
        if transform_sequence:
            nodes["transforms"] = add_transform_sequence(self.scene, sweep.image_to_world, f"{name}_ImageToReference")
        return nodes

    def reconstruct(self, sweep: Sweep, request: ReconstructionRequest, name: str = "Reconstruction",
                    replace_volume: Any = None, progress: ProgressCallback | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> tuple[dict[str, Any], ReconstructionResult]:
        """Compound ``sweep`` and add the result nodes; on failure or cancel the scene is unchanged."""
        result = reconstruct_sweep(sweep, request, progress, should_cancel)
        return self.add_result_nodes(result.sweep or sweep, result, name, replace_volume,
                                     transform_sequence=result.pose_estimate is not None), result


# --- the headless job behind `freehandrecon reconstruct` -----------------------------------------

OUTPUT_FILES = ("volume.nrrd", "coverage.nrrd", "scene.mrb", "render.png", "report.json")
FUSED_RENDER = "render_fused.png"  # B-mode grey + photoacoustic hot / Doppler red, when the sweep has channels


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{list(value.shape)}"
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


jsonable = _jsonable  # public: report.json values (dataclasses, arrays, paths) as JSON


def calibrate_speckle_curve(sweep: Sweep, out: str | Path, *, model: Any = None, check_learned: bool = True,
                            device: str = "cpu", force: bool = False) -> Any:
    """Fit the probe's decorrelation curve from the tracked ``sweep`` and write it to ``out`` (JSON); with
    ``check_learned`` the learned ``model`` (default the shipped one) is run on the sweep with and without the
    new curve and the verdict is stored with it (:mod:`freehandrecon.poses.curve_check`). Bad input (an existing
    file without ``force``, no poses, a missing model) is refused before the work; tracked poses whose in-plane
    motion the images do not show get a warning in the curve's ``meta`` (:mod:`freehandrecon.poses.tracking_check`).
    Returns the saved :class:`~freehandrecon.poses.speckle.DecorrelationCurve`."""
    from .io.common import check_output
    from .poses import check_learned_with_curve
    from .poses.curve_check import CHECK_KEY, describe
    from .poses.speckle import MIN_CALIBRATION_BANDS, DecorrelationCurve

    check_output(Path(out), force)
    if sweep.image_to_world is None:
        raise InputError("The sweep has no tracked poses; a calibration needs them (the tracker gives the true "
                         "elevational distances).", "Give a tracked sweep with its calibration (--plus-config or "
                         "--calibration; in Slicer, the calibration transform above the images).")
    loaded = None
    if check_learned:
        from .poses.learned import load_model

        loaded = load_model(model, device=device)
        if sweep.num_frames < loaded.min_frames:
            log.warning("The sweep has %d frames, fewer than the learned model needs (%d): the curve is not checked "
                        "with it.", sweep.num_frames, loaded.min_frames)
            loaded = None
    curve = DecorrelationCurve.calibrate(sweep, min_bands=MIN_CALIBRATION_BANDS)
    from .poses.tracking_check import tracking_warnings

    # the curve's distances are the tracked ones: motion the images do not show makes them wrong too
    curve.meta["warnings"] = list(curve.meta.get("warnings", [])) + tracking_warnings(sweep, "The calibration sweep")
    for text in curve.meta.get("warnings", []):
        log.warning(text)
    if loaded is not None:
        curve.meta[CHECK_KEY] = check_learned_with_curve(sweep, curve, model=loaded, device=device)
        log.info("FreehandRecon: %s.", describe(curve.meta[CHECK_KEY]))
    curve.save(out, force=force)
    return curve


def compare_with_tracked(sweep: Sweep, estimate: PoseEstimate | None, digits: int = 4) -> dict[str, float] | None:
    """When estimated poses replace tracked ones the input had, how far apart they are (metrics.py)."""
    if estimate is None or sweep.image_to_world is None:
        return None
    from .poses.metrics import evaluate_poses

    m = evaluate_poses(sweep.image_to_world, estimate.image_to_world, sweep.frame_shape, sweep.pixel_spacing)
    return {k: round(float(v), digits) for k, v in m.items() if np.isscalar(v)}


def check_outputs_free(out_dir: Path, names: tuple[str, ...], force: bool) -> None:
    """Refuse, before any work, to overwrite existing outputs unless ``force``, and an ``out_dir`` that
    cannot be written (a file, under a file, read-only) or whose output names are taken by folders."""
    from .io.common import check_folder_writable

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"The output folder '{out_dir}' is a file.", "Give --out a folder (new or existing).")
    check_folder_writable(out_dir.absolute().parent)  # the results are staged beside out_dir
    if out_dir.is_dir():
        check_folder_writable(out_dir)
    folders = [n for n in names if (out_dir / n).is_dir()]
    if folders:
        raise InputError(f"{out_dir} holds folders named {', '.join(folders)} where output files go.",
                         "Choose another --out folder, or move those folders away; --force replaces files only.")
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise OutputExistsError(f"{out_dir} already holds {', '.join(existing)}.",
                                "Choose another --out directory, or pass --force to overwrite these files.")


def previous_results(out_dir: Path) -> list[Path]:
    """Files of an earlier run in ``out_dir`` (the known result names and per-channel volumes)."""
    if not out_dir.is_dir():
        return []
    known = set(OUTPUT_FILES) | {FUSED_RENDER}
    return sorted(p for p in out_dir.iterdir() if p.is_file() and (p.name in known or (
        p.name.startswith("volume_") and p.name.endswith(".nrrd"))))


def run_reconstruct_job(sweep: Sweep, request: ReconstructionRequest, out_dir: Path, *, force: bool = False,
                        render: bool = True, mrb: bool = True, progress: ProgressCallback | None = None,
                        should_cancel: Callable[[], bool] | None = None,
                        extra_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reconstruct and write volume.nrrd, coverage.nrrd, scene.mrb, render.png and report.json.

    Files are first written to a temporary folder beside ``out_dir`` and moved into place
    only when all succeeded, so a failed or cancelled run leaves no partial output.
    """
    out_dir = Path(out_dir)
    names = tuple(n for n in OUTPUT_FILES if (render or n != "render.png") and (mrb or n != "scene.mrb"))
    has_channels = bool(sweep.channels if request.channels is None else request.channels)
    if render and has_channels:
        names += (FUSED_RENDER,)
    check_outputs_free(out_dir, names, force)
    if render:  # it imports the whole vtk module: now, not in the middle of writing where a Ctrl-C could cut it
        from .scene import render as render_mod
    result = reconstruct_sweep(sweep, request, progress, should_cancel, render=render, files=True, mrb=mrb)
    pose_check = compare_with_tracked(sweep, result.pose_estimate)
    sweep = result.sweep if result.sweep is not None else sweep
    from .io.slicer_files import save_mrb, save_node
    from .io.slicer_sequences import sweep_to_browser

    logic = ReconstructionLogic()
    browser = sweep_to_browser(logic.scene, sweep, name="Sweep")
    nodes = logic.add_result_nodes(sweep, result, name="Reconstruction")
    if should_cancel is not None and should_cancel():
        raise Cancelled()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".freehandrecon-", dir=out_dir.parent))
    try:
        t_write = time.perf_counter()
        save_node(nodes["volume"], tmp / "volume.nrrd")
        save_node(nodes["coverage"], tmp / "coverage.nrrd")
        for key, node in nodes.items():
            if key.startswith("channel:"):
                save_node(node, tmp / f"volume_{key.split(':', 1)[1]}.nrrd")
        render_stats = None
        if render:
            if progress:
                progress("render", 0.0)
            render_stats = render_mod.render_volume_png(logic.scene, nodes["volume"], tmp / "render.png")
            render_stats["path"] = str(out_dir / "render.png")  # where it ends up, not the staging folder
            channel_nodes = {k: v for k, v in nodes.items() if k.startswith("channel:")}
            if channel_nodes:
                from .scene.render import render_fused_png

                render_stats = dict(render_stats, fused=render_fused_png(logic.scene, nodes["volume"],
                                                                          channel_nodes, tmp / FUSED_RENDER))
            if progress:
                progress("render", 1.0)
        if mrb:
            if progress:
                progress("scene", 0.0)
            save_mrb(logic.scene, tmp / "scene.mrb")
            if progress:
                progress("scene", 1.0)
        vol = result.bmode.volume
        covered = result.bmode.coverage > 0
        report = {
            "freehandrecon_version": __version__,
            "input": _jsonable(sweep.metadata),
            "frames": sweep.num_frames,
            "frame_size": [sweep.frame_shape[1], sweep.frame_shape[0]],
            "pixel_spacing_mm": list(sweep.pixel_spacing),
            "poses": sweep.metadata.get("poses", "tracked"),
            "pose_estimation": sweep.metadata.get("pose_estimation"),
            "grid": {"origin_mm": result.grid.origin.tolist(), "spacing_mm": result.grid.spacing.tolist(),
                     "dims_ijk": list(result.grid.dims), "direction": np.asarray(result.grid.direction).tolist()},
            "options": _jsonable(result.options),
            "memory_estimate_mb": round(result.memory_estimate_bytes / 2**20, 1),
            "coverage_fraction": round(result.coverage_fraction, 4),
            "intensity_in_covered_voxels": {"min": float(vol[covered].min()) if covered.any() else None,
                                            "max": float(vol[covered].max()) if covered.any() else None,
                                            "mean": float(vol[covered].mean()) if covered.any() else None},
            "compound_seconds": round(result.seconds, 3),
            "frames_per_second": round(sweep.num_frames / max(result.seconds, 1e-9), 1),
            "compound_engine": result.bmode.stats.get("engine"),
            "filled_voxels": result.bmode.stats.get("filled_voxels"),
            "channels": sorted(result.channels),
            "channel_volumes": {c: {"file": f"volume_{c}.nrrd", "compounding": r.stats.get("compounding"),
                                    "max": float(r.volume.max()) if r.volume.size else None}
                                for c, r in sorted(result.channels.items())},
            "bmode_compounding": request.options.compounding,
            "render": render_stats,
            "outputs": list(names) + [f"volume_{c}.nrrd" for c in sorted(result.channels)],
            "browser_node": browser.GetName(),
        }
        if pose_check is not None:
            report["poses_against_tracked"] = pose_check
        if result.quality is not None:
            report["quality"] = result.quality
        report.update(extra_report or {})
        report["write_seconds"] = round(time.perf_counter() - t_write, 3)
        (tmp / "report.json").write_text(json.dumps(_jsonable(report), indent=2))
        install_results(tmp, out_dir, force)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_results(tmp: Path, out_dir: Path, force: bool) -> None:
    """Move the new result set from ``tmp`` into ``out_dir``; with ``force`` the previous run's results
    that this run did not write (e.g. render.png after --no-render) go too, so the folder holds one run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    new = sorted(tmp.iterdir())
    stale = [p for p in previous_results(out_dir) if not (tmp / p.name).exists()] if force else []
    trash = tmp / ".previous"
    trash.mkdir()
    for p in stale:  # same file system: renames, undone below if installing the new set fails
        os.replace(p, trash / p.name)
    try:
        for f in new:
            os.replace(f, out_dir / f.name)
    except OSError:
        for p in stale:
            os.replace(trash / p.name, p)
        raise
