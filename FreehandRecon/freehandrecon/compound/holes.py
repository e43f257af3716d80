"""Hole filling: voxels no pixel reached (coverage 0) get values from their filled neighbours."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# IGSIO's 13 stick directions (each also searched backwards): axes, face and space diagonals.
STICKS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, -1, 0), (1, 0, -1), (0, 1, -1),
          (1, 1, 1), (-1, 1, 1), (1, -1, 1), (-1, -1, 1))
_INF = 100  # "no filled voxel" distance; stays below 255 after the doubling additions


def fill_normalized(volume: torch.Tensor, coverage: torch.Tensor, size: int = 3) -> tuple[torch.Tensor, int]:
    """Normalised convolution: holes get ``box(volume*coverage) / box(coverage)`` over a ``size``^3 box.

    ``volume``/``coverage`` are ``[nz, ny, nx]`` float32; returns the filled volume and the filled count.
    """
    k = int(size) | 1  # odd, so the box is centred
    hole = coverage <= 0
    s = F.avg_pool3d((volume * coverage)[None, None], k, stride=1, padding=k // 2, count_include_pad=True)[0, 0]
    w = F.avg_pool3d(coverage[None, None], k, stride=1, padding=k // 2, count_include_pad=True)[0, 0]
    fill = hole & (w > 0)
    out = torch.where(fill, s / torch.where(w > 0, w, torch.ones_like(w)), volume)
    return out, int(fill.sum())


def _distance_along(dist0: torch.Tensor, offset: int, reach: int, tmp: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Steps from each voxel to the first filled voxel along ``offset`` (flat), for steps 0..>=reach.

    Pointer doubling on uint8: after the pass with step s the array holds the answer within 2s steps.
    """
    d = torch.empty_like(dist0) if out is None else out
    n = d.numel()
    sh = abs(offset)
    # first step (s = 1) straight from dist0, which saves a full copy
    if offset > 0:
        torch.add(dist0[sh:], 1, out=tmp[: n - sh])
        torch.minimum(dist0[: n - sh], tmp[: n - sh], out=d[: n - sh])
        d[n - sh:] = dist0[n - sh:]
    else:
        torch.add(dist0[: n - sh], 1, out=tmp[sh:])
        torch.minimum(dist0[sh:], tmp[sh:], out=d[sh:])
        d[:sh] = dist0[:sh]
    s = 2
    while s <= reach:
        sh = s * offset
        if sh > 0:
            torch.add(d[sh:], s, out=tmp[: n - sh])
            torch.minimum(d[: n - sh], tmp[: n - sh], out=d[: n - sh])
        else:
            sh = -sh
            torch.add(d[: n - sh], s, out=tmp[sh:])
            torch.minimum(d[sh:], tmp[sh:], out=d[sh:])
        s *= 2
    return d


