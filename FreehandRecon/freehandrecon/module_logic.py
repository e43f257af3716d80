"""The Slicer module's logic: the console and panel API on an MRML scene, with no Qt/GUI code.

``FreehandReconLogic`` is what ``slicer.util.getModuleLogic("FreehandRecon")`` returns in
Slicer (the module subclasses it to add the parameter node). It is importable without
qt, ctk or ScriptedLoadableModule, so it runs on slicer-core's real MRML too. Nothing heavy
(torch, h5py, the compounder, the pose estimators) is imported until a method needs it, so the panel
works on a stock Slicer before the dependencies are installed (:meth:`FreehandReconLogic.missingDependencies`
says what an action still needs).

Nodes are added only after a computation succeeded; a failed or cancelled run leaves the
scene as it was (an output volume the user chose is replaced only on success).

It does not orchestrate: each action validates its arguments, reads its inputs from the scene
(:mod:`freehandrecon.module_inputs`), makes one :mod:`freehandrecon.logic` call (the same the command line
makes) and then adds or replaces nodes, display and report.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import dependencies
from . import module_inputs as inputs
from .errors import CalibrationError, Cancelled, FreehandReconError, InputError, ResourceError
from .model_files import sha256_file

ProgressCallback = Callable[[str, float], None]

POSE_METHODS = ("tracked", "learned", "speckle")
INTERPOLATIONS = ("nearest", "linear")
COMPOUNDINGS = ("mean", "max", "latest", "importance")
HOLE_FILLINGS = ("none", "normalized", "stick")
FAN_MASKS = ("none", "auto", "manual")
SWEEP_DIRECTIONS = ("auto", "forward", "backward")
DEVICES = ("cpu", "cuda")

SAMPLE_DATA_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"

# Results other modules can observe. After every successful reconstruct() the report (lastReport) is stored as
# JSON in the REPORT_ATTRIBUTE attribute of the output volume and of the parameter node passed in, which also
# gets OUTPUT_ATTRIBUTE (the output volume's ID); then ReconstructionFinishedEvent is invoked on both:
#   node.AddObserver(module_logic.ReconstructionFinishedEvent, lambda caller, event: ...)
ReconstructionFinishedEvent = 1000 + 18002  # vtkCommand.UserEvent + 18002 (vtk is not imported at load time)
REPORT_ATTRIBUTE = "FreehandRecon.Report"
OUTPUT_ATTRIBUTE = "FreehandRecon.OutputVolumeID"
# Node references kept on the output volume and the sweep, so that a rerun reuses its companions.
COVERAGE_REFERENCE = "FreehandRecon.Coverage"
CHANNEL_REFERENCE_PREFIX = "FreehandRecon.Channel."
BOUNDS_REFERENCE = "FreehandRecon.Bounds"  # on the browser (or lone image sequence): the ROI fitRoi made
IMAGE_NODE_CLASSES = inputs.IMAGE_NODE_CLASSES


@dataclass(frozen=True)
class SampleSweep:
    """A sweep shipped in Resources/SampleData and registered with Slicer's SampleData module."""

    sampleName: str
    fileName: str
    sha256: str
    browserName: str
    frames: int
    tracked: bool
    description: str

    @property
    def path(self) -> Path:
        return SAMPLE_DATA_DIR / self.fileName

    @property
    def checksum(self) -> str:
        """SampleData's ``<algo>:<digest>`` form."""
        return f"SHA256:{self.sha256}"


# Hook for more samples (e.g. a simulated untracked sweep): add an entry here and its file in
# Resources/SampleData; the module registers every entry with SampleData.
SAMPLES: tuple[SampleSweep, ...] = (
    SampleSweep(
        sampleName="FreehandReconSpinePhantom",
        fileName="FreehandReconSpinePhantom.mrb",
        sha256="a7fabe1a820bc1f1d52ce4acb70b41e1b19cb80604f6975c07f00c39b101478d",
        browserName="SpinePhantom browser",
        frames=21,
        tracked=True,
        description="Tracked freehand sweep of a spine phantom (PLUS/IGSIO, 21 frames of 820x616)",
    ),
)


def sample(sampleName: str) -> SampleSweep:
    """The :class:`SampleSweep` called ``sampleName``."""
    for s in SAMPLES:
        if s.sampleName == sampleName:
            return s
    raise InputError(f"No FreehandRecon sample called '{sampleName}'.",
                     f"Use one of {', '.join(s.sampleName for s in SAMPLES)}.")


def learnedModelAvailable() -> bool:
    """Whether learned poses can run with the bundled model (the pose package and its weights are installed)."""
    try:
        from .logic import learned_model_available
    except ImportError:
        return False
    return learned_model_available()


def qualityGuardAvailable() -> bool:
    """Whether the quality guard's files are installed (the checksum is checked when it loads)."""
    try:
        from .logic import quality_guard_available
    except ImportError:
        return False
    return quality_guard_available()


file_sha256 = sha256_file  # the name the module's sample-data code and tests use


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InputError(f"Unknown {what} '{value}'.", f"Use one of {', '.join(allowed)}.")
    return value


def _spacing(value: Any) -> float | tuple[float, float, float]:
    """An output spacing: one positive value, or three (x, y, z) in mm."""
    values = np.asarray(value, dtype=np.float64).reshape(-1) if not isinstance(value, str) else np.array([np.nan])
    if values.size not in (1, 3) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"The output spacing must be one positive value or three (x, y, z) in mm, got {value!r}.",
                         "Give e.g. spacingMm=0.5 or spacingMm=(0.5, 0.5, 1.0).")
    return float(values[0]) if values.size == 1 else tuple(float(v) for v in values)


