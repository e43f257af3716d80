"""Hole filling: voxels no pixel reached (coverage 0) get values from their filled neighbours."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .holes_numpy import CLASS_STARTS, SQUARED_LENGTHS, STICKS

_CLASS_START = CLASS_STARTS[:3]  # STICKS is grouped by squared direction length 1, 2, 3


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


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the non-zero entries (numpy's is ~3x faster than torch's on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(1)


def _pair(buf: torch.Tensor, start0: int, start1: int, length: int) -> torch.Tensor:
    """``[2, length]`` view of the flat ``buf``: rows at ``start0`` and ``start1 >= start0``."""
    return buf.as_strided((2, length), (start1 - start0, 1), start0)


def _distances_both_ways(dist2: torch.Tensor, step2: torch.Tensor, fb: torch.Tensor, row: int, offset: int,
                         unit: int, steps: int, tmp2: torch.Tensor) -> None:
    """``unit`` x steps to the first filled voxel along ``+offset`` (into row ``row`` of the flat ``[rows, n]``
    ``fb``) and along ``-offset`` (into its last row), exact up to ``steps``.

    ``dist2``: twice the flat volume's ``dist0`` (0 at filled voxels, ``inf * unit`` elsewhere) end to end,
    ``step2`` the same plus ``unit``; ``tmp2``: ``2 n`` scratch. Pointer doubling: after the pass with step s,
    ``out[i] = min_k dist0[i + k * offset] + k * unit`` over ``k < 2s``; reads past the ends count as unfilled.
    Both directions go through each torch call as the two rows of one strided view.
    """
    n = dist2.numel() // 2
    f0, b0 = row * n, fb.numel() - n  # forward row, backward row
    s = 1
    while True:
        sh = abs(s * offset)
        length = n - sh
        if length <= 0:  # every step lands past the ends (a tiny volume)
            if s == 1:
                fb[f0:f0 + n], fb[b0:b0 + n] = dist2[:n], dist2[:n]
            return
        # rows written at [0, length) and read at [sh, n) when they look ahead, the other way round otherwise
        wf, rf, wb, rb = (0, sh, sh, 0) if offset > 0 else (sh, 0, 0, sh)
        out = _pair(fb, f0 + wf, b0 + wb, length)
        if s == 1:
            torch.minimum(_pair(dist2, wf, n + wb, length), _pair(step2, rf, n + rb, length), out=out)
            # the ends no step reaches from inside keep dist0
            for start, w in ((f0, wf), (b0, wb)):
                lo, hi = (length, n) if w == 0 else (0, sh)
                fb[start + lo:start + hi] = dist2[lo:hi]
        else:
            tmp = _pair(tmp2, 0, n, length)
            torch.add(_pair(fb, f0 + rf, b0 + rb, length), s * unit, out=tmp)
            torch.minimum(out, tmp, out=out)
        if 2 * s - 1 >= steps:
            return
        s *= 2


def _interpolate(volp: torch.Tensor, c: torch.Tensor, d: torch.Tensor, f: torch.Tensor, t: torch.Tensor,
                 offs: torch.Tensor, w_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (voxel ``c``, direction ``d``) pair: stick weight ``w`` and ``w * value`` (float64, IGSIO's order).

    ``c``, ``d``, ``f``, ``t``, ``offs``: one integer dtype; ``f``/``t``: steps to the forward filled voxel /
    between the two filled voxels. IGSIO's interpolation weights: (rvs+1)/L for the forward value, fwd/L for
    the backward one, with L = t + 1.
    """
    off = offs.index_select(0, d)
    rvs = t - f
    fv = volp.index_select(0, off.mul(f).add_(c)).to(torch.float64)
    rv = volp.index_select(0, off.mul_(rvs).neg_().add_(c)).to(torch.float64)
    w = w_table.view(-1).index_select(0, d * w_table.shape[1] + t)
    # in place, same float64 operations as w * (f * rv + (rvs + 1) * fv) / (t + 1)
    fv.mul_(rvs.add_(1))
    return w, rv.mul_(f).add_(fv).mul_(w).div_(t.add(1))


