"""TUS-REC challenge scans: HDF5 frames + tracker transforms, and ``calib_matrix.csv``.

An HDF5 scan holds ``frames`` [N, H, W] (uint8) and ``tforms`` [N, 4, 4], the tracker
tool -> camera transform of each frame. ``calib_matrix.csv`` holds two 4x4 matrices,
one row per line with 4 comma-separated numbers: first the pixel -> image-mm scaling,
then the image-mm -> tool calibration. Label lines (the challenge's files have one
before each matrix) are skipped. So

    image_to_world[n] = tforms[n] @ image_mm_to_tool,  pixel spacing = scaling diagonal,

with the camera as world (used as Slicer RAS unchanged). Pixel (column i, row j) is
taken at (i * sx, j * sy) as everywhere in FreehandRecon; pass ``one_based=True`` to
follow the challenge's evaluation code, which numbers pixels from 1 (a shift of one
pixel in the image plane). Extra datasets named ``<x>_frames`` become channels:
``pa_frames`` -> ``"photoacoustic"``, ``doppler_frames`` -> ``"doppler"``, others ``"<x>"``.
An optional ``timestamps`` dataset [N] is read too; a channel's own ``<x>_timestamps`` (e.g.
``pa_timestamps``) must agree with it frame by frame (InputError otherwise).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .. import geometry
from ..errors import CalibrationError, FreehandReconError, InputError, OutputExistsError, ResourceError
from ..sweep import Sweep, check_channel_name
from .common import atomic_outputs, check_array_fits, check_output, check_spacing, existing_file, grey_frames

CHANNEL_NAMES = {"pa": "photoacoustic", "doppler": "doppler"}
_FIX_CALIB = ("Pass the scan's calibration file: --calibration calib_matrix.csv (two 4x4 matrices: pixel->mm "
              "scaling, then image(mm)->tool).")


def _h5py():
    """h5py, imported only when a .h5 is read or written (a stock Slicer's Python does not have it)."""
    try:
        import h5py
    except ImportError as err:
        raise ResourceError("Reading or writing a TUS-REC .h5 scan needs the h5py package, which is not installed.",
                            "Install it (pip install h5py; in Slicer: slicer.util.pip_install('h5py')).") from err
    return h5py


def read_tusrec_calibration(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pixel_to_image_mm, image_mm_to_tool)`` 4x4 matrices from a ``calib_matrix.csv``."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"The TUS-REC calibration file '{p}' does not exist.", _FIX_CALIB)
    p = existing_file(p, "TUS-REC calibration file")
    rows: list[list[float]] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        cells = [c.strip() for c in line.replace(";", ",").split(",") if c.strip()]
        if not cells:
            continue
        try:
            values = [float(c) for c in cells]
        except ValueError:
            continue  # a label line such as "scaling_from_pixel_to_mm"
        if len(values) != 4:
            raise CalibrationError(f"'{p}' line {lineno} has {len(values)} numbers; each matrix row needs 4.", _FIX_CALIB)
        rows.append(values)
    if len(rows) != 8:
        raise CalibrationError(f"'{p}' has {len(rows)} matrix rows; expected 8 (two 4x4 matrices).", _FIX_CALIB)
    m = np.array(rows)
    scaling, mm_to_tool = m[:4], m[4:]
    for mat, what in ((scaling, f"pixel-to-mm scaling matrix in '{p}'"),
                      (mm_to_tool, f"image(mm)-to-tool calibration matrix in '{p}'")):
        geometry.validate_transforms(mat[None], what=what)
    geometry.check_axes(mm_to_tool, f"image(mm)-to-tool calibration matrix in '{p}'", scaled=False)
    if not (scaling[0, 0] > 0 and scaling[1, 1] > 0):
        raise CalibrationError(f"'{p}': the pixel-to-mm scaling has diagonal {np.diag(scaling)[:2].tolist()}; the "
                               "pixel spacing must be positive.", _FIX_CALIB)
    return scaling, mm_to_tool


def _dataset(f: h5py.File, name: str, path: Path, *, frames: bool = False, read: bool = True) -> np.ndarray | None:
    """Read dataset ``name`` after checking its kind, shape and size from the file's metadata.

    ``frames`` asks for ``[N, H, W]`` (or ``[N, H, W, 3|4]``) numeric frames; ``read=False`` only
    checks (for ``info``, which must not read every frame).
    """
    h5py = _h5py()
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"'{path}': '{name}' is a {type(obj).__name__}, not an array.",
                         "Store frames as one [N, H, W] dataset.")
    shape, dtype = obj.shape, obj.dtype
    if shape is None or dtype.kind not in "biuf":
        raise InputError(f"'{path}': dataset '{name}' holds {dtype} data of shape {shape}, not numbers.",
                         f"Store '{name}' as a numeric array.")
    if frames and len(shape) not in (3, 4):
        raise InputError(f"'{path}': '{name}' has shape {shape}; frames must be [N, H, W] (a stack of 2D images).",
                         "Store the frames as one 3D dataset, frame index first.")
    check_array_fits(shape, dtype.itemsize, f"dataset '{name}'", path)
    if not read:
        return None
    try:
        return obj[()]
    except OSError as exc:  # truncated or corrupt chunk
        raise InputError(f"'{path}': dataset '{name}' cannot be read ({exc}).",
                         "Copy the file again; it is probably truncated.") from None


