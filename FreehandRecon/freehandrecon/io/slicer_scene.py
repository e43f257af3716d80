"""A headless Slicer MRML scene (through slicer-core) with the logics FreehandRecon needs, and numpy <-> VTK helpers.

:func:`new_scene` registers the application, colour, sequences, volumes, volume rendering (FreehandRecon's
presets), markups and transforms logics; :func:`get_logic` finds a logic of such a scene, or of the Slicer
application. Slicer and VTK are imported inside the functions, so importing :mod:`freehandrecon.io` stays light.

The helpers (:func:`vtk_matrix`, :func:`matrix_array`, :func:`array_from_volume`, :func:`update_volume_from_array`)
do what ``slicer.util``'s do with the few ``vtkmodules`` that Slicer and slicer-core load with MRML: ``slicer.util``
imports the whole ``vtk`` module on first use, every VTK library (about 0.25 s headless), which the command line
does not need.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

_LOGICS_ATTRIBUTE = "_freehandrecon_logics"  # module logics kept alive with the scene's Python wrapper


PRESETS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Presets"


PRESETS_FILE = PRESETS_DIR / "FreehandReconPresets.xml"


PRESET_NAMES = ("US-BMode", "PA-Hot", "Doppler-Red")


def _slicer_version_string() -> str:
    """'Slicer<major>.<minor>.0 <revision>' for the slicer-core build (its MRML is that Slicer's)."""
    try:
        parts = metadata.version("slicer-core").split(".")
        return f"Slicer{parts[0]}.{parts[1]}.0 {parts[2]}"
    except (metadata.PackageNotFoundError, IndexError):
        return "Slicer5.0.0 0"


def new_scene() -> Any:
    """A vtkMRMLScene with the logics FreehandRecon needs, ready for nodes, files and rendering.

    Registered: application, colour (default colour tables), sequences, volumes, volume
    rendering (presets from FreehandRecon's Resources/Presets), markups (the volume
    rendering ROI) and transforms logics; a cache manager and data IO manager so that
    ``ReadFromMRB`` works. The logics stay alive as long as the scene's Python object.
    """
    # All of slicer-core (and the vtkmodules FreehandRecon's headless code uses) loads with the scene: imported for
    # the first time later, in the middle of a run, a Ctrl-C or SIGTERM can interrupt that import and crash the
    # process. Rendering imports the whole vtk module: run_reconstruct_job imports it before any long work.
    import slicer
    import vtkmodules.util.numpy_support  # noqa: F401
    import vtkmodules.vtkCommonCore  # noqa: F401
    import vtkmodules.vtkCommonDataModel  # noqa: F401
    import vtkmodules.vtkCommonMath  # noqa: F401
    import vtkmodules.vtkIOImage  # noqa: F401

    scene = slicer.vtkMRMLScene()
    scene.SetVersion(_slicer_version_string())
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    logics: dict[str, Any] = {"application": app, "colors": colors}
    for key, cls in (("sequences", "vtkSlicerSequencesLogic"), ("volumes", "vtkSlicerVolumesLogic"),
                     ("volumerendering", "vtkSlicerVolumeRenderingLogic"), ("markups", "vtkSlicerMarkupsLogic"),
                     ("transforms", "vtkSlicerTransformLogic")):
        logic = getattr(slicer, cls)()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(key, logic)
        logics[key] = logic
    _load_presets(logics["volumerendering"])
    cache_dir = tempfile.mkdtemp(prefix="freehandrecon-mrml-cache-")
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_dir)
    scene.SetCacheManager(cache)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    setattr(scene, _LOGICS_ATTRIBUTE, logics)
    # the cache folder goes with the scene (or at exit), so headless runs leave no temporary folders behind
    weakref.finalize(scene, shutil.rmtree, cache_dir, True)
    return scene


def _load_presets(vr_logic: Any) -> None:
    """Make FreehandRecon's presets the logic's presets scene (headless scenes only).

    The logic's own loader wants ``<share>/presets.xml`` and Slicer's CT/MR presets; ours
    are loaded instead. Slicer's automatic choice for 8-bit volumes asks for a preset named
    "US-Fetal" and crashes without one, so US-BMode is also offered under that name.
    """
    import slicer

    vr_logic.SetModuleShareDirectory(str(PRESETS_DIR))
    vr_logic.LoadCustomPresetsScene(str(PRESETS_FILE))  # creates the presets scene ...
    vr_logic.GetPresetsScene().RegisterNodeClass(slicer.vtkMRMLVolumePropertyNode())
    if not vr_logic.LoadCustomPresetsScene(str(PRESETS_FILE)):  # ... which can now read the nodes
        raise InputError(f"Could not read the volume rendering presets '{PRESETS_FILE}'.",
                         "Reinstall FreehandRecon; the file ships in FreehandRecon/Resources/Presets.")
    if vr_logic.GetPresetByName("US-Fetal") is None:
        alias = slicer.vtkMRMLVolumePropertyNode()
        alias.CopyContent(vr_logic.GetPresetByName("US-BMode"))
        alias.SetName("US-Fetal")
        vr_logic.GetPresetsScene().AddNode(alias)