def fill_sticks(volume: torch.Tensor, filled: torch.Tensor, length: int = 9, sticks: int = 1,
                truncate: bool = False) -> tuple[torch.Tensor, int]:
    """IGSIO's stick hole filling, vectorised over the whole volume.

    For each hole and each of 13 directions, the nearest filled voxels forwards (within ``length - 1``
    steps) and backwards (within the rest of the stick) are linearly interpolated; the ``sticks`` shortest
    sticks (ties included) are averaged, weighted by 1 / length. ``truncate`` casts like IGSIO's integer
    output. Returns the filled volume ``[nz, ny, nx]`` and the number of voxels filled.
    """
    reach = int(length) - 1
    if reach < 1:
        return volume.clone(), 0
    nz, ny, nx = volume.shape
    p = reach
    dev = volume.device
    pz, py, px = nz + 2 * p, ny + 2 * p, nx + 2 * p
    dist0 = torch.full((pz, py, px), _INF, dtype=torch.uint8, device=dev)
    dist0[p:p + nz, p:p + ny, p:p + nx].masked_fill_(filled, 0)
    dist0 = dist0.view(-1)
    vol = torch.zeros((pz, py, px), dtype=torch.float32, device=dev)
    vol[p:p + nz, p:p + ny, p:p + nx] = volume
    vol = vol.view(-1)
    hole = torch.zeros((pz, py, px), dtype=torch.bool, device=dev)
    hole[p:p + nz, p:p + ny, p:p + nx] = ~filled
    hole = hole.view(-1)
    tmp = torch.empty_like(dist0)
    nd = len(STICKS)
    score_dtype = torch.uint8 if 3 * (reach + 1) ** 2 < 255 else torch.int32  # squared lengths must fit
    big = torch.iinfo(score_dtype).max
    fwd_all = torch.empty((nd, dist0.numel()), dtype=torch.uint8, device=dev)
    tot_all = torch.empty_like(fwd_all)
    for s_i, (dx, dy, dz) in enumerate(STICKS):
        off = dx + dy * px + dz * px * py
        _distance_along(dist0, off, reach, tmp, out=fwd_all[s_i])
        _distance_along(dist0, -off, reach, tmp, out=tot_all[s_i])
        tot_all[s_i].add_(fwd_all[s_i])
    # a hole is filled when some stick fits within the length (stick score < big below)
    cand = torch.nonzero(hole & (tot_all.amin(0) <= reach)).squeeze(1)
    if cand.numel() == 0:
        return volume.clone(), 0
    tot_c = torch.empty((nd, cand.numel()), dtype=torch.uint8, device=dev)  # [13, M]
    for s_i in range(nd):  # row by row: much faster than one index_select along dim 1
        torch.index_select(tot_all[s_i], 0, cand, out=tot_c[s_i])
    sq = torch.tensor([dx * dx + dy * dy + dz * dz for dx, dy, dz in STICKS], dtype=score_dtype, device=dev)
    ln_c = tot_c.to(score_dtype) + 1
    # squared stick length; ties are exact integers
    score = torch.where(tot_c <= reach, ln_c * ln_c * sq.view(nd, 1), big)
    if sticks > 1:  # the k-th shortest squared length, ties included (IGSIO takes whole tie groups)
        kth = torch.kthvalue(score, min(int(sticks), nd), dim=0).values
    else:
        kth = score.amin(0)
    # every (direction, candidate) pair whose stick is used, in direction order (IGSIO's summation order)
    d_i, m_i = torch.nonzero((score <= kth) & (score < big), as_tuple=True)
    itype = torch.int32 if 2 * dist0.numel() < 2**31 else torch.int64
    offs = torch.tensor([dx + dy * px + dz * px * py for dx, dy, dz in STICKS], dtype=itype, device=dev)
    off = offs[d_i]
    c = cand.to(itype)[m_i]
    f = fwd_all.view(-1)[d_i.to(itype) * fwd_all.shape[1] + c].to(itype)
    t = tot_c[d_i, m_i].to(itype)
    r = t - f
    fv = vol[c + f * off].to(torch.float64)
    rv = vol[c - r * off].to(torch.float64)
    ln = (t + 1).to(torch.float64)
    # stick weight 1 / (length in voxels * direction length), looked up per (direction, steps)
    lens = torch.arange(1, reach + 2, dtype=torch.float64, device=dev)
    w_table = 1.0 / (lens[None, :] * torch.sqrt(sq.to(torch.float64))[:, None])
    w = w_table.view(-1)[d_i.to(itype) * (reach + 1) + t]
    num = torch.zeros(cand.numel(), dtype=torch.float64, device=dev)
    den = torch.zeros_like(num)
    # IGSIO's interpolation weights: (rvs+1)/L for the forward value, fwd/L for the backward one
    num.index_add_(0, m_i, w * (f * rv + (r + 1) * fv) / ln)
    den.index_add_(0, m_i, w)
    res = num / den
    if truncate:
        res = torch.trunc(res)
    vol[cand] = res.to(torch.float32)
    out = vol.view(pz, py, px)[p:p + nz, p:p + ny, p:p + nx].contiguous()
    return out, int(cand.numel())