def _channel_keys(f: h5py.File, path: Path) -> dict[str, str]:
    """``{channel name: dataset prefix}`` for every ``<x>_frames`` dataset besides ``frames``."""
    out = {}
    for key in f.keys():
        if key.endswith("_frames") and key != "frames":
            prefix = key[: -len("_frames")]
            out[check_channel_name(CHANNEL_NAMES.get(prefix, prefix), f"{path}:{key}")] = prefix
    return out


def _open(p: Path) -> h5py.File:  # noqa: F821 - h5py is imported lazily
    h5py = _h5py()

    try:
        return h5py.File(p, "r")
    except Exception as exc:  # noqa: BLE001 - h5py reports a damaged file as OSError, KeyError, RuntimeError...
        raise InputError(f"'{p}' is not a readable HDF5 file ({type(exc).__name__}: {exc}).",
                         "Give a TUS-REC .h5 scan; copy it again if it was cut short.") from None


def _damaged(p: Path, exc: Exception) -> InputError:
    return InputError(f"'{p}' is a damaged HDF5 file ({type(exc).__name__}: {exc}).",
                      "Copy the scan again; it was probably cut short or corrupted.")


def sweep_from_tusrec(path: str | os.PathLike, calibration: str | os.PathLike | None = None,
                      pixel_spacing: tuple[float, float] | None = None, one_based: bool = False) -> Sweep:
    """Read a TUS-REC HDF5 scan; ``calibration`` defaults to ``calib_matrix.csv`` beside it.

    A scan without ``tforms`` gives a sweep without poses (then ``calibration`` is only
    used for the pixel spacing, and ``pixel_spacing`` may replace it).
    """
    p = existing_file(path, "TUS-REC scan")
    parts = _read_scan(p, calibration, pixel_spacing, one_based, frames=True)
    return Sweep(frames=parts["frames"], pixel_spacing=parts["spacing"], image_to_world=parts["image_to_world"],
                 timestamps=parts["timestamps"], channels=parts["channels"], metadata=parts["metadata"])


def tusrec_summary(path: str | os.PathLike, calibration: str | os.PathLike | None = None,
                   pixel_spacing: tuple[float, float] | None = None) -> dict:
    """What :func:`sweep_from_tusrec` would read, without reading the frames (shapes from the file's metadata).

    Keys: ``frames_shape``, ``dtype``, ``spacing``, ``image_to_world`` (or None), ``timestamps``
    (or None), ``channels`` (names), ``metadata``.
    """
    p = existing_file(path, "TUS-REC scan")
    return _read_scan(p, calibration, pixel_spacing, False, frames=False)