def _skipInterval(value: Any) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
        raise InputError(f"The skip interval must be a whole number >= 1, got {value!r}.",
                         "Use 1 for every frame, 2 for every other frame, ...")
    return int(value)


def _clipRectangle(value: Any) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"The clip rectangle must be (x, y, width, height) in pixels, got {value!r}.",
                         "Give four whole numbers, e.g. (100, 20, 600, 500).") from None
    if w <= 0 or h <= 0:
        raise InputError(f"The clip rectangle must have a positive size, got {w}x{h} pixels.",
                         "Give a width and height of at least one pixel.")
    return x, y, w, h


def _manualFan(frameShape: tuple[int, int], angles: Any, origin: Any, radius: Any) -> Any:
    """A :class:`FanMask` from manual angles (required), origin (default: top centre) and radii."""
    from .fan import FanMask

    if angles is None:
        raise InputError("A manual fan mask needs its edge angles.",
                         "Pass fanAnglesDeg=(left, right) in degrees from the axial direction, e.g. (-35, 35).")
    h, w = frameShape
    try:
        a0, a1 = (float(v) for v in angles)
        ox, oy = (float(v) for v in origin) if origin is not None else ((w - 1) / 2.0, 0.0)
        r0, r1 = (float(v) for v in radius) if radius is not None else (0.0, float(np.hypot(w, h)))
    except (TypeError, ValueError):
        raise InputError("Fan angles, origin and radius must be pairs of numbers.",
                         "Give e.g. fanAnglesDeg=(-35, 35), fanOriginPx=(410, -20), fanRadiusPx=(40, 600).") from None
    fan = FanMask((ox, oy), (a0, a1), r0, r1)
    fan.validate()
    return fan


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


