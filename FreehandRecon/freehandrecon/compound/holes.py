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


def _distance_along(dist0: torch.Tensor, offset: int, reach: int, tmp: torch.Tensor) -> torch.Tensor:
    """Steps from each voxel to the first filled voxel along ``offset`` (flat), for steps 0..>=reach.

    Pointer doubling on uint8: after the pass with step s the array holds the answer within 2s steps.
    """
    d = dist0.clone()
    n = d.numel()
    s = 1
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
    big = torch.iinfo(torch.int16).max
    fwd_all, tot_all = [], []
    class_min: dict[int, torch.Tensor] = {}  # per squared direction length: shortest stick (steps)
    for dx, dy, dz in STICKS:
        off = dx + dy * px + dz * px * py
        fwd = _distance_along(dist0, off, reach, tmp)
        tot = fwd + _distance_along(dist0, -off, reach, tmp)
        k = dx * dx + dy * dy + dz * dz
        if k in class_min:
            torch.minimum(class_min[k], tot, out=class_min[k])
        else:
            class_min[k] = tot.clone()
        fwd_all.append(fwd)
        tot_all.append(tot)

    def score(t: torch.Tensor, k: int) -> torch.Tensor:  # squared stick length; ties are exact integers
        ln = t.to(torch.int16) + 1
        return torch.where(t <= reach, ln * ln * k, big)

    best = torch.stack([score(t, k) for k, t in class_min.items()]).min(0).values
    cand = torch.nonzero((best < big) & hole).squeeze(1)
    if cand.numel() == 0:
        return volume.clone(), 0
    best_c = best[cand]
    sq = [dx * dx + dy * dy + dz * dz for dx, dy, dz in STICKS]
    if sticks > 1:  # the k-th shortest squared length, ties included (IGSIO takes whole tie groups)
        kth = torch.kthvalue(torch.stack([score(t[cand], k) for t, k in zip(tot_all, sq)]),
                             min(int(sticks), len(STICKS)), dim=0).values
    else:
        kth = best_c
    num = torch.zeros(cand.numel(), dtype=torch.float64, device=dev)
    den = torch.zeros_like(num)
    for s_i, (dx, dy, dz) in enumerate(STICKS):
        tc = tot_all[s_i][cand]
        sc = score(tc, sq[s_i])
        use = torch.nonzero((sc <= kth) & (sc < big)).squeeze(1)
        if use.numel() == 0:
            continue
        c = cand[use]
        off = dx + dy * px + dz * px * py
        f = fwd_all[s_i][c].to(torch.int64)
        t = tc[use].to(torch.int64)
        r = t - f
        fv = vol[c + f * off].to(torch.float64)
        rv = vol[c - r * off].to(torch.float64)
        ln = (t + 1).to(torch.float64)
        w = 1.0 / (ln * math.sqrt(sq[s_i]))
        # IGSIO's interpolation weights: (rvs+1)/L for the forward value, fwd/L for the backward one
        num.index_add_(0, use, w * (f * rv + (r + 1) * fv) / ln)
        den.index_add_(0, use, w)
    res = num / den
    if truncate:
        res = torch.trunc(res)
    vol[cand] = res.to(torch.float32)
    out = vol.view(pz, py, px)[p:p + nz, p:p + ny, p:p + nx].contiguous()
    return out, int(cand.numel())