def _read_scan(p: Path, calibration, pixel_spacing, one_based: bool, frames: bool) -> dict:
    f = _open(p)
    try:
        with f:
            if "frames" not in f:
                raise InputError(f"'{p}' has no 'frames' dataset (it has: {', '.join(sorted(f.keys())) or 'nothing'}).",
                                 "Give a TUS-REC scan with datasets 'frames' [N, H, W] and 'tforms' [N, 4, 4].")
            raw = _dataset(f, "frames", p, frames=True, read=frames)
            fobj = f["frames"]
            shape, dtype = tuple(fobj.shape), fobj.dtype
            frames_arr = grey_frames(raw, str(p)) if frames else None
            n = shape[0]
            tforms = _dataset(f, "tforms", p).astype(np.float64) if "tforms" in f else None
            stamps = _dataset(f, "timestamps", p).astype(np.float64) if "timestamps" in f else None
            channels = {}
            channel_stamps = {}
            for name, prefix in _channel_keys(f, p).items():
                key = f"{prefix}_frames"
                data = _dataset(f, key, p, frames=True, read=frames)
                if tuple(f[key].shape[:3]) != shape[:3]:
                    raise InputError(f"'{p}': channel '{name}' frames are {tuple(f[key].shape)} but B-mode 'frames' "
                                     f"are {shape}.",
                                     "Store every channel with the same number and size of frames as 'frames'.")
                channels[name] = grey_frames(data, f"{p}:{key}") if frames else None
                if f"{prefix}_timestamps" in f:  # a channel with its own clock must agree with the B-mode one
                    channel_stamps[name] = _dataset(f, f"{prefix}_timestamps", p).astype(np.float64)
    except FreehandReconError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises KeyError/RuntimeError/TypeError/OSError on damage
        raise _damaged(p, exc) from None
    meta: dict = {"source": str(p), "format": "tusrec"}
    for name, ch_stamps in channel_stamps.items():
        if stamps is None:
            raise InputError(f"'{p}': channel '{name}' has timestamps but the B-mode frames have none.",
                             "Store the B-mode 'timestamps' too, or drop the channel's timestamps.")
        from ..channels import check_channel_timestamps

        check_channel_timestamps(stamps, ch_stamps, name)
    if tforms is not None and tforms.shape != (n, 4, 4):
        raise InputError(f"'{p}': 'tforms' has shape {tforms.shape} for {n} frames.",
                         "Store one 4x4 tool->camera transform per frame.")
    calib = Path(calibration) if calibration is not None else p.parent / "calib_matrix.csv"
    if tforms is not None or calib.is_file() or calibration is not None:
        scaling, mm_to_tool = read_tusrec_calibration(calib)
        spacing = (float(scaling[0, 0]), float(scaling[1, 1]))
        meta.update(calibration=str(calib), image_mm_to_tool=mm_to_tool.tolist(), one_based=one_based)
    else:
        scaling = mm_to_tool = None
        spacing = (1.0, 1.0) if pixel_spacing is None else pixel_spacing
        if pixel_spacing is None:
            warnings.warn(f"{p}: no tracker transforms and no calib_matrix.csv; pixel spacing set to 1 mm. "
                          "Pass pixel_spacing (--pixel-spacing) for true sizes.", stacklevel=3)
    if pixel_spacing is not None:
        spacing = check_spacing(pixel_spacing)
    image_to_world = None
    if tforms is not None:
        tf = geometry.validate_transforms(tforms, what=f"'tforms' of '{p}'")
        geometry.check_axes(tf, f"'tforms' of '{p}'", scaled=False)
        image_to_world = tf @ mm_to_tool
        if one_based:  # pixel (i, j) is the challenge's point (i + 1, j + 1)
            shift = np.eye(4)
            shift[:2, 3] = scaling[0, 0], scaling[1, 1]
            image_to_world = image_to_world @ shift
    return {"frames": frames_arr, "frames_shape": shape, "dtype": dtype, "spacing": spacing,
            "image_to_world": image_to_world, "timestamps": stamps, "channels": channels, "metadata": meta}


def _calib_text(scaling: np.ndarray, mm_to_tool: np.ndarray) -> str:
    rows = ["scaling_from_pixel_to_mm"] + [",".join(repr(float(v)) for v in r) for r in scaling]
    rows += ["spatial_calibration_from_image_mm_to_tool"] + [",".join(repr(float(v)) for v in r) for r in mm_to_tool]
    return "\n".join(rows) + "\n"


def write_tusrec(sweep: Sweep, h5_path: str | os.PathLike, calib_csv_path: str | os.PathLike,
                 force: bool = False) -> tuple[Path, Path]:
    """Write ``sweep`` as a TUS-REC scan (HDF5) and its ``calib_matrix.csv``.

    The image(mm)->tool calibration is ``sweep.metadata["image_mm_to_tool"]`` when the
    sweep came from a TUS-REC scan, else identity; ``tforms = image_to_world @
    inv(calibration)``. An existing calibration file with the same matrices is kept.
    """
    h5 = check_output(h5_path, force)
    csv = Path(calib_csv_path)
    mm_to_tool = np.asarray(sweep.metadata.get("image_mm_to_tool", np.eye(4)), dtype=np.float64)
    if sweep.metadata.get("one_based"):
        raise InputError("This sweep was read with one_based=True; writing it back would shift it by a pixel.",
                         "Read the scan with one_based=False before writing it as TUS-REC.")
    scaling = geometry.pixel_scale_matrix(sweep.pixel_spacing)
    write_csv = True
    if csv.exists():
        try:
            same = all(np.allclose(a, b, rtol=0, atol=1e-12)
                       for a, b in zip(read_tusrec_calibration(csv), (scaling, mm_to_tool)))
        except InputError:
            same = False
        if same:
            write_csv = False
        elif not force:
            raise OutputExistsError(f"The calibration file '{csv}' exists with different matrices.",
                                    "Write the scan to another folder, or pass force=True (--force) to overwrite it.")
    check_output(csv, True)
    targets = [h5, csv] if write_csv else [h5]
    with atomic_outputs(*targets) as temps:
        with _h5py().File(temps[0], "w") as f:
            f.create_dataset("frames", data=sweep.frames)
            if sweep.image_to_world is not None:
                f.create_dataset("tforms", data=sweep.image_to_world @ np.linalg.inv(mm_to_tool))
            if sweep.timestamps is not None:
                f.create_dataset("timestamps", data=sweep.timestamps)
            inverse = {v: k for k, v in CHANNEL_NAMES.items()}
            for name, ch in sweep.channels.items():
                f.create_dataset(f"{inverse.get(name, name)}_frames", data=ch)
        if write_csv:
            temps[1].write_text(_calib_text(scaling, mm_to_tool))
    return h5, csv