class FreehandReconLogic:
    """Reconstruct sweeps held in sequence browsers; the API of the panel and the Python console."""

    def __init__(self, scene: Any = None) -> None:
        self._scene = scene
        self._geometry = inputs.GeometryCache()
        self.lastReport: dict[str, Any] = {}
        self.lastNodes: dict[str, Any] = {}
        self.lastQuality: Any = None

    # --- scene and inputs -------------------------------------------------------------------------

    @property
    def scene(self) -> Any:
        """The scene given at construction, else ``slicer.mrmlScene``."""
        if self._scene is not None:
            return self._scene
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise InputError("There is no MRML scene to work in.",
                             "Pass scene=freehandrecon.io.slicer_scene.new_scene() to FreehandReconLogic, or set slicer.mrmlScene.")
        return scene

    def _node(self, ref: Any, what: str) -> Any:
        """A node given as a node, an ID or a name."""
        return inputs.node(self.scene, ref, what)

    def _browserAndSequence(self, inputNode: Any, imageSequence: Any = None) -> tuple[Any, Any]:
        """(browser or None, image sequence or None) for a browser or an image sequence input."""
        return inputs.browser_and_sequence(self.scene, inputNode, imageSequence)

    def readSweep(self, inputNode: Any, imageSequence: Any = None, pixelSpacingMm: tuple[float, float] | None = None,
                  calibrationNode: Any = None) -> Any:
        """The sweep in a sequence browser (or a lone image sequence) as a :class:`freehandrecon.sweep.Sweep`.

        ``pixelSpacingMm`` overrides the frames' spacing; ``calibrationNode`` (image-to-probe) is
        inserted between the images and the transforms above them, unless it is already there.
        """
        return inputs.read_sweep(self.scene, inputNode, imageSequence, pixelSpacingMm, calibrationNode)

    # --- poses ------------------------------------------------------------------------------------

    @staticmethod
    def missingDependencies(poses: str = "tracked", checkQuality: bool = False, fillHoles: str = "none",
                            device: str = "cpu") -> list[str]:
        """Python packages (pip names) that a reconstruction with ``poses`` (and ``fillHoles``, ``device``), or
        the quality check (``checkQuality``), still needs in this Slicer; [] when it can run. Nothing is imported.
        A tracked reconstruction needs nothing beyond a stock Slicer, except for stick hole filling or CUDA."""
        _choice(poses, POSE_METHODS, "pose source")
        return dependencies.missing(dependencies.needed_for(poses, checkQuality, fillHoles, device))

    @classmethod
    def requireDependencies(cls, poses: str = "learned", checkQuality: bool = False, fillHoles: str = "none",
                            device: str = "cpu") -> None:
        """Raise ResourceError naming what :meth:`missingDependencies` reports for this action, if anything."""
        missing = cls.missingDependencies(poses, checkQuality, fillHoles, device)
        if not missing:
            return
        what = "PyTorch" if missing == ["torch"] else "the Python packages " + ", ".join(missing)
        raise ResourceError(f"FreehandRecon needs {what}, which is not installed in this Slicer.",
                            "Press 'Install dependencies' in the FreehandRecon panel (PyTorch comes from the "
                            "'PyTorch' extension of the Extensions Manager), then run it again.")

    # --- console API ------------------------------------------------------------------------------

    def reconstruct(self, browserNode: Any, poses: str = "tracked", spacingMm: float | tuple[float, float, float] = 1.0,
                    interpolation: str = "nearest", compounding: str = "mean", fillHoles: str = "none",
                    fanMask: str = "none", roiNode: Any = None, outputVolumeNode: Any = None, coverage: bool = True,
                    showIn3D: bool = True, preset: str = "US-BMode", model: Any = None, sweepDirection: str = "auto",
                    device: str = "cpu", progress: ProgressCallback | None = None,
                    shouldCancel: Callable[[], bool] | None = None, *, imageSequence: Any = None,
                    channels: Any = None, pixelSpacingMm: tuple[float, float] | None = None,
                    calibrationNode: Any = None, transformSequence: bool = False, checkQuality: bool = True,
                    curve: Any = None, clipRectangle: tuple[int, int, int, int] | None = None,
                    fanAnglesDeg: tuple[float, float] | None = None, fanOriginPx: tuple[float, float] | None = None,
                    fanRadiusPx: tuple[float, float] | None = None, importanceMask: Any = None,
                    skipInterval: int = 1, parameterNode: Any = None, qualityReport: Any = None,
                    qualityNodes: bool = False) -> Any:
        """Reconstruct the sweep in ``browserNode`` (a sequence browser, or an image sequence) into a volume.

        ``poses``: "tracked" (the transforms above the images, or poses embedded in each frame's IJKToRAS),
        "learned" or "speckle" (estimated). ``spacingMm``: one value or (x, y, z) in mm.
        ``outputVolumeNode`` is replaced on success (with the coverage and channel volumes of its last
        run); otherwise a new volume node is created. With ``roiNode`` the output fills the ROI box, along
        its axes, and is placed under the ROI's parent transform (without one, the output and its companions are
        taken from under any transform: their geometry is in world coordinates).
        ``channels``: None for every extra image sequence of the browser (photoacoustic, Doppler),
        or a list of sequence nodes / channel names (``[]`` for B-mode only). ``transformSequence``
        adds estimated poses to the browser as a transform sequence. With learned poses and
        ``checkQuality`` the quality guard runs first (or pass ``qualityReport`` from
        ``checkSweep(addNodes=False)``); ``qualityNodes`` adds its table and plot with the result, only on
        success. ``curve``: the probe's decorrelation curve JSON
        (``freehandrecon calibrate-speckle``) for speckle and for learned models that use it (default: a
        typical probe's curve, or the simulated probe's); its verdict goes to ``lastReport["quality"]``
        and ``lastQuality`` (a warning is logged when the sweep is out of distribution).
        Pixel selection: ``clipRectangle`` (x, y, width, height) pixels; ``fanMask`` "auto" (detected) or
        "manual" with ``fanAnglesDeg`` (left, right; from the axial direction), ``fanOriginPx`` (apex column,
        row; default: centre of the top row) and ``fanRadiusPx`` (start, stop; default: 0 to the far corner);
        ``importanceMask`` (a volume node, its name, an image file or an [H, W] array, 0..1 or 0..255 weights)
        with ``compounding="importance"``. ``skipInterval``: use every Nth frame.
        ``progress(stage, fraction)`` and ``shouldCancel()`` serve a progress bar and a Cancel button
        (Cancelled is raised). On success the report is stored as JSON in the output volume's
        ``FreehandRecon.Report`` attribute (and ``parameterNode``'s), and ``ReconstructionFinishedEvent``
        is invoked on both. Returns the volume node; ``lastNodes`` and ``lastReport`` hold the other nodes
        and figures.
        """
        _validate_reconstruct_args(browserNode, spacingMm, imageSequence)
        _choice(poses, POSE_METHODS, "pose source")
        _choice(interpolation, INTERPOLATIONS, "interpolation")
        _choice(compounding, COMPOUNDINGS, "compounding mode")
        _choice(fillHoles, HOLE_FILLINGS, "hole filling method")
        _choice(fanMask, FAN_MASKS, "fan mask setting")
        _choice(sweepDirection, SWEEP_DIRECTIONS, "sweep direction")
        _choice(device, DEVICES, "device")
        spacing = _spacing(spacingMm)
        skip = _skipInterval(skipInterval)
        clip = _clipRectangle(clipRectangle)
        if fanMask != "manual" and (fanAnglesDeg is not None or fanOriginPx is not None or fanRadiusPx is not None):
            raise InputError(f"Fan angles/origin/radius were given but the fan mask is '{fanMask}'.",
                             "Pass fanMask='manual' with them, or leave them out.")
        scene = self.scene
        outputVolumeNode = self._node(outputVolumeNode, "output volume")
        self._checkOutputVolume(scene, outputVolumeNode)
        if showIn3D:
            from .io.slicer_scene import PRESET_NAMES

            _choice(preset, PRESET_NAMES, "volume rendering preset")
        roi, roiParent = inputs.roi_in_parent_frame(self._node(roiNode, "ROI"))
        self.requireDependencies(poses, checkQuality and poses == "learned" and qualityReport is None, fillHoles, device)
        from .logic import CompoundOptions, HoleFilling, PoseRequest, ReconstructionLogic, ReconstructionRequest, \
            reconstruct_sweep

        browser, _ = self._browserAndSequence(browserNode, imageSequence)
        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm, calibrationNode)
        if poses == "tracked" and sweep.image_to_world is None:
            raise CalibrationError(
                f"The sweep '{sweep.metadata.get('image_sequence', '')}' has no tracking transforms above its images.",
                "Put the image sequence under its (probe/image-to-reference) transform, select a calibration, "
                "or choose learned or speckle poses.")
        fan = _manualFan(sweep.frame_shape, fanAnglesDeg, fanOriginPx, fanRadiusPx) if fanMask == "manual" else fanMask
        options = CompoundOptions(interpolation=interpolation, compounding=compounding, device=device,
                                  hole_filling=HoleFilling(method=fillHoles), clip_rectangle=clip,
                                  importance_mask=inputs.importance_mask(scene, importanceMask, compounding))
        request = ReconstructionRequest(
            spacing_mm=spacing, options=options, roi=roi, channels=inputs.channel_keys(sweep, channels),
            poses=PoseRequest(method=poses, model=model, curve=curve, sweep_direction=sweepDirection, device=device,
                              check_quality=checkQuality),
            skip_interval=skip, fan=fan, quality_report=qualityReport, grid_frame=inputs.grid_frame(roiParent))
        result = reconstruct_sweep(sweep, request, progress, shouldCancel)
        if result.quality_report is not None:
            self.lastQuality = result.quality_report
        if shouldCancel is not None and shouldCancel():
            raise Cancelled("Reconstruction cancelled by the user.", "Run it again when ready; nothing was changed.")

        used = result.sweep  # the frames compounded, with their poses in the output's frame
        base = sweep.metadata.get("image_sequence") or (browser.GetName() if browser is not None else "Sweep")
        companions = self._companions(outputVolumeNode, result.channels)
        before = _node_ids(scene)
        try:
            nodes = ReconstructionLogic(scene).add_result_nodes(used, result, name=f"{base}_Volume",
                                                                replace_volume=outputVolumeNode, coverage=coverage,
                                                                replace=companions)
            self._linkCompanions(nodes, roiParent)
            if transformSequence and result.pose_estimate is not None:  # every frame's pose, in world coordinates
                nodes["transforms"] = self._addPoseSequence(scene, result.pose_estimate.image_to_world,
                                                            f"{base}_ImageToReference_{poses}", browser)
            if showIn3D:
                nodes["display"] = self._showVolume(scene, nodes["volume"], preset)
                if result.channels:  # B-mode faded, photoacoustic hot / Doppler red on top, in the same 3D view
                    from .scene.display import show_result_fused

                    show_result_fused(scene, nodes, method=None)
            if qualityNodes and result.quality_report is not None:
                from .scene.quality_nodes import add_quality_nodes

                nodes.update(add_quality_nodes(scene, result.quality_report, base))
        except BaseException:
            self._removeNewNodes(scene, before)
            raise
        self.lastNodes = nodes
        grid = result.grid
        used_fan = result.options.fan
        self.lastReport = {
            "frames": used.num_frames, "poses": poses, "seconds": round(result.seconds, 3),
            "dims_ijk": list(grid.dims), "spacing_mm": grid.spacing.tolist(), "origin_mm": grid.origin.tolist(),
            "coverage_fraction": round(result.coverage_fraction, 4),
            "memory_estimate_mb": round(result.memory_estimate_bytes / 2**20, 1),
            "compound_engine": result.bmode.stats.get("engine"),
            "filled_voxels": result.bmode.stats.get("filled_voxels"),
            "channels": sorted(result.channels), "fan_detected": fanMask == "auto" and used_fan is not None,
            "skip_interval": skip, "clip_rectangle": None if clip is None else list(clip),
            "fan": None if used_fan is None else {"origin_px": [float(v) for v in used_fan.origin_px],
                                                  "angles_deg": [float(v) for v in used_fan.angles_deg],
                                                  "radius_px": [float(used_fan.radius_start_px),
                                                                float(used_fan.radius_stop_px)]},
            "importance_mask": options.importance_mask is not None,
            "output_parent_transform": None if roiParent is None else roiParent.GetName(),
            "output_volume": nodes["volume"].GetName(),
        }
        if result.quality is not None:
            self.lastReport["quality"] = result.quality
        logging.info("FreehandRecon: %d frames compounded in %.2f s, grid %s, coverage %.1f %%", used.num_frames,
                     result.seconds, "x".join(map(str, grid.dims)), 100 * result.coverage_fraction)
        self._announce(nodes["volume"], parameterNode)
        return nodes["volume"]

    # --- reconstruction helpers ---------------------------------------------------------------------

    def _announce(self, volume: Any, parameterNode: Any) -> None:
        """Store the report as JSON on the output (and parameter node) and invoke ReconstructionFinishedEvent."""
        text = json.dumps(self.lastReport)
        node = getattr(parameterNode, "parameterNode", parameterNode)  # a parameterNodeWrapper or the MRML node
        targets = [volume] + ([node] if node is not None else [])
        for target in targets:
            target.SetAttribute(REPORT_ATTRIBUTE, text)
        if node is not None:
            node.SetAttribute(OUTPUT_ATTRIBUTE, volume.GetID())
        for target in targets:
            target.InvokeEvent(ReconstructionFinishedEvent)

    @staticmethod
    def _companions(output: Any, channels: Any) -> dict[str, Any]:
        """Coverage and channel volumes a replaced output volume made on its last run (reused, not duplicated)."""
        if output is None:
            return {}
        found = {}
        roles = {"coverage": COVERAGE_REFERENCE, **{f"channel:{ch}": CHANNEL_REFERENCE_PREFIX + ch for ch in channels}}
        for key, role in roles.items():
            node = output.GetNodeReference(role)
            if (node is not None and node is not output and node.IsA("vtkMRMLScalarVolumeNode")
                    and not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetScene() is output.GetScene()):
                found[key] = node
        return found

    @staticmethod
    def _linkCompanions(nodes: dict[str, Any], parent: Any) -> None:
        """Reference the coverage/channel volumes from the output, and put them all under ``parent`` (or none)."""
        volume = nodes["volume"]
        parent_id = None if parent is None else parent.GetID()
        volume.SetAndObserveTransformNodeID(parent_id)
        for key, node in nodes.items():
            if key == "coverage":
                volume.SetNodeReferenceID(COVERAGE_REFERENCE, node.GetID())
            elif key.startswith("channel:"):
                volume.SetNodeReferenceID(CHANNEL_REFERENCE_PREFIX + key.split(":", 1)[1], node.GetID())
            else:
                continue
            node.SetAndObserveTransformNodeID(parent_id)

    def fitRoi(self, browserNode: Any, roiNode: Any = None, *, imageSequence: Any = None,
               pixelSpacingMm: tuple[float, float] | None = None, calibrationNode: Any = None,
               clipRectangle: tuple[int, int, int, int] | None = None, marginMm: float = 0.0) -> Any:
        """Fit a markups ROI around every frame of the sweep (inside ``clipRectangle``) and show it.

        ``roiNode`` is refitted when given; otherwise the sweep's ``<images>_Bounds`` ROI from an
        earlier call is reused, or a new one is added (visible and editable in the views). The box keeps
        the ROI's orientation and parent transform. The sweep needs poses (tracked, embedded in the
        images, or estimated with :meth:`estimatePoses`). Returns the ROI node.
        """
        from . import geometry
        from .io.slicer_scene import unique_name

        if not (np.isfinite(marginMm) and marginMm >= 0):
            raise InputError(f"The ROI margin must be >= 0 mm, got {marginMm}.", "Give a margin such as 0 or 5 mm.")
        browser, seq = self._browserAndSequence(browserNode, imageSequence)
        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm, calibrationNode)
        if sweep.image_to_world is None:
            raise InputError(f"The sweep '{sweep.metadata.get('image_sequence', '')}' has no poses to fit a box to.",
                             "Estimate poses first (estimatePoses, or a learned/speckle reconstruction with the "
                             "transform sequence), or draw the ROI by hand.")
        h, w = sweep.frame_shape
        x0, y0, cw, ch = _clipRectangle(clipRectangle) or (0, 0, w, h)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x0 + cw, w), min(y0 + ch, h)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"The clip rectangle {clipRectangle} lies outside the {w}x{h} frames.",
                             "Give a rectangle inside the frames.")
        corners = geometry.frame_corners_pixels(w, h, (x0, y0, x1 - x0, y1 - y0))
        points = geometry.transform_points(sweep.pixel_to_world(), corners).reshape(-1, 3)
        scene = self.scene
        owner = browser if browser is not None else seq
        roi = self._node(roiNode, "ROI")
        if roi is None:
            roi = owner.GetNodeReference(BOUNDS_REFERENCE)
        if roi is not None and not roi.IsA("vtkMRMLMarkupsROINode"):
            raise InputError(f"'{roi.GetName()}' is a {roi.GetClassName()}, not a markups ROI.", "Select a markups ROI.")
        if roi is None:
            base = sweep.metadata.get("image_sequence") or owner.GetName()
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", unique_name(scene, f"{base}_Bounds"))
            roi.CreateDefaultDisplayNodes()
        parent = roi.GetParentTransformNode()
        if parent is not None and not parent.IsTransformToWorldLinear():
            raise CalibrationError(f"The ROI '{roi.GetName()}' is under a non-linear transform.",
                                   "Harden or remove the non-linear transform above the ROI.")
        to_node = np.linalg.inv(inputs.to_world(parent)) if parent is not None else np.eye(4)
        local = points @ to_node[:3, :3].T + to_node[:3, 3]
        axes = inputs.roi_axes(roi)
        along = local @ axes
        lo, hi = along.min(axis=0) - marginMm, along.max(axis=0) + marginMm
        modifying = roi.StartModify()
        roi.SetCenter(*(axes @ ((lo + hi) / 2.0)))
        roi.SetSize(*(hi - lo))
        roi.EndModify(modifying)
        roi.SetDisplayVisibility(True)
        owner.SetNodeReferenceID(BOUNDS_REFERENCE, roi.GetID())
        return roi

    def optionsFromParameters(self, parameters: Any) -> dict[str, Any]:
        """The :meth:`reconstruct` keyword arguments of the panel's pixel-selection, spacing and frame options."""
        get = lambda name, default=None: getattr(parameters, name, default)  # noqa: E731
        x = float(get("spacingMm", 1.0))
        spacing = (x, float(get("spacingYMm", x)), float(get("spacingZMm", x))) if get("anisotropicSpacing") else x
        options: dict[str, Any] = {"spacingMm": spacing, "skipInterval": int(get("skipInterval", 1) or 1)}
        if get("useClipRectangle", False):
            options["clipRectangle"] = tuple(int(get(n, 0)) for n in ("clipXPx", "clipYPx", "clipWidthPx",
                                                                    "clipHeightPx"))
        if get("fanMask", "none") == "manual":
            ox = float(get("fanOriginXPx", -1.0))
            options["fanAnglesDeg"] = (float(get("fanAngleLeftDeg", -30.0)), float(get("fanAngleRightDeg", 30.0)))
            options["fanOriginPx"] = None if ox < 0 else (ox, float(get("fanOriginYPx", 0.0)))
            stop = float(get("fanRadiusStopPx", 0.0))
            options["fanRadiusPx"] = None if stop <= 0 else (float(get("fanRadiusStartPx", 0.0)), stop)
        if get("compounding", "mean") == "importance":
            options["importanceMask"] = get("importanceMaskVolume")
        return options

    def estimatePoses(self, browserNode: Any, method: str = "learned", model: Any = None, sweepDirection: str = "auto",
                      device: str = "cpu", progress: ProgressCallback | None = None,
                      shouldCancel: Callable[[], bool] | None = None, *, imageSequence: Any = None,
                      pixelSpacingMm: tuple[float, float] | None = None, curve: Any = None) -> Any:
        """Estimate per-frame image-to-world transforms without a tracker.

        Returns a linear transform sequence node ``<images>_ImageToReference_<method>``, synchronised
        in the sweep's browser (images without a parent transform are placed under its proxy).
        """
        _choice(method, POSE_METHODS[1:], "pose estimation method")
        _choice(sweepDirection, SWEEP_DIRECTIONS, "sweep direction")
        _choice(device, DEVICES, "device")
        self.requireDependencies(method)
        browser, _ = self._browserAndSequence(browserNode, imageSequence)
        from .logic import PoseRequest, posed_sweep

        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm)
        request = PoseRequest(method=method, model=model, curve=curve, sweep_direction=sweepDirection, device=device)
        mats = posed_sweep(sweep, request, progress, shouldCancel)[1].image_to_world
        if shouldCancel is not None and shouldCancel():
            raise Cancelled("Pose estimation cancelled by the user.", "Run it again when ready; nothing was changed.")
        scene = self.scene
        before = _node_ids(scene)
        try:
            return self._addPoseSequence(scene, mats, f"{sweep.metadata.get('image_sequence', 'Sweep')}_ImageToReference_"
                                         f"{method}", browser)
        except BaseException:
            self._removeNewNodes(scene, before)
            raise

    def calibrateSpeckle(self, browserNode: Any, outputPath: str | Path, *, imageSequence: Any = None,
                         pixelSpacingMm: tuple[float, float] | None = None, calibrationNode: Any = None,
                         model: Any = None, checkLearned: bool = True, device: str = "cpu",
                         overwrite: bool = False) -> dict[str, Any]:
        """Fit the probe's decorrelation curve from a tracked sweep and write it to ``outputPath`` (JSON), as
        ``freehandrecon calibrate-speckle`` does: with ``checkLearned`` the learned ``model`` (default the shipped
        one) is run on the sweep with and without the new curve, and the learned estimator later uses the curve
        only where it drifted no more. Pass the file as ``curve`` to :meth:`reconstruct` or :meth:`estimatePoses`.
        Returns what was written: depth bands, warnings and the check. An existing file is kept unless
        ``overwrite``."""
        from .io.common import check_output
        from .logic import calibrate_speckle_curve

        _choice(device, DEVICES, "device")
        self.requireDependencies("speckle", checkQuality=checkLearned)  # torch; safetensors for the check
        check_output(Path(outputPath), overwrite)
        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm, calibrationNode)
        curve = calibrate_speckle_curve(sweep, outputPath, model=model, check_learned=checkLearned, device=device,
                                        force=overwrite)
        summary = {"path": str(outputPath), "frames": sweep.num_frames,
                   "depth_bands_mm": [round(float(d), 2) for d in curve.depths_mm],
                   "warnings": list(curve.meta.get("warnings", [])), "learned_check": curve.meta.get("learned_check")}
        logging.info("FreehandRecon: speckle curve written to %s.", outputPath)
        return summary

    def checkSweep(self, browserNode: Any, guard: Any = None, progress: ProgressCallback | None = None, *,
                   imageSequence: Any = None, pixelSpacingMm: tuple[float, float] | None = None,
                   addNodes: bool = True) -> Any:
        """Run the quality guard on the sweep: is it like the data the learned pose model was trained on?

        Returns a :class:`freehandrecon.quality.QualityReport` (per-frame OOD score and reconstruction
        error, thresholds, verdict "ok" | "warning" | "out-of-distribution" and a message). With
        ``addNodes`` it adds a table node ``<images>_Quality`` (one row per frame) and a plot chart
        ``<images>_QualityPlot`` (OOD score and threshold against frame), kept in ``lastNodes``
        under "qualityTable" and "qualityChart". ``guard`` is a guard .json path or a loaded guard
        (default: the shipped one).
        """
        self.requireDependencies("tracked", checkQuality=True)
        from .logic import check_sweep_quality

        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm)
        report = check_sweep_quality(sweep, guard, progress)
        self.lastQuality = report
        if addNodes:
            from .scene.quality_nodes import add_quality_nodes

            base = sweep.metadata.get("image_sequence") or "Sweep"
            scene = self.scene
            before = _node_ids(scene)
            try:
                self.lastNodes = {**self.lastNodes, **add_quality_nodes(scene, report, base)}
            except BaseException:
                self._removeNewNodes(scene, before)
                raise
        logging.info("FreehandRecon: quality check %s: %s", report.verdict, report.message)
        return report

    def qualityWarning(self, report: Any = None) -> str:
        """The text for the panel's warning line ('' when the sweep looks fine)."""
        report = report if report is not None else getattr(self, "lastQuality", None)
        if report is None or report.verdict == "ok":
            return ""
        return f"{'Out of distribution' if report.verdict == 'out-of-distribution' else 'Warning'}: {report.message}"

    def memoryEstimateMb(self, browserNode: Any, spacingMm: float | tuple[float, float, float], roiNode: Any = None,
                         interpolation: str = "nearest", compounding: str = "mean", fillHoles: str = "none", *,
                         clipRectangle: tuple[int, int, int, int] | None = None, skipInterval: int = 1,
                         imageSequence: Any = None, channels: Any = None,
                         pixelSpacingMm: tuple[float, float] | None = None, calibrationNode: Any = None,
                         **_ignored: Any) -> float:
        """Peak memory (MiB) a reconstruction at ``spacingMm`` (one value or x, y, z) would need; for the
        panel's live estimate (other :meth:`reconstruct` options are accepted and ignored).

        ``imageSequence``, ``channels``, ``pixelSpacingMm`` and ``calibrationNode`` mean what they mean
        for :meth:`reconstruct` (``channels`` None: every extra image sequence of the browser; ``[]``:
        B-mode only). Only the geometry is read (frame size and poses from the sequences' nodes, no pixels,
        the browser is not moved), and it is cached until the sequences change. Without tracking
        transforms or an ROI the output box is unknown and :class:`InputError` is raised.
        """
        from .logic import CompoundOptions, HoleFilling, ReconstructionRequest, estimate_job_memory_bytes

        spacingMm = _spacing(spacingMm)
        skip = _skipInterval(skipInterval)
        clip = _clipRectangle(clipRectangle)
        compounding = _choice(compounding, COMPOUNDINGS, "compounding mode")
        options = CompoundOptions(interpolation=_choice(interpolation, INTERPOLATIONS, "interpolation"),
                                  compounding="mean" if compounding == "importance" else compounding,
                                  hole_filling=HoleFilling(method=_choice(fillHoles, HOLE_FILLINGS, "hole filling")),
                                  clip_rectangle=clip)
        light, channelKeys = self._geometry.get(self.scene, browserNode, imageSequence, pixelSpacingMm,
                                                calibrationNode)
        roi, parent = inputs.roi_in_parent_frame(self._node(roiNode, "ROI"))
        # the figure the run reports: the whole reconstruction (frames, one compounding per channel, nodes)
        names = list(channelKeys) if channels is None else [inputs.channel_name(c) for c in channels]
        request = ReconstructionRequest(spacing_mm=spacingMm, options=options, roi=roi, skip_interval=skip,
                                        grid_frame=inputs.grid_frame(parent))
        return estimate_job_memory_bytes(light, request, names) / 2**20

    def checkInputs(self, parameters: Any) -> str | None:
        """What is missing or inconsistent in the panel's ``parameters`` (None when Apply can run).

        ``parameters`` is the module's parameter node (or any object with the same attributes).
        """
        get = lambda name, default=None: getattr(parameters, name, default)  # noqa: E731
        browser, seq = get("inputBrowser"), get("imageSequence")
        if browser is None and seq is None:
            return "Select the sweep: a sequence browser (or an image sequence)."
        for what, node in (("image sequence", seq), ("photoacoustic / Doppler sequence", get("channelSequence"))):
            if node is not None and not node.IsA("vtkMRMLSequenceNode"):
                return f"The {what} '{node.GetName()}' is a {node.GetClassName()}, not a sequence."
            if node is not None and node.GetDataNodeClassName() not in IMAGE_NODE_CLASSES:
                return (f"The {what} '{node.GetName()}' holds {node.GetDataNodeClassName() or 'nothing'} items, "
                        "not images; select a sequence of image frames.")
        try:
            browser, seq = self._browserAndSequence(browser, seq)
            image_seq = seq if seq is not None else inputs.image_sequence_of(browser)
        except FreehandReconError as err:
            return err.problem
        if browser is not None and browser.GetRecordingActive():
            return f"The browser '{browser.GetName()}' is recording; stop recording first."
        if image_seq is None:
            return f"The browser '{browser.GetName()}' has no image sequence."
        if image_seq.GetNumberOfDataNodes() < 2:
            return f"The image sequence '{image_seq.GetName()}' has fewer than 2 frames."
        poses = get("poses", "tracked")
        if (poses == "tracked" and get("calibrationTransform") is None
                and not inputs.images_have_parent(browser, image_seq) and not inputs.poses_in_images(image_seq)):
            return ("The images have no tracking transform above them: choose learned or speckle poses, "
                    "or place the image sequence under its probe transform.")
        if poses != "tracked":
            model = get("modelPath")
            if model is not None and str(model) not in ("", ".") and not Path(model).exists():
                return f"The model file '{model}' does not exist."
        if get("overridePixelSpacing", False) and min(get("pixelSpacingXMm", 0.0), get("pixelSpacingYMm", 0.0)) <= 0:
            return "The pixel spacing override must be positive."
        try:
            options = self.optionsFromParameters(parameters)
            _spacing(options["spacingMm"])
            _skipInterval(options["skipInterval"])
            _clipRectangle(options.get("clipRectangle"))
            if "fanAnglesDeg" in options:
                h, w = inputs.frame_shape(image_seq)
                _manualFan((h, w), options["fanAnglesDeg"], options["fanOriginPx"], options["fanRadiusPx"])
        except FreehandReconError as err:
            return err.problem
        except (TypeError, ValueError):
            return "The output spacing, clip rectangle and skip interval must be numbers."
        if get("compounding", "mean") == "importance" and get("importanceMaskVolume") is None:
            return "Compounding 'importance' needs an importance mask image (same size as the frames)."
        out = get("outputVolume")
        if out is not None and out.IsA("vtkMRMLLabelMapVolumeNode"):
            return f"The output '{out.GetName()}' is a labelmap; choose a scalar volume or 'create new'."
        return None

    def nonImageSequenceIDs(self) -> list[str]:
        """IDs of the scene's sequences that hold something other than images (e.g. transforms): the panel hides
        them from its image and channel sequence selectors (checkInputs refuses them anyway)."""
        scene = self.scene
        seqs = [scene.GetNthNodeByClass(i, "vtkMRMLSequenceNode")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"))]
        return [s.GetID() for s in seqs if s.GetDataNodeClassName() not in ("", *IMAGE_NODE_CLASSES)]

    # --- samples ----------------------------------------------------------------------------------

    def loadSample(self, sampleName: str = "FreehandReconSpinePhantom") -> Any:
        """Load a bundled sample sweep (checksum verified) into the scene; return its sequence browser."""
        import slicer

        entry = sample(sampleName)
        if not entry.path.is_file():
            raise InputError(f"The sample file '{entry.path}' is missing.", "Reinstall the FreehandRecon extension.")
        if file_sha256(entry.path) != entry.sha256:
            raise InputError(f"The sample file '{entry.path.name}' does not match its checksum.",
                             "Reinstall the FreehandRecon extension (the file is damaged).")
        scene = self.scene
        browsers_before = {b.GetID() for b in inputs.browsers(scene)}
        if hasattr(slicer, "app") and scene is getattr(slicer, "mrmlScene", None):
            slicer.util.loadScene(str(entry.path))
        else:
            cwd = os.getcwd()
            try:  # a failed ReadFromMRB can leave the working directory in a deleted folder
                ok = scene.ReadFromMRB(str(entry.path), False)
            finally:
                os.chdir(cwd)
            if not ok:
                raise InputError(f"Could not read the sample scene '{entry.path.name}'.", "Reinstall FreehandRecon.")
        new = [b for b in inputs.browsers(scene) if b.GetID() not in browsers_before]
        named = [b for b in new if b.GetName() == entry.browserName]
        if not (named or new):
            raise InputError(f"The sample '{sampleName}' holds no sequence browser.", "Reinstall FreehandRecon.")
        return (named or new)[0]

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _checkOutputVolume(scene: Any, node: Any) -> None:
        if node is None:
            return
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"Cannot replace '{node.GetName()}': it is not a scalar volume.",
                             "Choose a scalar volume as the output, or let FreehandRecon create a new one.")
        if node.GetScene() is not scene:
            raise InputError(f"The output volume '{node.GetName()}' is not in this scene.",
                             "Pick an output volume from the same scene.")

    @staticmethod
    def _addPoseSequence(scene: Any, mats: np.ndarray, name: str, browser: Any) -> Any:
        from .io.slicer_sequences import add_transform_sequence

        seq = add_transform_sequence(scene, mats, name, browser)
        if browser is not None:
            image_seq = inputs.image_sequence_of(browser)
            proxy = browser.GetProxyNode(image_seq) if image_seq is not None else None
            # frames whose IJKToRAS already hold a pose (PLUS EmbeddedTransformToFrame) are not moved twice
            if (proxy is not None and proxy.GetParentTransformNode() is None
                    and not inputs.poses_in_images(image_seq)):
                proxy.SetAndObserveTransformNodeID(browser.GetProxyNode(seq).GetID())
        return seq

    def liveReconstruction(self, imageNode: Any, outputVolumeNode: Any = None, **settings: Any) -> Any:
        """A live reconstruction of ``imageNode``'s frames as they arrive (the image OpenIGTLinkIF updates, or a
        recording browser's image): :class:`freehandrecon.module_live.LiveReconstruction` on this logic's scene,
        with ``settings`` as :meth:`reconstruct` names them (spacingMm, interpolation, compounding, fillHoles,
        roiNode, clipRectangle, poses, model, device, showIn3D, preset) plus maxMemoryGb and gridMarginMm.
        Call ``start()``, then ``update()`` every update interval (the panel uses a timer), ``stop()``, ``resume()``,
        ``reset()``; ``statusText()`` and ``status`` tell how it goes."""
        from .module_live import LiveReconstruction

        self.requireDependencies(settings.get("poses", "tracked"), False, settings.get("fillHoles", "none"),
                                 settings.get("device", "cpu"))
        return LiveReconstruction(self.scene, imageNode, outputVolumeNode, **settings)

    @staticmethod
    def _showVolume(scene: Any, volume: Any, preset: str) -> Any:
        from .scene.display import show_in_3d

        return show_in_3d(scene, volume, preset)

    @staticmethod
    def _removeNewNodes(scene: Any, before: set[str]) -> None:
        for node_id in _node_ids(scene) - before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


def _validate_reconstruct_args(browserNode: Any, spacingMm: Any, imageSequence: Any) -> None:
    """Refuse arguments of the wrong kind before any work, with the message a console user needs."""
    from .logic import check_spacing_mm

    for value, what in ((browserNode, "browserNode"), (imageSequence, "imageSequence")):
        if value is not None and not isinstance(value, str) and not callable(getattr(value, "IsA", None)):
            raise InputError(f"{what} must be a sequence browser or sequence node, its ID or its name; got "
                             f"{type(value).__name__} {value!r:.40}.",
                             "Pass e.g. slicer.util.getNode('SpinePhantomFreehand browser').")
        if value is not None and not isinstance(value, str) and value.IsA("vtkMRMLSequenceNode") \
                and value.GetNumberOfDataNodes() == 0:
            raise InputError(f"The sequence '{value.GetName()}' is empty (it holds no frames).",
                             "Record or load a sweep into it first, or pick another sequence.")
    check_spacing_mm(spacingMm)
