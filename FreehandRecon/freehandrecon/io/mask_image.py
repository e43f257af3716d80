"""Read a 2D per-pixel weight image (importance mask) from .png, .npy or MetaImage files."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .common import existing_file


def read_mask_image(path: str | os.PathLike) -> np.ndarray:
    """Return the first channel of a 2D image as ``[H, W]`` with row 0 at the top of the image."""
    p = existing_file(path, "mask image")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p)
    elif suffix in (".mha", ".mhd"):
        from .metaimage import read_metaimage

        arr = read_metaimage(p).array
    elif suffix == ".png":
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkIOImage import vtkPNGReader

        reader = vtkPNGReader()
        reader.SetFileName(str(p))
        reader.Update()
        img = reader.GetOutput()
        w, h, _ = img.GetDimensions()
        if w * h == 0:
            raise InputError(f"'{p}' could not be read as a PNG image.", "Check that the file is a valid PNG.")
        arr = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, 0]  # VTK rows go bottom-up
    else:
        raise InputError(f"Unsupported mask image format '{p.suffix}'.", "Use a .png, .npy or .mha image.")
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise InputError(f"The mask image '{p.name}' has shape {arr.shape}; a 2D image is needed.",
                         "Give one grey image with the frame size.")
    return np.ascontiguousarray(arr)
