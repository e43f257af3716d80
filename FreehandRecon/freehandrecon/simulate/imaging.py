"""B-mode image formation by coherent (IQ) summation of point scatterers.

Per frame: pick the phantom buckets near the image plane, move their scatterers into the frame
(x lateral, y axial, z elevation), keep those within 3 elevation sigmas, weight each by the
elevation profile ``b(z)`` and give it the echo phase ``exp(i 2 k0 axial)``, splat it bilinearly
onto the beam grid (image pixels for a linear probe, (radius, angle) samples for a curvilinear
one), convolve with the separable axial x lateral Gaussian envelope, normalise so plain tissue has
unit mean intensity at every depth (ideal TGC), add complex electronic noise, take the envelope,
scan-convert (curvilinear), log-compress to the dynamic range with the gain, and quantise to uint8.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..sweep import Sweep
from . import beam
from .phantom import Phantom
from .sites import AcquisitionSettings

ELEVATION_CUTOFF = 3.0  # scatterers beyond this many elevation sigmas are ignored (b^2 < 1.2e-4)
TISSUE_LEVEL = 0.5      # plain tissue (0 dB) sits at this fraction of the display range at 0 dB gain


def _gauss_kernel(sigma_px: float) -> torch.Tensor:
    half = max(1, int(math.ceil(3.0 * sigma_px)))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return g / g.sum()


def _mean_square_gain(g: torch.Tensor) -> float:
    """Mean over sub-pixel positions of ``sum K^2`` for K = bilinear splat (*) g (1D)."""
    g = g.double()
    return float((2.0 / 3.0) * (g * g).sum() + (1.0 / 3.0) * (g[1:] * g[:-1]).sum())


class Imager:
    """Forms frames of one acquisition setting from one phantom.

    Call it inside ``torch_threads(1)`` (as :func:`simulate_sweep` does): the per-frame tensors
    are too small for torch's intra-op threads, which are several times slower on a busy CPU.
    """

    def __init__(self, settings: AcquisitionSettings, phantom: Phantom) -> None:
        s = self.settings = settings
        self.phantom = phantom
        self.h, self.w = s.image_size
        self.sx, self.sy = s.pixel_spacing
        self.k2 = 2.0 * beam.wavenumber_per_mm(s)
        self._w0, self._zr = beam.elevation_beam(s)
        lat_mm, ax_mm = beam.image_psf_sigma_mm(s)
        self.curved = s.probe == "curvilinear"
        if self.curved:
            self.radius = s.radius_mm
            self.half_angle = math.radians(s.sector_deg) / 2
            self.apex = np.array([(self.w - 1) * self.sx / 2, -self.radius])
            r_mid = self.radius + s.depth_mm / 2
            self.nv = self.h
            self.dv = s.depth_mm / self.h                      # radial sample spacing (mm)
            self.nu = int(math.ceil(2 * self.half_angle * r_mid / self.sx)) + 1
            self.du = 2 * self.half_angle / (self.nu - 1)      # angular sample spacing (rad)
            lat_px = lat_mm / (r_mid * self.du)  # a fixed angular width: lat_mm at mid-depth
            cell_area = self.dv * (self.radius + (torch.arange(self.nv) + 0.5) * self.dv) * self.du
        else:
            self.nv, self.nu, self.dv, self.du = self.h, self.w, self.sy, self.sx
            lat_px = lat_mm / self.sx
            cell_area = torch.full((self.nv,), self.sx * self.sy)
        ax_px = ax_mm / self.dv
        # the bilinear splat already blurs by sqrt(1/6) px: the Gaussian supplies the rest
        self.kv = _gauss_kernel(math.sqrt(max(ax_px ** 2 - beam.BILINEAR_SIGMA_PX ** 2, 0.09)))
        self.ku = _gauss_kernel(math.sqrt(max(lat_px ** 2 - beam.BILINEAR_SIGMA_PX ** 2, 0.09)))
        self.pad = max(self.kv.numel(), self.ku.numel()) // 2 + 1
        self.gv, self.gu = self.nv + 2 * self.pad, self.nu + 2 * self.pad
        # E|IQ|^2 of unit-echogenicity tissue per grid row; amplitudes carry 1/sqrt(density) already
        row_depth = (torch.arange(self.nv, dtype=torch.float64) + (0.5 if self.curved else 0.0)) * self.dv
        power = (cell_area.double() * math.sqrt(math.pi) * self._sigma_e(row_depth)
                 * _mean_square_gain(self.kv) * _mean_square_gain(self.ku))
        self.row_gain = (1.0 / torch.sqrt(power)).float()[:, None]
        self.noise_std = 10.0 ** (s.noise_db / 20.0)
        self.positions = phantom.positions
        self.magnitude, self.phase = phantom.magnitude, phantom.phase
        self._s2_focus = (0.5 * self._w0) ** 2
        self._s2_slope = self._s2_focus / self._zr ** 2
        self.bucket_size = torch.from_numpy(phantom.bucket_size.astype(np.float32))
        self.half_bucket = self.bucket_size / 2
        self.grid_t = torch.tensor(phantom.grid, dtype=torch.int64)
        depths = torch.linspace(0.0, s.depth_mm + self.pad * self.dv, 64, dtype=torch.float64)
        self.sigma_e_max = float(self._sigma_e(depths).max())
        self._fan_grid, self._fan_mask = self._scan_conversion() if self.curved else (None, None)
        # image-mm extent of the beam grid (padding included) for bucket culling
        if self.curved:
            r_out = self.radius + s.depth_mm + self.pad * self.dv
            self.x_range = (self.apex[0] - r_out * math.sin(self.half_angle) - self.pad * self.sx,
                            self.apex[0] + r_out * math.sin(self.half_angle) + self.pad * self.sx)
            self.y_range = (self.apex[1] + (self.radius - self.pad * self.dv) * math.cos(self.half_angle),
                            self.apex[1] + r_out)
        else:
            self.x_range = (-self.pad * self.sx, (self.w - 1 + self.pad) * self.sx)
            self.y_range = (-self.pad * self.sy, (self.h - 1 + self.pad) * self.sy)

    # --- beam ---------------------------------------------------------------------------------
    def _sigma_e(self, depth: torch.Tensor) -> torch.Tensor:
        return 0.5 * self._w0 * torch.sqrt(1.0 + ((depth - self.settings.elevation_focus_mm) / self._zr) ** 2)

    def _scan_conversion(self) -> tuple[torch.Tensor, torch.Tensor]:
        """grid_sample coordinates of every image pixel in the (radius, angle) grid, and the fan mask."""
        jj, ii = torch.meshgrid(torch.arange(self.h, dtype=torch.float64), torch.arange(self.w, dtype=torch.float64),
                                indexing="ij")
        x, y = ii * self.sx - self.apex[0], jj * self.sy - self.apex[1]
        r, th = torch.sqrt(x * x + y * y), torch.atan2(x, y)
        v = (r - self.radius) / self.dv - 0.5   # radial samples sit at the centres of depth_mm / H bins
        u = (th + self.half_angle) / self.du
        mask = (v >= -0.5) & (v <= self.nv - 0.5) & (u >= 0) & (u <= self.nu - 1)
        grid = torch.stack([2 * u / (self.nu - 1) - 1, 2 * v.clamp(0, self.nv - 1) / (self.nv - 1) - 1], dim=-1)
        return grid.float()[None], mask

    # --- one frame ----------------------------------------------------------------------------
    def _candidates(self, rot: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """Indices of scatterers in buckets that may reach the frame (conservative box test).

        Only the buckets inside the frame's world bounding box are tested; a bucket's image-mm
        coordinates are sums of per-axis terms, so the test broadcasts three 1D arrays."""
        ph = self.phantom
        sup = self.half_bucket @ rot.abs()                   # half-extent of a bucket along each image axis
        # world bounding box of the (padded) beam grid and the widest elevation slab
        xs = torch.tensor(self.x_range, dtype=torch.float32)
        ys = torch.tensor(self.y_range, dtype=torch.float32)
        zs = torch.tensor([-1.0, 1.0]) * (ELEVATION_CUTOFF * self.sigma_e_max)
        corners = torch.cartesian_prod(xs, ys, zs) @ rot.t() + origin
        size = self.bucket_size
        lo = torch.clamp(torch.floor(corners.min(0).values / size).long() - 1, min=0)
        hi = torch.minimum(torch.floor(corners.max(0).values / size).long() + 2, self.grid_t)
        if bool((hi <= lo).any()):
            return torch.zeros(0, dtype=torch.int64)
        axes = [(torch.arange(int(lo[a]), int(hi[a])) + 0.5) * size[a] - origin[a] for a in range(3)]
        ax, ay, az = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
        # image-mm coordinates of the bucket centres: proj[i, j, k, c] = sum_a axes[a] * rot[a, c]
        px, py, pz = (ax * rot[0, c] + ay * rot[1, c] + az * rot[2, c] for c in range(3))
        if self.curved:
            depth = torch.hypot(px - float(self.apex[0]), py - float(self.apex[1])) - self.radius
            reach = sup[0] + sup[1]
        else:
            depth, reach = py, sup[1]
        sig = torch.maximum(self._sigma_e(depth - reach), self._sigma_e(depth + reach))
        keep = ((pz.abs() <= ELEVATION_CUTOFF * sig + sup[2])
                & (px >= self.x_range[0] - sup[0]) & (px <= self.x_range[1] + sup[0])
                & (py >= self.y_range[0] - sup[1]) & (py <= self.y_range[1] + sup[1]))
        ijk = torch.nonzero(keep)
        gy, gz = ph.grid[1], ph.grid[2]
        sel = ((ijk[:, 0] + lo[0]) * gy + ijk[:, 1] + lo[1]) * gz + ijk[:, 2] + lo[2]
        counts = ph.counts[sel]
        total = int(counts.sum())
        if total == 0:
            return torch.zeros(0, dtype=torch.int64)
        first = ph.starts[sel]
        offsets = torch.cumsum(counts, 0) - counts
        return torch.repeat_interleave(first - offsets, counts, output_size=total) + torch.arange(total)

    def iq(self, image_to_world: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Complex beam-grid signal ``[2, V, U]`` (real, imaginary), normalised, noise added when a
        generator is given."""
        m = np.asarray(image_to_world, dtype=np.float64)
        rot = torch.from_numpy(m[:3, :3].astype(np.float32))
        origin = torch.from_numpy((m[:3, 3] - self.phantom.lo).astype(np.float32))
        idx = self._candidates(rot, origin)
        pos = self.positions.index_select(1, idx)
        px, py, pz = pos[0], pos[1], pos[2]

        def along(axis: np.ndarray, offset: float) -> torch.Tensor:
            """``(p - origin) . axis + offset`` with the constant folded (fewer full-size ops)."""
            a = axis.astype(np.float64)
            const = offset - float(np.dot(m[:3, 3] - self.phantom.lo, a))
            return px * float(a[0]) + py * float(a[1]) + (pz * float(a[2]) + const)

        r = m[:3, :3]
        z = along(r[:, 2], 0.0)
        if self.curved:
            xa, ya = along(r[:, 0], -float(self.apex[0])), along(r[:, 1], -float(self.apex[1]))
            axial = torch.sqrt(xa * xa + ya * ya)
            depth = axial - self.radius
            u = torch.atan2(xa, ya) * (1.0 / self.du) + (self.half_angle / self.du + self.pad)
            v = depth * (1.0 / self.dv) + (self.pad - 0.5)
        else:
            axial = depth = along(r[:, 1], 0.0)
            u = along(r[:, 0] / self.sx, float(self.pad))
            v = depth * (1.0 / self.sy) + float(self.pad)
        # elevation profile b = exp(-z^2 / (2 sigma_e(depth)^2)); sigma^2 = s0^2 (1 + ((d - F) / zR)^2)
        dz = depth - self.settings.elevation_focus_mm
        q = (z * z) / ((dz * dz) * self._s2_slope + self._s2_focus)
        # keep the scatterers inside the elevation slab and the padded grid (~75% of the candidates)
        inside = (q < ELEVATION_CUTOFF ** 2) & (u >= 0) & (u < self.gu - 1) & (v >= 0) & (v < self.gv - 1)
        keep = torch.nonzero(inside).squeeze(1)
        q, axial, u, v, idx = q[keep], axial[keep], u[keep], v[keep], idx[keep]
        b = torch.exp(q * -0.5) * self.magnitude.index_select(0, idx)
        phase = axial * self.k2 + self.phase.index_select(0, idx)
        vr, vi = torch.cos(phase) * b, torch.sin(phase) * b
        u0, v0 = torch.floor(u), torch.floor(v)
        fu, fv = u - u0, v - v0
        flat = v0.long() * self.gu + u0.long()
        re = torch.zeros(self.gv * self.gu)
        im = torch.zeros(self.gv * self.gu)
        corners = ((0, (1 - fu) * (1 - fv)), (1, fu * (1 - fv)), (self.gu, (1 - fu) * fv), (self.gu + 1, fu * fv))
        for shift, w in corners:  # bilinear splat, one corner at a time
            at = flat + shift if shift else flat
            re.index_add_(0, at, vr * w)
            im.index_add_(0, at, vi * w)
        img = torch.stack([re, im]).reshape(2, 1, self.gv, self.gu)
        img = F.conv2d(img, self.kv.view(1, 1, -1, 1), padding=(self.kv.numel() // 2, 0))
        img = F.conv2d(img, self.ku.view(1, 1, 1, -1), padding=(0, self.ku.numel() // 2))
        p = self.pad
        out = img[:, 0, p:p + self.nv, p:p + self.nu] * self.row_gain
        if generator is not None and self.noise_std > 0:
            out = out + torch.randn(out.shape, generator=generator) * (self.noise_std / math.sqrt(2.0))
        return out

    def envelope(self, image_to_world: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Envelope ``[H, W]`` float32 on the image grid (1 = plain tissue rms; 0 outside a fan)."""
        iq = self.iq(image_to_world, generator)
        env = torch.sqrt(iq[0] ** 2 + iq[1] ** 2)
        if self.curved:
            env = F.grid_sample(env[None, None], self._fan_grid, mode="bilinear", align_corners=True)[0, 0]
            env = env * self._fan_mask
        return env

    def bmode(self, envelope: torch.Tensor) -> np.ndarray:
        """Log compression with gain and dynamic range, quantised to uint8."""
        s = self.settings
        level = 20.0 * torch.log10(envelope.clamp_min(1e-6)) + s.gain_db
        grey = (level / s.dynamic_range_db + TISSUE_LEVEL).clamp(0.0, 1.0)
        if s.smoothing_px > 0:  # speckle reduction
            k = _gauss_kernel(float(s.smoothing_px))
            pad = (k.numel() - 1) // 2
            g = F.pad(grey[None, None], (pad, pad, 0, 0), mode="replicate")
            g = F.conv2d(g, k.view(1, 1, 1, -1))
            g = F.pad(g, (0, 0, pad, pad), mode="replicate")
            grey = F.conv2d(g, k.view(1, 1, -1, 1))[0, 0]
        if s.gamma != 1.0:
            grey = grey ** float(s.gamma)
        if s.grey_levels < 256:  # a coarser display chain / lossy video: fewer distinct grey levels
            steps = float(s.grey_levels) - 1.0
            grey = (grey * steps).round() / steps
        grey = (grey * 255.0).round()
        if self.curved:
            grey = grey * self._fan_mask
        return grey.to(torch.uint8).numpy()


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def simulate_sweep(settings: AcquisitionSettings, image_to_world: np.ndarray, phantom: Phantom,
                   rng: np.random.Generator, progress: Callable[[str, float], None] | None = None, *,
                   metadata: dict[str, Any] | None = None, threads: int | None = 1) -> Sweep:
    """Image ``phantom`` at every pose ``image_to_world [N, 4, 4]``; returns a :class:`Sweep` with the
    exact poses, timestamps at ``settings.frame_rate_hz`` and plain-JSON metadata.

    ``threads``: torch intra-op threads while simulating (restored afterwards; None keeps the
    caller's). One is the default because the per-frame tensors (~2e5 scatterers) are too small
    for intra-op parallelism to pay, and on a shared CPU it is several times slower.
    """
    mats = np.asarray(image_to_world, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1:] != (4, 4) or mats.shape[0] < 2:
        raise InputError(f"Poses of shape {mats.shape} cannot drive a sweep.", "Give [N, 4, 4] with N >= 2.")
    imager = Imager(settings, phantom)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))
    n = mats.shape[0]
    frames = np.empty((n, imager.h, imager.w), dtype=np.uint8)
    with torch_threads(threads):
        for k in range(n):  # frame by frame (each frame is vectorised)
            frames[k] = imager.bmode(imager.envelope(mats[k], gen))
            if progress is not None and (k % 8 == 7 or k == n - 1):
                progress("simulate", (k + 1) / n)
    meta = {"source": "simulated", "settings": settings.to_dict(), "vessels": phantom.vessels,
            "scatterers": phantom.num_scatterers}
    meta.update(metadata or {})
    return Sweep(frames=frames, pixel_spacing=settings.pixel_spacing, image_to_world=mats,
                 timestamps=np.arange(n) / settings.frame_rate_hz, metadata=meta)


def frame_box(settings: AcquisitionSettings, image_to_world: np.ndarray, margin_mm: float = 1.5
              ) -> tuple[np.ndarray, np.ndarray]:
    """World box ``(lo, hi)`` holding every frame's image rectangle plus the elevation slab."""
    h, w = settings.image_size
    sx, sy = settings.pixel_spacing
    depths = np.linspace(0.0, settings.depth_mm, 32)
    slab = ELEVATION_CUTOFF * float(beam.elevation_sigma_mm(settings, depths).max())
    xs, ys = [-2 * sx, (w + 1) * sx], [-2 * sy - 2.0, (h + 1) * sy]
    corners = np.array([[x, y, z, 1.0] for x in xs for y in ys for z in (-slab, slab)])
    pts = np.einsum("nab,pb->npa", np.asarray(image_to_world, np.float64), corners)[..., :3].reshape(-1, 3)
    return pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