def _fill_one_stick(volp: torch.Tensor, dist0: torch.Tensor, cand: torch.Tensor, klo: torch.Tensor,
                    khi: torch.Tensor, fwd_all: torch.Tensor, reach: int, offs: torch.Tensor,
                    w_table: torch.Tensor) -> torch.Tensor:
    """Values (float64) of the holes ``cand`` from their shortest stick(s).

    ``klo``/``khi`` ``[3, n]``: per direction class, lowest ``8 * tot + j`` / ``8 * tot - j`` (uint8);
    ``fwd_all`` ``[13, n]``: 8 x forward steps; ``dist0``: 0 at filled voxels.
    """
    # No comparisons or where() on these M-long arrays: torch's are slow on CPU for small integers.
    n, m = klo.shape[1], cand.numel()
    idt = offs.dtype  # int32 where the flat indices fit
    cand = cand.to(idt)
    kl = torch.empty((3, m), dtype=klo.dtype, device=cand.device)
    for c in range(3):
        torch.index_select(klo[c], 0, cand, out=kl[c])
    # per class and key: (squared length, invalid ones above any valid; class's first direction; key),
    # packed so that the minimum over the classes picks the shortest stick; squared lengths of different
    # classes never tie (sqrt 2, sqrt 3 are irrational)
    k = torch.arange(256, dtype=torch.int32, device=cand.device)
    ln = (k >> 3) + 1
    table = torch.cat([((torch.where(ln <= reach + 1, ln * ln * (c + 1), 4 * (reach + 2) ** 2) * 16 + _CLASS_START[c])
                        * 256 + k) for c in range(3)])
    k32 = kl.to(torch.int32).add_(torch.tensor([[0], [256], [512]], dtype=torch.int32, device=cand.device))
    score = table.index_select(0, k32.view(-1)).view(3, m)
    best = torch.minimum(torch.minimum(score[0], score[1]), score[2])
    key = best & 255
    start = (best >> 8) & 15
    d = start.add(key & 7).to(idt)
    cls = ((start + 1) >> 2).to(idt)  # class 0, 1, 2 from its first direction 0, 3, 9
    hi = khi.view(-1).index_select(0, cls * n + cand)
    f = (fwd_all.view(-1).index_select(0, d * n + cand) >> 3).to(idt)
    t = (key >> 3).to(idt)
    w, wv = _interpolate(volp, cand, d, f, t, offs, w_table)
    res = wv.add_(0.0).div_(w)  # as summing the single stick into zeros and dividing
    # lo + hi = 16 tot + j_first - j_last (mod 256): not 0 mod 16 where two or more sticks tie
    tie = _nonzero(hi.add_(key.to(torch.uint8)).bitwise_and_(15).clamp_(max=1).view(torch.bool))
    if tie.numel():
        res[tie] = _fill_tied(volp, dist0, cand[tie], t[tie], cls[tie], fwd_all, offs, w_table)
    return res


def _fill_tied(volp: torch.Tensor, dist0: torch.Tensor, cand: torch.Tensor, t: torch.Tensor, cls: torch.Tensor,
               fwd_all: torch.Tensor, offs: torch.Tensor, w_table: torch.Tensor) -> torch.Tensor:
    """Values (float64) of the holes ``cand`` whose shortest stick (``t`` steps, class ``cls``) ties.

    Direction ``d`` of that class makes such a stick iff its forward end is ``f < t`` steps away and the
    voxel ``t - f`` steps backwards is filled (none is nearer: ``t`` is the class minimum). ``fwd_all``
    ``[13, n]``: 8 x forward steps; ``dist0``: 0 at filled voxels.
    """
    dev = cand.device
    n, nd = fwd_all.shape[1], len(STICKS)
    dirs = torch.arange(nd, dtype=cand.dtype, device=dev)[:, None]
    f = (fwd_all.view(-1).index_select(0, (dirs * n + cand).view(-1)).view(nd, -1) >> 3).to(cand.dtype)
    rvs = (t - f).clamp_(0, 15)  # 0: no stick (the fast path has reach <= 15)
    back = cand - rvs * offs[:, None]
    rvs.masked_fill_((back < 0) | (back >= n), 0)  # past the array's ends: not filled
    back.clamp_(0, n - 1)
    sq = torch.tensor(SQUARED_LENGTHS, device=dev)[:, None]
    used = (sq == cls + 1) & (rvs >= 1) & (dist0.index_select(0, back.view(-1)).view(nd, -1) == 0)
    d_i, m_i = torch.nonzero(used, as_tuple=True)  # direction order: IGSIO's summation order
    w, wv = _interpolate(volp, cand[m_i], d_i.to(cand.dtype), f[d_i, m_i], t[m_i], offs, w_table)
    num = torch.zeros(cand.numel(), dtype=torch.float64, device=dev).index_add_(0, m_i, wv)
    return num / torch.zeros_like(num).index_add_(0, m_i, w)


