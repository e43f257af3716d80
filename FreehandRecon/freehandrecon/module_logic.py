"""The Slicer module's logic: the console and panel API on an MRML scene, with no Qt/GUI code.

``FreehandReconLogic`` is what ``slicer.util.getModuleLogic("FreehandRecon")`` returns in
Slicer (the module subclasses it to add the parameter node). It is importable without
qt, ctk or ScriptedLoadableModule, so it runs on slicer-core's real MRML too. Nothing heavy
(torch, h5py, the compounder, the pose estimators) is imported until a method needs it, so the panel
works on a stock Slicer before the dependencies are installed (:meth:`FreehandReconLogic.missingDependencies`
says what an action still needs).

Nodes are added only after a computation succeeded; a failed or cancelled run leaves the
scene as it was (an output volume the user chose is replaced only on success).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import dependencies
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
IMAGE_NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


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
        from .poses import learned
    except ImportError:
        return False
    stem = Path(getattr(learned, "MODEL_DIR", "")) / str(getattr(learned, "DEFAULT_MODEL_NAME", ""))
    return stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file()


def qualityGuardAvailable() -> bool:
    """Whether the quality guard's files are installed (the checksum is checked when it loads)."""
    try:
        from .quality.guard import guard_available
    except ImportError:
        return False
    return guard_available()


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
    from .compound import FanMask

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


def _toWorld(transformNode: Any) -> np.ndarray:
    """The 4x4 transform-to-world matrix of a linear transform node."""
    return _matrix_array(transformNode.GetMatrixTransformToWorld)


def _roiAxes(roiNode: Any) -> np.ndarray:
    """The ROI's box axes (3x3, columns) in its node (parent) coordinates."""
    from slicer import util

    axes = util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix())[:3, :3]
    return axes / np.maximum(np.linalg.norm(axes, axis=0, keepdims=True), 1e-12)


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _matrix_array(getter: Callable[[Any], Any]) -> np.ndarray:
    import vtk
    from slicer import util

    m = vtk.vtkMatrix4x4()
    getter(m)
    return util.arrayFromVTKMatrix(m)


