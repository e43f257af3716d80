"""Does a tracked sweep's in-plane motion match what its images show?

Sensorless methods read in-plane motion (lateral, axial, rotation about the beam's normal) from the images
by block matching, which is accurate while consecutive frames still share speckle. A tracker reads the probe's
marker, and the image-to-probe calibration turns that into image motion. When the calibration's rotation is off
(or the image and tracker clocks are not aligned, or the marker moved on the probe) part of the elevational
motion shows up as lateral or axial motion that the images do not show; tissue that moves with the probe
(compressed under it, dragged along) does the same. Such a sweep is a poor reference for image-based poses:

- an evaluation against it scores every method that reads in-plane motion from the image content with an error
  it cannot remove: its *in-plane floor*, the drift of the tracked poses with their in-plane motion replaced by the
  images'.
- adapting a model to it (``freehandrecon adapt``) teaches motions the images do not show.

:func:`check_tracking` measures the disagreement; :func:`tracking_warnings` turns it into a warning.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import geometry
from ..errors import InputError
from ..sweep import Sweep
from . import blockmatch, common, metrics
from .speckle import imaging_patches, prepare_frames

# The in-plane motion the tracker adds that the images do not show, as an angle between the tracked and the
# image-consistent direction of travel; below it (calibrations are good to a few degrees) or below
# MIN_DISAGREEMENT_MM in all, the tracked motion is taken as consistent with the images.
MAX_ANGLE_DEG = 5.0
MIN_DISAGREEMENT_MM = 1.0


def in_plane_from_images(sweep: Sweep, max_size: int = 256, batch: int = 32) -> np.ndarray:
    """``[N-1, 3]`` in-plane motion of every frame k+1 in frame k read from the images by block matching:
    lateral and axial translation of the frame centre (mm) and rotation about the normal (degrees), in the
    convention of :func:`freehandrecon.poses.common.relative_centre` (as speckle poses read them)."""
    frames, spacing, _ = prepare_frames(sweep.frames, sweep.pixel_spacing, max_size)
    t = torch.from_numpy(frames)
    grid = blockmatch.patch_grid(tuple(t.shape[1:]), 5, 5)
    # patches with pixels that never change (outside a fan, burnt-in overlays) match at zero shift whatever the motion
    moving = imaging_patches(t, grid).to(t.dtype)
    out = np.zeros((sweep.num_frames - 1, 3))
    for start in range(0, sweep.num_frames - 1, batch):
        stop = min(sweep.num_frames - 1, start + batch)
        res = blockmatch.in_plane_motion(t[start:stop], t[start + 1:stop + 1], grid, spacing, patch_weight=moving)
        out[start:stop, :2] = res.t.numpy()
        out[start:stop, 2] = np.rad2deg(res.theta.numpy())
    return out


def check_tracking(sweep: Sweep) -> dict[str, Any]:
    """Compare the tracked in-plane motion of ``sweep`` with its images'.

    Returns (mm, degrees, %):
        ``tracked_in_plane_mm`` / ``image_in_plane_mm``: the summed lateral and axial motion of the frame
        centre, tracked and read from the images; ``disagreement_mm``: the length of their difference;
        ``elevational_path_mm``: the summed absolute tracked elevational steps; ``angle_deg``: the angle the
        disagreement makes with the elevational path (what a calibration rotation error of that size would
        give); ``rms_per_frame_mm``: the root mean square per-frame in-plane difference;
        ``in_plane_floor_fdr_pct``: the final drift (% of the tracked path length, as ``evaluate``'s FDR) of
        the tracked poses with their in-plane motion (lateral, axial, rotation about the normal) replaced by
        the images' -- what a method that reads in-plane motion from the images and every other motion exactly
        still scores;
        ``consistent``: angle below :data:`MAX_ANGLE_DEG` or disagreement below :data:`MIN_DISAGREEMENT_MM`.
    """
    if sweep.image_to_world is None:
        raise InputError("The tracking check needs a tracked sweep; this one has no poses.",
                         "Give the tracker transforms and the calibration (--plus-config or --calibration).")
    common.check_pixel_spacing_known(sweep)
    common.require_min_frames(sweep.num_frames, 2, "the tracking check")
    tracked = geometry.matrix_to_params(common.relative_centre(sweep.image_to_world, sweep.frame_shape,
                                                               sweep.pixel_spacing))
    image = in_plane_from_images(sweep)
    t_sum, i_sum = tracked[:, :2].sum(0), image[:, :2].sum(0)
    disagreement = float(np.linalg.norm(t_sum - i_sum))
    path = float(np.abs(tracked[:, 2]).sum())
    mixed = tracked.copy()
    mixed[:, 0:2], mixed[:, 5] = image[:, 0:2], image[:, 2]
    poses = common.absolute_from_centre(geometry.params_to_matrix(mixed), sweep.frame_shape, sweep.pixel_spacing,
                                        sweep.image_to_world[0])
    floor = metrics.final_drift_rate_length_pct(sweep.image_to_world, poses, sweep.frame_shape, sweep.pixel_spacing)
    angle = float(np.degrees(np.arctan2(disagreement, path)))
    return {
        "tracked_in_plane_mm": [round(float(v), 3) for v in t_sum],
        "image_in_plane_mm": [round(float(v), 3) for v in i_sum],
        "disagreement_mm": round(disagreement, 3),
        "elevational_path_mm": round(path, 3),
        "angle_deg": round(angle, 2),
        "rms_per_frame_mm": round(float(np.sqrt(((tracked[:, :2] - image[:, :2]) ** 2).sum(1).mean())), 4),
        "in_plane_floor_fdr_pct": round(floor, 2) if math.isfinite(floor) else None,
        "consistent": bool(angle <= MAX_ANGLE_DEG or disagreement < MIN_DISAGREEMENT_MM),
    }


def describe(check: dict[str, Any], name: str = "The sweep") -> str | None:
    """A warning for an inconsistent check (None when consistent)."""
    if check["consistent"]:
        return None
    t, i = check["tracked_in_plane_mm"], check["image_in_plane_mm"]
    floor = ("" if check["in_plane_floor_fdr_pct"] is None else
             " Against these poses a method that reads in-plane motion from the images drifts at least "
             f"{check['in_plane_floor_fdr_pct']} % even if it reads every other motion exactly.")
    return (f"{name}'s tracked poses move the image {t[0]:+.1f} mm laterally and {t[1]:+.1f} mm axially over "
            f"{check['elevational_path_mm']:.1f} mm of elevational travel, but its images show {i[0]:+.1f} and "
            f"{i[1]:+.1f} mm: {check['disagreement_mm']:.1f} mm the images do not show, as if the image-to-probe "
            f"calibration were rotated by about {check['angle_deg']:.0f} degrees. Check the calibration "
            "(--plus-config / --calibration; in Slicer the transform above the images), the image-to-tracker time "
            "offset and that the marker is fixed on the probe, and scan with light pressure (tissue that moves with "
            "the probe does the same; structures oblique to the image plane, such as a calibration phantom's wires, "
            "can mislead the images' reading)." + floor)


def tracking_warnings(sweep: Sweep, name: str = "The sweep") -> list[str]:
    """:func:`describe` of :func:`check_tracking` as a list (empty when consistent)."""
    msg = describe(check_tracking(sweep), name)
    return [msg] if msg else []