def _fill_ranked(volp: torch.Tensor, cand: torch.Tensor, fwd_all: torch.Tensor, tot_c: torch.Tensor, reach: int,
                 sticks: int, offs: torch.Tensor, w_table: torch.Tensor) -> torch.Tensor:
    """Values (float64) of the holes ``cand`` from their ``sticks`` shortest sticks, ties included.

    ``fwd_all`` ``[13, n]``: forward steps per direction and voxel; ``tot_c`` ``[13, M]``: steps between the
    two ends per direction and hole.
    """
    dev = volp.device
    nd = len(STICKS)
    score_dtype = torch.uint8 if 3 * (reach + 1) ** 2 < 255 else torch.int32  # squared lengths must fit
    big = torch.iinfo(score_dtype).max
    sq = torch.tensor(SQUARED_LENGTHS, dtype=score_dtype, device=dev)
    valid = tot_c <= reach
    ln_c = torch.where(valid, tot_c + 1, 0).to(score_dtype)
    # squared stick length; ties are exact integers
    score = torch.where(valid, ln_c * ln_c * sq.view(nd, 1), big)
    if sticks > 1:  # the k-th shortest squared length, ties included (IGSIO takes whole tie groups)
        kth = torch.kthvalue(score, min(int(sticks), nd), dim=0).values
    else:
        kth = score.amin(0)
    # every (direction, candidate) pair whose stick is used, in direction order (IGSIO's summation order)
    d_i, m_i = torch.nonzero((score <= kth) & valid, as_tuple=True)
    idt = cand.dtype
    d_i, c = d_i.to(idt), cand[m_i]
    f = fwd_all.view(-1).index_select(0, d_i * fwd_all.shape[1] + c).to(idt)
    w, wv = _interpolate(volp, c, d_i, f, tot_c[d_i, m_i].to(idt), offs, w_table)
    num = torch.zeros(cand.numel(), dtype=torch.float64, device=dev)
    den = torch.zeros_like(num)
    num.index_add_(0, m_i, wv)
    den.index_add_(0, m_i, w)
    return num / den


