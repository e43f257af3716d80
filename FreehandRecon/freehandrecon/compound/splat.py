"""Scatter kernels: paste chunks of frames into flat voxel accumulators (vectorised torch, CPU or CUDA).

Pixel positions are computed in 14-bit fixed point, exactly as IGSIO does: voxel coordinates are affine
in the pixel (i, j), so a chunk's coordinates are one broadcast sum of a per-row and a per-column term
in int32. Invalid pixels (outside the grid or the masks) are sent to a trash slot past the volume
instead of being compacted, which keeps every step a dense elementwise op.
"""

from __future__ import annotations

import numpy as np
import torch

from .fixedpoint import (FRAC_BITS, HALF, MIN_WEIGHT_RAW, ONE, all_inside, coordinate_terms, fixed_matrices,
                         term_bounds)

__all__ = ["FRAC_BITS", "ONE", "HALF", "MIN_WEIGHT_RAW", "fixed_matrices", "chunk_coords",
           "nearest_indices", "linear_corners", "SequentialMean"]


def chunk_coords(fixed: np.ndarray, rect: tuple[int, int, int, int], dims: tuple[int, int, int],
                 device: torch.device, nearest: bool) -> tuple[torch.Tensor, bool]:
    """Raw fixed-point coordinates ``[n, 3, Hc, Wc]`` (rounding offset folded in for nearest) and whether
    every pixel of the chunk lands inside the grid (so bounds checks can be skipped)."""
    row_term, col_term = coordinate_terms(fixed, rect, nearest)
    lo, hi = term_bounds(row_term, col_term)
    big = max(abs(int(lo.min())), abs(int(hi.max())))
    dtype = torch.int32 if big < 2**30 else torch.int64
    inside = all_inside(lo, hi, dims, nearest)
    r = torch.from_numpy(row_term).to(device=device, dtype=dtype)
    c = torch.from_numpy(col_term).to(device=device, dtype=dtype)
    return r[:, :, :, None] + c[:, :, None, :], inside


def nearest_indices(coords: torch.Tensor, dims: tuple[int, int, int], check_bounds: bool,
                    valid: torch.Tensor | None, trash: int) -> torch.Tensor:
    """Flat voxel index ``[n, Hc, Wc]`` of each pixel's nearest voxel (``trash`` where invalid)."""
    nx, ny, nz = dims
    idx = coords.bitwise_right_shift_(FRAC_BITS)
    xi, yi, zi = idx[:, 0], idx[:, 1], idx[:, 2]
    if check_bounds:
        ok = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny) & (zi >= 0) & (zi < nz)
        valid = ok if valid is None else valid & ok
    flat = zi.mul(nx * ny)
    flat.add_(yi, alpha=nx).add_(xi)
    if valid is not None:
        flat = torch.where(valid, flat, torch.full((), trash, dtype=flat.dtype, device=flat.device))
    return flat


