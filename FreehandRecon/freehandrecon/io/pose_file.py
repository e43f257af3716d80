"""Estimated poses on disk: a Slicer transform sequence (.seq.mha) or a sweep file with poses.

``freehandrecon estimate-poses`` writes them and ``freehandrecon reconstruct --poses-file``
(or :func:`read_pose_file`) reads them back; a .seq.mha also loads in Slicer as a transform
sequence to pair with the image sequence.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..sweep import Sweep
from .common import check_output, existing_file

TRANSFORM_SEQUENCE_SUFFIX = ".seq.mha"


def is_transform_sequence_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TRANSFORM_SEQUENCE_SUFFIX)


def write_pose_output(sweep: Sweep, path: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write ``sweep``'s poses: only the transforms for a .seq.mha name, else the whole sweep."""
    if sweep.image_to_world is None:
        raise InputError("There are no poses to write.", "Estimate poses first.")
    target = check_output(path, force)
    if is_transform_sequence_name(target):
        from .slicer_files import save_node
        from .slicer_scene import new_scene
        from .slicer_sequences import add_transform_sequence

        scene = new_scene()
        node = add_transform_sequence(scene, sweep.image_to_world, "ImageToReference")
        return [save_node(node, target)]
    from . import write_sweep

    written = write_sweep(sweep, target, force=force)
    return list(written) if isinstance(written, (list, tuple)) else [Path(written)]


def read_pose_file(path: str | os.PathLike, num_frames: int | None = None) -> np.ndarray:
    """``[N, 4, 4]`` image-to-world poses from a .seq.mha transform sequence or a sweep file with poses.

    With ``num_frames`` the count must match the sweep the poses are for.
    """
    p = existing_file(path, "pose file")
    if is_transform_sequence_name(p):
        from .slicer_files import read_transform_sequence

        poses = read_transform_sequence(p)
    else:
        from . import read_sweep

        sweep = read_sweep(p)
        if sweep.image_to_world is None:
            raise InputError(f"'{p}' has frames but no poses.",
                             "Give a file written by 'freehandrecon estimate-poses', or a tracked sweep.")
        poses = sweep.image_to_world
    if num_frames is not None and len(poses) != num_frames:
        raise InputError(f"'{p}' has {len(poses)} poses but the sweep has {num_frames} frames.",
                         "Use the pose file estimated from this same sweep.")
    return poses