def register_presets(vr_logic: Any) -> list[str]:
    """Add FreehandRecon's presets to a volume rendering logic that has its own (the Slicer app).

    Returns the names added; presets already present by name are left alone.
    """
    import slicer

    presets = vr_logic.GetPresetsScene()
    reader = slicer.vtkMRMLScene()
    reader.RegisterNodeClass(slicer.vtkMRMLVolumePropertyNode())
    reader.SetURL(str(PRESETS_FILE))
    if not reader.Import():
        raise InputError(f"Could not read the volume rendering presets '{PRESETS_FILE}'.",
                         "Reinstall FreehandRecon; the file ships in FreehandRecon/Resources/Presets.")
    added = []
    for i in range(reader.GetNumberOfNodesByClass("vtkMRMLVolumePropertyNode")):
        node = reader.GetNthNodeByClass(i, "vtkMRMLVolumePropertyNode")
        if presets.GetFirstNodeByName(node.GetName()) is None:
            vr_logic.AddPreset(node, None, True)
            added.append(node.GetName())
    return added


def get_logic(scene: Any, name: str) -> Any:
    """The module logic ``name`` ("sequences", "volumerendering", ...) serving ``scene``.

    Scenes from :func:`new_scene` carry their own; inside the Slicer application the
    module's logic is used.
    """
    import slicer

    logics = getattr(scene, _LOGICS_ATTRIBUTE, None)
    if logics and name in logics:
        return logics[name]
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, name):
        return getattr(modules, name).logic()
    raise InputError(f"The MRML scene has no {name} logic (it was not made by freehandrecon.io.slicer_scene.new_scene()).",
                     "Create the scene with freehandrecon.io.slicer_scene.new_scene(), or use slicer.mrmlScene in Slicer.")


def unique_name(scene: Any, name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, ... whichever no node in ``scene`` has yet."""
    if not name or not str(name).strip():
        raise InputError("A node name must not be empty.", "Give a name such as 'Sweep' or 'Reconstruction'.")
    # Scene's own GenerateUniqueName counts calls, not nodes; this one only avoids names in use.
    candidate, k = str(name), 0
    while scene.GetFirstNodeByName(candidate) is not None:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def new_matrix() -> Any:
    """An identity vtkMatrix4x4."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    return vtkMatrix4x4()


def vtk_matrix(array: np.ndarray) -> Any:
    """A new vtkMatrix4x4 holding the 4x4 ``array`` (as ``slicer.util.vtkMatrixFromArray``)."""
    a = np.asarray(array, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"A 4x4 matrix was expected, not shape {a.shape}.")
    m = new_matrix()
    m.DeepCopy(a.ravel())
    return m


def matrix_array(matrix: Any) -> np.ndarray:
    """The elements of a vtkMatrix4x4 or vtkMatrix3x3 as a new numpy array (as ``slicer.util.arrayFromVTKMatrix``)."""
    from vtkmodules.vtkCommonMath import vtkMatrix3x3, vtkMatrix4x4

    if isinstance(matrix, vtkMatrix4x4):
        out = np.eye(4)
    elif isinstance(matrix, vtkMatrix3x3):
        out = np.eye(3)
    else:
        raise TypeError(f"A vtkMatrix4x4 or vtkMatrix3x3 was expected, not {type(matrix).__name__}.")
    matrix.DeepCopy(out.ravel(), matrix)
    return out


def ijk_to_ras(volume: Any) -> np.ndarray:
    m = new_matrix()
    volume.GetIJKToRASMatrix(m)
    return matrix_array(m)


def array_from_volume(volume: Any) -> np.ndarray:
    """The voxels of a scalar volume node as a ``[k, j, i]`` (``[k, j, i, c]`` for several components) numpy view
    of its image data (as ``slicer.util.arrayFromVolume`` for scalar and vector volumes)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    image = volume.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"The volume '{volume.GetName()}' has no voxels.", "Load or compute the volume first.")
    shape = tuple(reversed(image.GetDimensions()))
    comps = image.GetNumberOfScalarComponents()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape + ((comps,) if comps > 1 else ()))


def update_volume_from_array(volume: Any, array: np.ndarray) -> None:
    """Copy ``array`` (``[k, j, i]`` scalars) into the volume node's image data, made to fit its shape and type,
    with the notifications ``slicer.util.updateVolumeFromArray`` sends."""
    from vtkmodules.util.numpy_support import get_vtk_array_type
    from vtkmodules.vtkCommonDataModel import vtkImageData

    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"A [k, j, i] array was expected, not shape {a.shape}.")
    image = volume.GetImageData()
    if image is None:
        image = vtkImageData()
        volume.SetAndObserveImageData(image)
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    image.AllocateScalars(get_vtk_array_type(a.dtype), 1)
    array_from_volume(volume)[:] = a
    volume.StorableModified()
    volume.Modified()
    volume.InvokeEvent(volume.ImageDataModifiedEvent, volume)