def linear_corners(coords: torch.Tensor, dims: tuple[int, int, int], check_bounds: bool,
                   valid: torch.Tensor | None, trash: int, fixed_weights: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``[8, n, Hc, Wc]`` of the 8 voxels around each pixel and their trilinear weights
    (float32, or raw 14-bit fixed-point ints with IGSIO's rounding when ``fixed_weights``).

    A pixel is used only when all its corners are inside the grid (IGSIO's rule)."""
    nx, ny, nz = dims
    base = coords.bitwise_right_shift(FRAC_BITS)
    frac = coords.bitwise_and_(ONE - 1)
    if check_bounds:
        lim = torch.tensor([nx - 1, ny - 1, nz - 1], device=coords.device, dtype=coords.dtype).view(1, 3, 1, 1)
        ok = ((base >= 0) & ((base + (frac > 0).to(base.dtype)) <= lim)).all(dim=1)
        valid = ok if valid is None else valid & ok
    flat = base[:, 2].mul(nx * ny)
    flat.add_(base[:, 1], alpha=nx).add_(base[:, 0])
    if valid is not None:
        flat = torch.where(valid, flat, torch.full((), trash, dtype=flat.dtype, device=flat.device))
    offsets = torch.tensor([0, 1, nx, nx + 1, nx * ny, nx * ny + 1, nx * ny + nx, nx * ny + nx + 1],
                           device=coords.device, dtype=flat.dtype)
    index = flat[None] + offsets.view(8, 1, 1, 1)
    if fixed_weights:
        f = frac.to(torch.int64)
        r = ONE - f
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        rx, ry, rz = r[:, 0], r[:, 1], r[:, 2]

        def fm(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # IGSIO fixed::fast_multiply
            return (p * q + HALF) >> FRAC_BITS

        yz = [fm(ry, rz), fm(ry, fz), fm(fy, rz), fm(fy, fz)]
        w = torch.stack([fm(rx, yz[0]), fm(fx, yz[0]), fm(rx, yz[2]), fm(fx, yz[2]),
                         fm(rx, yz[1]), fm(fx, yz[1]), fm(rx, yz[3]), fm(fx, yz[3])])
    else:
        f = frac.to(torch.float32).mul_(1.0 / ONE)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        rx, ry, rz = 1 - fx, 1 - fy, 1 - fz
        yz = [ry * rz, ry * fz, fy * rz, fy * fz]
        w = torch.stack([rx * yz[0], fx * yz[0], rx * yz[2], fx * yz[2],
                         rx * yz[1], fx * yz[1], rx * yz[3], fx * yz[3]])
    if valid is not None:
        w = w * valid[None].to(w.dtype)
    return index, w


class SequentialMean:
    """IGSIO's running mean, reproduced per voxel in insertion order (``plus_arithmetic``).

    IGSIO updates ``out = (w*in + acc*out) / (w + acc)`` one pixel at a time and stores ``out`` in the
    input pixel type, so every insertion is rounded (truncated for nearest). Samples of a chunk are
    grouped by voxel with a stable sort; the k-th samples of all voxels are then applied together,
    so the Python loop runs once per insertion depth, not per pixel.
    """

    def __init__(self, length: int, device: torch.device, linear: bool, integer_output: bool) -> None:
        self.out = torch.zeros(length, dtype=torch.float64, device=device)
        self.acc = torch.zeros(length, dtype=torch.float64, device=device)  # IGSIO accumulation buffer units
        self.linear = linear
        self.integer = integer_output

    def _step(self, out: torch.Tensor, acc: torch.Tensor, v: torch.Tensor, w: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.linear:
            ok = acc <= 65279
            newa = acc + w
            mean = (v * w + out * acc) / newa
            recursive = v / 256.0 + out * (255.0 / 256.0)
            new = torch.where(ok, mean, recursive)
            if self.integer:
                new = torch.trunc(new)
            return new, torch.where(ok, torch.clamp(newa, max=65535), acc)
        r = acc * 64.0  # acc / 256 as raw fixed point
        a = w + r
        q = torch.round((w * v + r * out) / a * ONE)
        new = torch.floor((q + HALF) / ONE) if self.integer else q / ONE
        a256 = a * 256.0
        new_acc = torch.where(a256 < 65535.0 * ONE, torch.floor((a256 + HALF) / ONE), torch.full_like(a256, 65535.0))
        return new, new_acc

    def add(self, flat: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, trash: int) -> None:
        """Insert samples given in insertion order (``weights`` in accumulation units: 256 per pixel for
        nearest, raw fixed-point trilinear weights for linear)."""
        keep = (flat < trash) & (weights > 0)
        f, v, w = flat[keep].to(torch.int64), values[keep].to(torch.float64), weights[keep].to(torch.float64)
        if f.numel() == 0:
            return
        f, order = torch.sort(f, stable=True)
        v, w = v[order], w[order]
        uniq, counts = torch.unique_consecutive(f, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        counts, perm = torch.sort(counts, descending=True, stable=True)
        uniq, starts = uniq[perm], starts[perm]
        hist = torch.bincount(counts).cpu()
        active = (counts.numel() - torch.cumsum(hist, 0)).tolist()  # active[k] = groups with more than k samples
        out, acc = self.out[uniq], self.acc[uniq]
        for k in range(int(counts[0])):
            m = active[k]
            idx = starts[:m] + k
            out[:m], acc[:m] = self._step(out[:m], acc[:m], v[idx], w[idx])
        self.out[uniq] = out
        self.acc[uniq] = acc