def fill_sticks(volume: torch.Tensor, filled: torch.Tensor, length: int = 9, sticks: int = 1,
                truncate: bool = False) -> tuple[torch.Tensor, int]:
    """IGSIO's stick hole filling, vectorised over the whole volume.

    For each hole and each of 13 directions, the nearest filled voxels forwards (within ``length - 1``
    steps) and backwards (within the rest of the stick) are linearly interpolated; the ``sticks`` shortest
    sticks (ties included) are averaged, weighted by 1 / length. ``truncate`` casts like IGSIO's integer
    output. Returns the filled volume ``[nz, ny, nx]`` and the number of voxels filled.
    """
    reach = int(length) - 1
    steps = reach - 1  # both filled ends are >= 1 step away and together <= reach steps
    if steps < 1:
        return volume.clone(), 0
    nz, ny, nx = volume.shape
    dev = volume.device
    # Padding: `steps` unfilled voxels after each row and `steps` rows after each plane. A line leaving the
    # volume sideways lands in padding (off one side of a row: the previous row's padding) and one leaving
    # through the first or last plane lands in padding or past the array's ends, which count as unfilled.
    p = steps
    px, py, pz = nx + p, ny + p, nz
    n = pz * py * px
    inner = (slice(0, nz), slice(0, ny), slice(0, nx))
    # Fast path (one stick): distances in units of 8 so that 8 * (fwd + bwd) + direction-in-class packs
    # into one uint8 whose minimum picks the shortest stick of each direction class.
    fast = int(sticks) == 1 and 16 * reach + 7 <= 255
    unit = 8 if fast else 1
    inf = reach  # a distance >= reach never makes a stick (the other end is >= 1 step away)
    top = 2 * inf * unit + unit
    ddt = torch.uint8 if top <= 255 else torch.int16 if top <= 32767 else torch.int32
    dist0 = torch.full((pz, py, px), inf * unit, dtype=ddt, device=dev)
    dist0[inner] = torch.logical_not(filled).to(ddt).mul_(inf * unit)
    dist0 = dist0.view(-1)
    dist2 = torch.cat([dist0, dist0])
    step2 = dist2 + unit
    tmp, tmp2 = torch.empty_like(dist0), torch.empty_like(dist2)
    nd = len(STICKS)
    fb = torch.empty((nd + 1) * n, dtype=ddt, device=dev)  # forward distances per direction, then backward
    fwd_all, bwd = fb[: nd * n].view(nd, n), fb[nd * n:]
    offsets = [dx + dy * px + dz * px * py for dx, dy, dz in STICKS]
    # flat indices as int32 where they fit (direction * n + voxel, voxel +- 15 offsets < 32 n): less traffic
    offs = torch.tensor(offsets, dtype=torch.int32 if 32 * n < 2**31 else torch.int64, device=dev)
    sq = list(SQUARED_LENGTHS)
    lens = torch.arange(1, reach + 2, dtype=torch.float64, device=dev)
    # stick weight 1 / (length in voxels * direction length), looked up per (direction, steps)
    w_table = 1.0 / (lens[None, :] * torch.sqrt(torch.tensor(sq, dtype=torch.float64, device=dev))[:, None])
    if fast:
        # per class of equal direction length: lowest 8*tot + j (shortest, then first direction j) and
        # lowest 8*tot - j (shortest, then last direction): their j differ exactly where sticks tie
        klo = torch.empty((3, n), dtype=ddt, device=dev)
        khi = torch.empty_like(klo)
    else:
        tot_all = torch.empty_like(fwd_all)
    for d, off in enumerate(offsets):
        fwd = fwd_all[d]
        _distances_both_ways(dist2, step2, fb, d, off, unit, steps, tmp2)
        if not fast:
            torch.add(fwd, bwd, out=tot_all[d])
            continue
        c, j = sq[d] - 1, d - _CLASS_START[sq[d] - 1]
        if j == 0:
            torch.add(fwd, bwd, out=klo[c])
            continue
        torch.add(fwd, bwd, out=tmp)
        tmp.sub_(j)  # holes have tot >= 2: no wrap-around
        torch.minimum(klo[c] if j == 1 else khi[c], tmp, out=khi[c])  # for j = 1, klo still holds j = 0's
        tmp.add_(2 * j)
        torch.minimum(klo[c], tmp, out=klo[c])
    limit = (reach + 1) * unit  # 8 * tot + j < limit <=> tot <= reach
    if fast:
        torch.minimum(klo[0], klo[1], out=tmp)
        torch.minimum(tmp, klo[2], out=tmp)
    else:
        tmp = tot_all.amin(0)
    # candidates: holes (tmp >= 2 unit; filled voxels have 0) inside the volume with a stick (tmp < limit);
    # in arithmetic, as torch's comparisons of uint8 are slow on CPU
    tmp.clamp_(max=limit)
    t3 = tmp.view(pz, py, px)
    t3[:, ny:], t3[:, :, nx:] = limit, limit
    ok = torch.clamp(tmp, max=1).mul_(tmp.neg_().add_(limit).clamp_(max=1))
    cand = _nonzero(ok.view(torch.bool) if ok.dtype == torch.uint8 else ok)
    if cand.numel() == 0:
        return volume.clone(), 0
    volp = torch.empty(n, dtype=torch.float32, device=dev)
    volp.view(pz, py, px)[inner] = volume
    if fast:
        res = _fill_one_stick(volp, dist0, cand, klo, khi, fwd_all, reach, offs, w_table)
    else:
        cand = cand.to(offs.dtype)
        tot_c = torch.empty((nd, cand.numel()), dtype=ddt, device=dev)
        for i in range(nd):  # row by row: much faster than one index_select along dim 1
            torch.index_select(tot_all[i], 0, cand, out=tot_c[i])
        res = _fill_ranked(volp, cand, fwd_all, tot_c, reach, int(sticks), offs, w_table)
    if truncate:
        res = torch.trunc(res)
    volp.index_copy_(0, cand.to(torch.int64), res.to(torch.float32))
    out = volp.view(pz, py, px)[inner].contiguous()
    return out, int(cand.numel())