class FreehandReconLogic:
    """Reconstruct sweeps held in sequence browsers; the API of the panel and the Python console."""

    def __init__(self, scene: Any = None) -> None:
        self._scene = scene
        self._geometryCache: dict[str, tuple[tuple, Any]] = {}
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
        if ref is None or not isinstance(ref, str):
            return ref
        node = self.scene.GetNodeByID(ref) or self.scene.GetFirstNodeByName(ref)
        if node is None:
            raise InputError(f"No {what} called '{ref}' in the scene.", f"Pass the {what} node or its exact name.")
        return node

    def _browserAndSequence(self, inputNode: Any, imageSequence: Any = None) -> tuple[Any, Any]:
        """(browser or None, image sequence or None) for a browser or an image sequence input."""
        node = self._node(inputNode, "sequence browser")
        seq = self._node(imageSequence, "image sequence")
        if node is None and seq is None:
            raise InputError("No sweep was given.", "Select a sequence browser (or an image sequence) holding the sweep.")
        if node is None:
            node = seq
        if node.IsA("vtkMRMLSequenceBrowserNode"):
            return node, seq
        if node.IsA("vtkMRMLSequenceNode"):
            scene = node.GetScene()
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
                browser = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
                if browser.IsSynchronizedSequenceNode(node.GetID(), True):
                    return browser, node
            return None, node
        raise InputError(f"'{node.GetName()}' is a {node.GetClassName()}, not a sequence browser or sequence.",
                         "Select the sequence browser of the sweep.")

    def readSweep(self, inputNode: Any, imageSequence: Any = None, pixelSpacingMm: tuple[float, float] | None = None,
                  calibrationNode: Any = None) -> Any:
        """The sweep in a sequence browser (or a lone image sequence) as a :class:`freehandrecon.sweep.Sweep`.

        ``pixelSpacingMm`` overrides the frames' spacing; ``calibrationNode`` (image-to-probe) is
        inserted between the images and the transforms above them, unless it is already there.
        """
        from .io.slicer_sequences import sweep_from_browser

        browser, seq = self._browserAndSequence(inputNode, imageSequence)
        if browser is None:
            sweep = self._sweepFromLoneSequence(seq, pixelSpacingMm)
        else:
            if browser.GetScene() is None:
                raise InputError("The sequence browser is not in an MRML scene.", "Pass a browser node from a scene.")
            sweep = sweep_from_browser(browser, image_sequence=seq, pixel_spacing=pixelSpacingMm)
        calibration = self._node(calibrationNode, "calibration transform")
        if calibration is not None:
            sweep = self._applyCalibration(sweep, browser, seq, calibration)
        return sweep

    @staticmethod
    def _sweepFromLoneSequence(seq: Any, pixelSpacingMm: tuple[float, float] | None) -> Any:
        from slicer import util

        from .io.slicer_sequences import lone_sequence_sweep

        if seq.GetDataNodeClassName() not in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
            raise InputError(f"The sequence '{seq.GetName()}' holds {seq.GetDataNodeClassName() or 'nothing'}, "
                             "not images.", "Select the sequence of ultrasound frames.")
        n = seq.GetNumberOfDataNodes()
        if n == 0:
            raise InputError(f"The sequence '{seq.GetName()}' is empty.", "Record or import frames first.")
        frames = np.stack([util.arrayFromVolume(seq.GetNthDataNode(i))[0] for i in range(n)])
        return lone_sequence_sweep(seq, frames, pixelSpacingMm)

    def _applyCalibration(self, sweep: Any, browser: Any, seq: Any, calibration: Any) -> Any:
        """Put an image-to-probe calibration between the image and its parent transforms."""
        if not (calibration.IsA("vtkMRMLTransformNode") and calibration.IsLinear()):
            raise CalibrationError(f"The calibration '{calibration.GetName()}' is not a linear transform.",
                                   "Select a linear transform (image to probe) as the calibration.")
        if sweep.image_to_world is None:
            raise CalibrationError("A calibration was given but the images have no tracking transform above them.",
                                   "Place the image sequence under the probe (tracker) transform, or use "
                                   "learned/speckle poses without a calibration.")
        if sweep.metadata.get("poses_in_image_geometry"):
            raise CalibrationError("The frames carry their poses in their image geometry (IJKToRAS), so an "
                                   "image-to-probe calibration cannot be put between the image and the probe.",
                                   "Leave the calibration empty: embedded poses (PLUS EmbeddedTransformToFrame) "
                                   "already include it.")
        if calibration.GetName() in sweep.metadata.get("transform_chain", []):
            logging.info("FreehandRecon: calibration '%s' is already above the images; not applied twice.",
                         calibration.GetName())
            return sweep
        image_seq = seq if seq is not None else browser.GetMasterSequenceNode()
        ijk = _matrix_array(image_seq.GetNthDataNode(0).GetIJKToRASMatrix)
        cal = _matrix_array(calibration.GetMatrixTransformToParent)
        pixel_to_world = sweep.pixel_to_world() @ np.linalg.inv(ijk) @ cal @ ijk
        lengths = np.linalg.norm(pixel_to_world[:, :3, :2], axis=1).mean(axis=0)
        sx, sy = float(lengths[0]), float(lengths[1])
        image_to_world = pixel_to_world @ np.diag([1.0 / sx, 1.0 / sy, 1.0, 1.0])
        z = np.linalg.norm(image_to_world[:, :3, 2], axis=1)
        image_to_world[:, :3, 2] /= np.where(z > 0, z, 1.0)[:, None]
        meta = dict(sweep.metadata)
        meta["transform_chain"] = [calibration.GetName(), *meta.get("transform_chain", [])]
        return replace(sweep, pixel_spacing=(sx, sy), image_to_world=image_to_world, metadata=meta)

    @staticmethod
    def _roi(roiNode: Any) -> Any:
        """A markups ROI node as a :class:`freehandrecon.logic.Roi` in its parent transform's frame."""
        return FreehandReconLogic._roiInParentFrame(roiNode)[0]

    @staticmethod
    def _roiInParentFrame(roiNode: Any) -> tuple[Any, Any]:
        """(:class:`freehandrecon.logic.Roi` in the ROI's node coordinates, its parent transform node or None).

        The output grid is built in the parent's frame and the volume placed under that transform, as
        SlicerIGT's Volume Reconstruction does; without a parent the frame is the world.
        """
        if roiNode is None:
            return None, None
        from .logic import Roi

        if not roiNode.IsA("vtkMRMLMarkupsROINode"):
            raise InputError(f"'{roiNode.GetName()}' is a {roiNode.GetClassName()}, not a markups ROI.",
                             "Select a markups ROI (Markups > ROI), or leave the ROI empty for an automatic box.")
        center = [0.0, 0.0, 0.0]
        roiNode.GetCenter(center)
        size = [float(v) for v in roiNode.GetSize()]
        if min(size) <= 0:
            raise InputError(f"The ROI '{roiNode.GetName()}' has zero size {size} mm.",
                             "Give the ROI a size, or leave the ROI empty for an automatic box.")
        parent = roiNode.GetParentTransformNode()
        if parent is not None and not parent.IsTransformToWorldLinear():
            raise CalibrationError(f"The ROI '{roiNode.GetName()}' is under a non-linear transform.",
                                   "Harden or remove the non-linear transform above the ROI.")
        return Roi(tuple(center), tuple(size), _roiAxes(roiNode)), parent

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

    @staticmethod
    def _estimate(sweep: Any, method: str, model: Any, sweepDirection: str, device: str,
                  progress: ProgressCallback | None, shouldCancel: Callable[[], bool] | None,
                  curve: Any = None) -> np.ndarray:
        from .poses import estimate_poses

        def optional_file(value: Any, what: str, fix: str) -> Path | None:
            if value is None or str(value) in ("", "."):  # an empty path widget gives "" or "."
                return None
            if not Path(value).is_file():
                raise InputError(f"The {what} '{value}' does not exist.", fix)
            return Path(value)

        model_path = optional_file(model, "model file",
                                   "Choose a .safetensors model file, or leave it empty for the bundled model.")
        curve_path = optional_file(curve, "decorrelation curve file",
                                   "Give a curve JSON from 'freehandrecon calibrate-speckle', or none for the default.")
        estimate = estimate_poses(sweep, method, model=model_path, sweep_direction=sweepDirection, device=device,
                                  progress=progress, should_cancel=shouldCancel, curve=curve_path)
        return estimate.image_to_world

    def _sweepWithPoses(self, sweep: Any, poses: str, model: Any, sweepDirection: str, device: str,
                        progress: ProgressCallback | None, shouldCancel: Callable[[], bool] | None,
                        curve: Any = None) -> Any:
        if poses == "tracked":
            if sweep.image_to_world is None:
                raise CalibrationError(
                    f"The sweep '{sweep.metadata.get('image_sequence', '')}' has no tracking transforms above its images.",
                    "Put the image sequence under its (probe/image-to-reference) transform, select a calibration, "
                    "or choose learned or speckle poses.")
            return sweep
        mats = self._estimate(sweep, poses, model, sweepDirection, device, progress, shouldCancel, curve)
        return sweep.with_poses(mats, poses=poses)

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
        roi, roiParent = self._roiInParentFrame(self._node(roiNode, "ROI"))
        self.requireDependencies(poses, checkQuality and poses == "learned" and qualityReport is None, fillHoles, device)
        from .compound import CompoundOptions, HoleFilling, detect_fan
        from .logic import ReconstructionLogic, ReconstructionRequest, reconstruct_sweep

        browser, _ = self._browserAndSequence(browserNode, imageSequence)
        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm, calibrationNode)
        importance = self._importanceMask(importanceMask, compounding, sweep.frame_shape)
        quality = qualityReport
        if quality is None and poses == "learned" and checkQuality:
            quality = self._learnedQuality(sweep, progress, model)
        elif quality is not None:
            self.lastQuality = quality
        sweep = self._sweepWithPoses(sweep, poses, model, sweepDirection, device, progress, shouldCancel, curve)
        if skip > 1:
            if sweep.num_frames < 2 * skip - 1:
                raise InputError(f"A skip interval of {skip} leaves fewer than 2 of the {sweep.num_frames} frames.",
                                 "Use a smaller skip interval.")
            sweep = sweep.subset(slice(None, None, skip))
        fan = None
        if fanMask == "auto":
            fan = detect_fan(sweep.frames)
            if fan is None:
                logging.info("FreehandRecon: no curvilinear fan found in the frames; every pixel is used.")
        elif fanMask == "manual":
            fan = _manualFan(sweep.frame_shape, fanAnglesDeg, fanOriginPx, fanRadiusPx)
        if roiParent is not None:  # the grid lives in the ROI's parent frame; the volume goes under that transform
            sweep = sweep.with_poses(np.linalg.inv(_toWorld(roiParent)) @ sweep.image_to_world)
        options = CompoundOptions(interpolation=interpolation, compounding=compounding, fan=fan, device=device,
                                  hole_filling=HoleFilling(method=fillHoles), clip_rectangle=clip,
                                  importance_mask=importance)
        request = ReconstructionRequest(spacing_mm=spacing, options=options, roi=roi,
                                        channels=self._channelKeys(sweep, channels))
        result = reconstruct_sweep(sweep, request, progress, shouldCancel)
        if shouldCancel is not None and shouldCancel():
            raise Cancelled("Reconstruction cancelled by the user.", "Run it again when ready; nothing was changed.")

        base = sweep.metadata.get("image_sequence") or (browser.GetName() if browser is not None else "Sweep")
        companions = self._companions(outputVolumeNode, result.channels)
        before = _node_ids(scene)
        try:
            nodes = ReconstructionLogic(scene).add_result_nodes(sweep, result, name=f"{base}_Volume",
                                                                replace_volume=outputVolumeNode, coverage=coverage,
                                                                replace=companions)
            self._linkCompanions(nodes, roiParent)
            if transformSequence and poses != "tracked":
                nodes["transforms"] = self._addPoseSequence(scene, sweep.image_to_world, f"{base}_ImageToReference_{poses}",
                                                            browser)
            if showIn3D:
                nodes["display"] = self._showVolume(scene, nodes["volume"], preset)
                if result.channels:  # B-mode faded, photoacoustic hot / Doppler red on top, in the same 3D view
                    from .scene.display import show_result_fused

                    show_result_fused(scene, nodes, method=None)
            if qualityNodes and quality is not None:
                nodes.update(self._addQualityNodes(scene, quality, base))
        except BaseException:
            self._removeNewNodes(scene, before)
            raise
        self.lastNodes = nodes
        grid = result.grid
        self.lastReport = {
            "frames": sweep.num_frames, "poses": poses, "seconds": round(result.seconds, 3),
            "dims_ijk": list(grid.dims), "spacing_mm": grid.spacing.tolist(), "origin_mm": grid.origin.tolist(),
            "coverage_fraction": round(result.coverage_fraction, 4),
            "memory_estimate_mb": round(result.memory_estimate_bytes / 2**20, 1),
            "channels": sorted(result.channels), "fan_detected": fanMask == "auto" and fan is not None,
            "skip_interval": skip, "clip_rectangle": None if clip is None else list(clip),
            "fan": None if fan is None else {"origin_px": [float(v) for v in fan.origin_px],
                                             "angles_deg": [float(v) for v in fan.angles_deg],
                                             "radius_px": [float(fan.radius_start_px), float(fan.radius_stop_px)]},
            "importance_mask": importance is not None,
            "output_parent_transform": None if roiParent is None else roiParent.GetName(),
            "output_volume": nodes["volume"].GetName(),
        }
        if quality is not None:
            self.lastReport["quality"] = quality.to_json()
        logging.info("FreehandRecon: %d frames compounded in %.2f s, grid %s, coverage %.1f %%", sweep.num_frames,
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

    def _importanceMask(self, value: Any, compounding: str, frameShape: tuple[int, int]) -> np.ndarray | None:
        """The importance weights [H, W] (0..1) from a node, a node name, an image file or an array."""
        mask = None
        if isinstance(value, np.ndarray):
            mask = value
        elif value is None or (isinstance(value, (str, Path)) and str(value) in ("", ".")):
            mask = None
        elif isinstance(value, Path) or (isinstance(value, str) and Path(value).is_file()):
            if not Path(value).is_file():
                raise InputError(f"The importance mask file '{value}' does not exist.",
                                 "Give an image file (e.g. PNG) of the frame size, or a volume node.")
            from .io.mask_image import read_mask_image

            mask = read_mask_image(Path(value))
        else:
            from slicer import util

            node = self._node(value, "importance mask volume")
            if not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
                raise InputError(f"The importance mask '{node.GetName()}' is not an image volume.",
                                 "Select an image (volume node) of the frame size as the importance mask.")
            mask = util.arrayFromVolume(node)
            if mask.shape[0] != 1:
                raise InputError(f"The importance mask '{node.GetName()}' has {mask.shape[0]} slices, not one.",
                                 "Select a single 2D image of the frame size.")
            mask = mask[0]
        if compounding == "importance" and mask is None:
            raise InputError("Compounding 'importance' needs an importance mask.",
                             "Select the importance mask image (same size as the frames), or choose another "
                             "compounding mode.")
        if mask is not None and compounding != "importance":
            raise InputError(f"An importance mask was given but the compounding mode is '{compounding}'.",
                             "Choose compounding 'importance' to weight pixels by the mask, or leave the mask out.")
        if mask is None:
            return None
        from .compound.masks import normalise_importance

        return normalise_importance(mask, frameShape)

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
        to_node = np.linalg.inv(_toWorld(parent)) if parent is not None else np.eye(4)
        local = points @ to_node[:3, :3].T + to_node[:3, 3]
        axes = _roiAxes(roi)
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
        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm)
        mats = self._estimate(sweep, method, model, sweepDirection, device, progress, shouldCancel, curve)
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
        from .quality import Guard, check_sweep, load_guard

        sweep = self.readSweep(browserNode, imageSequence, pixelSpacingMm)
        loaded = guard if isinstance(guard, Guard) else load_guard(None if guard in (None, "", ".") else guard)
        report = check_sweep(sweep, guard=loaded, progress=progress)
        self.lastQuality = report
        if addNodes:
            base = sweep.metadata.get("image_sequence") or "Sweep"
            scene = self.scene
            before = _node_ids(scene)
            try:
                self.lastNodes = {**self.lastNodes, **self._addQualityNodes(scene, report, base)}
            except BaseException:
                self._removeNewNodes(scene, before)
                raise
        logging.info("FreehandRecon: quality check %s: %s", report.verdict, report.message)
        return report

    @staticmethod
    def _addQualityNodes(scene: Any, report: Any, base: str) -> dict[str, Any]:
        """A table node (frame, scores, thresholds, flag) and a plot chart of the OOD score against frame."""
        import vtk

        from .io.slicer_scene import unique_name

        table = scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, f"{base}_Quality"))
        n = report.num_frames
        columns = (("Frame", vtk.vtkIntArray, np.arange(n)),
                   ("OOD score", vtk.vtkDoubleArray, report.ood_score),
                   ("OOD threshold", vtk.vtkDoubleArray, np.full(n, report.thresholds["ood"])),
                   ("Reconstruction error", vtk.vtkDoubleArray, report.recon_error),
                   ("Out of distribution", vtk.vtkIntArray, report.frame_out.astype(int)))
        for name, cls, values in columns:
            arr = cls()
            arr.SetName(name)
            arr.SetNumberOfValues(n)
            for i, v in enumerate(values):  # n frames: a short loop over table rows
                arr.SetValue(i, v.item() if hasattr(v, "item") else v)
            table.AddColumn(arr)
        table.SetAttribute("FreehandRecon.QualityVerdict", report.verdict)
        table.SetAttribute("FreehandRecon.QualityMessage", report.message)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", unique_name(scene, f"{base}_QualityPlot"))
        chart.SetTitle(f"Quality guard: {report.verdict}")
        chart.SetXAxisTitle("Frame")
        chart.SetYAxisTitle("OOD score (Mahalanobis)")
        series = []
        for column, colour, style in (("OOD score", (0.1, 0.3, 0.8), 0), ("OOD threshold", (0.85, 0.1, 0.1), 1)):
            s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", unique_name(scene, f"{base}_{column}"))
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName("Frame")
            s.SetYColumnName(column)
            s.SetPlotType(s.PlotTypeScatter)
            s.SetMarkerStyle(s.MarkerStyleNone)
            s.SetLineStyle(s.LineStyleDash if style else s.LineStyleSolid)
            s.SetColor(*colour)
            chart.AddAndObservePlotSeriesNodeID(s.GetID())
            series.append(s)
        return {"qualityTable": table, "qualityChart": chart, "qualitySeries": series}

    def _learnedQuality(self, sweep: Any, progress: ProgressCallback | None, model: Any = None) -> Any:
        """The guard's report before learned poses (the guard a probe model carries, else the shipped one), or
        None when no guard is installed."""
        from .logic import PoseRequest, check_quality

        model = None if model is None or str(model) in ("", ".") else str(model)
        report = check_quality(sweep, PoseRequest(method="learned", model=model), progress)
        if report is not None:
            self.lastQuality = report
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
        from .compound import CompoundOptions, HoleFilling, fit_grid, grid_from_roi

        spacingMm = _spacing(spacingMm)
        skip = _skipInterval(skipInterval)
        clip = _clipRectangle(clipRectangle)
        compounding = _choice(compounding, COMPOUNDINGS, "compounding mode")
        options = CompoundOptions(interpolation=_choice(interpolation, INTERPOLATIONS, "interpolation"),
                                  compounding="mean" if compounding == "importance" else compounding,
                                  hole_filling=HoleFilling(method=_choice(fillHoles, HOLE_FILLINGS, "hole filling")),
                                  clip_rectangle=clip)
        light, channelKeys = self._sweepGeometry(browserNode, imageSequence, pixelSpacingMm, calibrationNode)
        nchannels = len(channelKeys) if channels is None else len(list(channels))
        if skip > 1 and light.num_frames >= 2 * skip - 1:
            light = light.subset(slice(None, None, skip))
        roi = self._roi(self._node(roiNode, "ROI"))
        if roi is not None:
            grid = grid_from_roi(roi.center, roi.size, spacingMm, roi.orientation)
        else:
            if light.image_to_world is None:
                raise InputError("The output box is not known before the poses are estimated.",
                                 "Select an ROI to see the memory estimate, or use a tracked sweep.")
            grid = fit_grid(light, spacingMm, clip_rectangle=clip)
        from .compound.options import channel_options
        from .io.slicer_sequences import CHANNEL_ATTRIBUTE
        from .logic import ReconstructionRequest, job_memory_bytes

        # the figure the run reports: the whole reconstruction (frames, one compounding per channel, nodes)
        names = list(channelKeys) if channels is None else [
            c if isinstance(c, str) else (c.GetAttribute(CHANNEL_ATTRIBUTE) or c.GetName()) for c in channels]
        request = ReconstructionRequest(spacing_mm=spacingMm, options=options, roi=roi)
        need = job_memory_bytes(light, request, grid, [options, *(channel_options(options, n, {}) for n in names)],
                                [], input_bytes=int(light.frames.nbytes) * (1 + nchannels))
        return need / 2**20

    def _sweepGeometry(self, browserNode: Any, imageSequence: Any = None,
                       pixelSpacingMm: tuple[float, float] | None = None,
                       calibrationNode: Any = None) -> tuple[Any, list[str]]:
        """A frame-free sweep (zero-stride frames, real poses) and the names of the browser's other image
        sequences (the channels a reconstruction would add by default), cached per input and settings."""
        from .io.slicer_sequences import CHANNEL_ATTRIBUTE, browser_sequences, is_image_sequence
        from .scene.browser import browser_geometry, lone_sequence_geometry

        browser, seq = self._browserAndSequence(browserNode, imageSequence)
        calibration = self._node(calibrationNode, "calibration transform")
        key_node = browser if browser is not None else seq
        spacing = None if pixelSpacingMm is None else tuple(float(v) for v in pixelSpacingMm)
        stamp = (self._geometryStamp(browser, seq), seq.GetID() if seq is not None else None, spacing,
                 None if calibration is None else (calibration.GetID(), calibration.GetMTime()))
        cached = self._geometryCache.get(key_node.GetID())
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if browser is None:
            light = lone_sequence_geometry(seq, spacing)
            others: list[str] = []
        else:
            light = browser_geometry(browser, seq, spacing)
            image_name = light.metadata["image_sequence"]
            others = [s.GetAttribute(CHANNEL_ATTRIBUTE) or s.GetName() for s in browser_sequences(browser)
                      if is_image_sequence(s) and s.GetName() != image_name]
        if calibration is not None:
            light = self._applyCalibration(light, browser, seq, calibration)
        value = (light, others)
        self._geometryCache = {key_node.GetID(): (stamp, value)}  # one sweep at a time: the panel's
        return value

    @staticmethod
    def _geometryStamp(browser: Any, seq: Any) -> tuple:
        """Changes when the browser's items, sequences or the transforms above the images change."""
        import vtk

        if browser is None:
            return (seq.GetMTime(), seq.GetNumberOfDataNodes())
        collection = vtk.vtkCollection()
        browser.GetSynchronizedSequenceNodes(collection, True)
        seqs = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
        parents = []
        for s in seqs:  # static transforms above the proxies change the poses too
            proxy = browser.GetProxyNode(s)
            node = proxy.GetParentTransformNode() if proxy is not None and proxy.IsA("vtkMRMLTransformableNode") \
                else None
            while node is not None:
                parents.append((node.GetID(), node.GetMTime()))
                node = node.GetParentTransformNode()
        return (browser.GetNumberOfItems(), tuple(s.GetID() for s in seqs), tuple(s.GetMTime() for s in seqs),
                tuple(parents))

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
            image_seq = seq if seq is not None else self._imageSequenceOf(browser)
        except FreehandReconError as err:
            return err.problem
        if browser is not None and browser.GetRecordingActive():
            return f"The browser '{browser.GetName()}' is recording; stop recording first."
        if image_seq is None:
            return f"The browser '{browser.GetName()}' has no image sequence."
        if image_seq.GetNumberOfDataNodes() < 2:
            return f"The image sequence '{image_seq.GetName()}' has fewer than 2 frames."
        poses = get("poses", "tracked")
        if (poses == "tracked" and get("calibrationTransform") is None and not self._imagesHaveParent(browser, image_seq)
                and not self._posesInImages(image_seq)):
            return ("The images have no tracking transform above them: choose learned or speckle poses, "
                    "or place the image sequence under its probe transform.")
        if poses != "tracked":
            model = get("modelPath")
            if model is not None and str(model) not in ("", ".") and not Path(model).is_file():
                return f"The model file '{model}' does not exist."
        if get("overridePixelSpacing", False) and min(get("pixelSpacingXMm", 0.0), get("pixelSpacingYMm", 0.0)) <= 0:
            return "The pixel spacing override must be positive."
        try:
            options = self.optionsFromParameters(parameters)
            _spacing(options["spacingMm"])
            _skipInterval(options["skipInterval"])
            _clipRectangle(options.get("clipRectangle"))
            if "fanAnglesDeg" in options:
                h, w = self._frameShape(image_seq)
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

    @staticmethod
    def _frameShape(image_seq: Any) -> tuple[int, int]:
        dims = image_seq.GetNthDataNode(0).GetImageData().GetDimensions()
        return int(dims[1]), int(dims[0])

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
        browsers_before = {b.GetID() for b in self._browsers(scene)}
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
        new = [b for b in self._browsers(scene) if b.GetID() not in browsers_before]
        named = [b for b in new if b.GetName() == entry.browserName]
        if not (named or new):
            raise InputError(f"The sample '{sampleName}' holds no sequence browser.", "Reinstall FreehandRecon.")
        return (named or new)[0]

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _browsers(scene: Any) -> list[Any]:
        return [scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))]

    @staticmethod
    def _imageSequenceOf(browser: Any) -> Any:
        import vtk

        from .io.slicer_sequences import ROLE_ATTRIBUTE

        collection = vtk.vtkCollection()
        browser.GetSynchronizedSequenceNodes(collection, True)
        images = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
        images = [s for s in images if s.GetDataNodeClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")]
        tagged = [s for s in images if s.GetAttribute(ROLE_ATTRIBUTE) == "image"]
        master = browser.GetMasterSequenceNode()
        if tagged:
            return tagged[0]
        return master if master in images else (images[0] if images else None)

    @staticmethod
    def _posesInImages(image_seq: Any) -> bool:
        """Whether the frames carry their poses in their IJKToRAS (PLUS EmbeddedTransformToFrame)."""
        from .io.slicer_sequences import image_sequence_ijk_to_ras, poses_in_image_geometry

        return poses_in_image_geometry(image_sequence_ijk_to_ras(image_seq))

    @staticmethod
    def _imagesHaveParent(browser: Any, image_seq: Any) -> bool:
        if browser is None:
            return False
        proxy = browser.GetProxyNode(image_seq)
        return proxy is not None and proxy.GetParentTransformNode() is not None

    @staticmethod
    def _channelKeys(sweep: Any, channels: Any) -> tuple[str, ...] | None:
        from .io.slicer_sequences import CHANNEL_ATTRIBUTE

        if channels is None:
            return None
        keys = []
        for ch in channels:
            key = ch if isinstance(ch, str) else (ch.GetAttribute(CHANNEL_ATTRIBUTE) or ch.GetName())
            if key not in sweep.channels:
                raise InputError(f"The sequence '{key}' is not an image channel of the sweep's browser.",
                                 "Add the photoacoustic/Doppler sequence to the sweep's sequence browser "
                                 "(Sequences module), with one frame per B-mode frame.")
            keys.append(key)
        return tuple(keys)

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
            image_seq = FreehandReconLogic._imageSequenceOf(browser)
            proxy = browser.GetProxyNode(image_seq) if image_seq is not None else None
            # frames whose IJKToRAS already hold a pose (PLUS EmbeddedTransformToFrame) are not moved twice
            if (proxy is not None and proxy.GetParentTransformNode() is None
                    and not FreehandReconLogic._posesInImages(image_seq)):
                proxy.SetAndObserveTransformNodeID(browser.GetProxyNode(seq).GetID())
        return seq

    @staticmethod
    def _showVolume(scene: Any, volume: Any, preset: str) -> Any:
        from .io.slicer_scene import get_logic, register_presets
        from .scene.display import show_volume_rendering

        vr = get_logic(scene, "volumerendering")
        if vr.GetPresetByName(preset) is None:
            register_presets(vr)
        return show_volume_rendering(scene, volume, preset=preset)

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
