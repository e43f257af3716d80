"""Small helpers shared by the readers and writers: file checks, atomic writes, grey frames."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputExistsError
from ..sweep import to_grey


def existing_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """Return ``path`` as a Path after checking it is a readable, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"The {what} '{p}' does not exist.", "Check the path and the file name.")
    if not p.is_file():
        raise InputError(f"The {what} '{p}' is not a file.", "Give the path of a file, not of a folder.")
    if p.stat().st_size == 0:
        raise InputError(f"The {what} '{p}' is empty (0 bytes).",
                         "Re-export or copy the file again; it was probably not written completely.")
    return p


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite ``path`` unless ``force``; make sure its folder exists."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"The output file '{p}' already exists.",
                                "Choose another output name or pass force=True (--force) to overwrite it.")
    if not p.parent.exists():
        raise InputError(f"The output folder '{p.parent}' does not exist.", "Create the folder first.")
    return p


@contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; move them all into place only when the block succeeded.

    Each temporary path has the target's own file name, inside a hidden folder beside the target,
    so writers that choose the format from the name (Slicer's storage nodes) and headers that
    name a companion file (.mhd -> .raw) work unchanged. Either every output appears complete or
    none changes: on any error the temporary folders are removed and the targets are left as they were.
    """
    temps: list[tuple[Path, Path, Path]] = []
    try:
        for path in map(Path, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=".freehandrecon-write-", dir=path.parent.absolute()))
            temps.append((folder, folder / path.name, path))
        yield [tmp for _, tmp, _ in temps]
        for _, tmp, target in temps:
            if not tmp.is_file():
                raise InputError(f"No file '{target.name}' was written.", "Check that the folder is writable.")
        for _, tmp, target in temps:
            os.replace(tmp, target)
    finally:
        for folder, _, _ in temps:
            shutil.rmtree(folder, ignore_errors=True)


def atomic_write(paths_and_chunks: Iterable[tuple[Path, Iterable[bytes | memoryview]]]) -> None:
    """Write byte chunks to several files atomically (see :func:`atomic_outputs`)."""
    items = list(paths_and_chunks)
    with atomic_outputs(*(p for p, _ in items)) as temps:
        for tmp, (_, chunks) in zip(temps, items):
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)


def grey_frames(frames: np.ndarray, source: str) -> np.ndarray:
    """Return ``[N, H, W]`` frames; colour ``[N, H, W, 3|4]`` is converted to grey with a warning.

    Ultrasound B-mode carries no colour information that reconstruction uses, so RGB
    frames (screen captures, Doppler overlays) are reduced to BT.601 luma.
    """
    if frames.ndim == 4 and frames.shape[-1] in (3, 4):
        warnings.warn(f"{source}: colour frames (RGB) were converted to grey (BT.601 luma).", stacklevel=3)
        return to_grey(frames)
    if frames.ndim == 4 and frames.shape[-1] == 1:
        return frames[..., 0]
    if frames.ndim == 4:
        raise InputError(f"{source}: frames have {frames.shape[-1]} components per pixel; expected 1 (grey) or "
                         "3/4 (RGB/RGBA).", "Export the sweep as grey-scale or RGB frames.")
    return frames


def check_spacing(spacing: object, what: str = "pixel spacing") -> tuple[float, float]:
    """Validate a user-given ``(sx, sy)`` in mm; raise :class:`InputError` otherwise."""
    try:
        values = np.asarray(spacing, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([])
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.isfinite(values).all() or (values <= 0).any():
        raise InputError(f"The {what} must be two positive numbers in mm (column, row); got {spacing!r}.",
                         "Give the true spacing, e.g. --pixel-spacing 0.2 0.2.")
    return float(values[0]), float(values[1])
