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


def check_output(path: str | os.PathLike, force: bool, create_folder: bool = False) -> Path:
    """Refuse to overwrite ``path`` unless ``force``; check, before any work, that it can be written.

    An existing folder of that name is refused even with ``force`` (only files are replaced), as
    are a missing folder (unless ``create_folder``: the writer will make it), a folder that is
    really a file, and a folder that cannot be written.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"The output '{p}' is an existing folder, not a file.",
                         "Give a file name (e.g. inside that folder); --force replaces files, never folders.")
    if p.exists() and not force:
        raise OutputExistsError(f"The output file '{p}' already exists.",
                                "Choose another output name or pass force=True (--force) to overwrite it.")
    check_folder_writable(p.parent, create=create_folder)
    return p


def check_folder_writable(folder: str | os.PathLike, create: bool = True) -> Path:
    """Check that files can be written in ``folder`` (or, with ``create``, that it can be made).

    Looks for the nearest folder that exists: a file in the way, a missing folder (without
    ``create``) or a folder where a test file cannot be created (read-only, no permission, full)
    raise :class:`InputError` now rather than after a long computation.
    """
    target = Path(folder) if str(folder) else Path(".")
    probe = target
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"The output folder '{target}' lies under a broken link '{probe}'.",
                             "Give an output location that exists or can be created.")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"The output location '{target}' lies under '{probe}', which is a file, not a folder.",
                         "Choose another output folder (or rename that file).")
    if probe != target and not create:
        raise InputError(f"The output folder '{target}' does not exist.", "Create the folder first.")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".freehandrecon-check-"):
            pass
    except OSError as exc:
        raise InputError(f"Cannot write in '{probe}' ({exc.strerror or exc}).",
                         "Choose an output location you can write to (not read-only, not full).") from None
    return target


def check_array_fits(shape: Iterable[int], itemsize: int, what: str, path: str | os.PathLike) -> int:
    """Refuse to read an array whose declared size is absurd or exceeds the available memory.

    A damaged or crafted header can declare terabytes in a tiny file; this runs before any read.
    Returns the size in bytes.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InputError(f"'{path}': {what} declares a negative size {tuple(dims)}.",
                         "The file is damaged; copy or export it again.")
    nbytes = int(itemsize)
    for d in dims:
        nbytes *= d
    limit = physical_memory_bytes()
    if nbytes > limit:
        from ..errors import ResourceError

        raise ResourceError(f"'{path}': {what} of shape {tuple(dims)} would take {nbytes / 2**30:.3g} GiB, more "
                            f"than this machine's {limit / 2**30:.3g} GiB of memory.",
                            "Check that the file is not damaged (its header may claim a wrong size); read it on a "
                            "machine with more memory, or split the sweep.")
    return nbytes


def physical_memory_bytes() -> int:
    """The machine's physical memory (64 GiB where the OS does not say): no array read can be larger."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 64 << 30


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
