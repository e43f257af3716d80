"""The learned pose network: a small MoGLo-style estimator sized for real-time CPU inference.

Data flow for a window of ``T + 1`` frames (``[B, T+1, S, S]`` in [0, 1], isotropic
``input_spacing`` mm/pixel, see :func:`freehandrecon.poses.common.resample_frames`):

1. **Frame encoder** (stride-2 stem + one residual stage, SiLU) runs ONCE per frame and
   gives stage-1 maps at 1/4 resolution.
2. **Correlation volume** between the stage-1 maps of frames t and t+1: cosine similarity
   of 3x3xC patches against every offset in a ``+-corr_radius`` window (no gradient, as
   in MoGLo), sampled on a stride-4 grid (1/16 resolution).
3. **Raw speckle correlation**: zero-mean normalised correlation of raw input patches at
   small in-plane offsets (``+-ncc_radius`` pixels) on the same 1/16 grid. This is the
   physical speckle-decorrelation signal from which elevational distance follows.
4. **Pair encoder**: the concatenated stage-1 maps go through stage 2 ("local" features,
   1/8), stage 3 (1/16, concatenated with both correlation volumes and a depth/lateral
   coordinate map) and stage 4 (1/32, "global" features). Architecture v2
   (``decorrelation_lags``) also concatenates, at 1/16, the calibrated multi-lag
   decorrelation features of :mod:`freehandrecon.poses.decorrelation`, computed outside the
   network from the frames and the probe's decorrelation curve.
5. **Global-local attention**: channel + spatial attention on the local map, cut into a
   4x4 grid of patches; each patch is re-weighted by ``(cos(patch, global) + 1) / 2``.
6. **Motion estimator**: two LSTMs (local and global features) over the sequence of pairs,
   each with a ``Linear -> 6`` head; inference averages them. Outputs are relative 6-DoF
   motions ``[tx, ty, tz, rx, ry, rz]`` of frame t+1 in frame t (centre frame), each divided
   by the per-DoF scale stored with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ARCHITECTURE, ARCHITECTURE_V2, PoseNetConfig  # noqa: F401 (public here)

class ResBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and SiLU, plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.silu(y + (x if self.short is None else self.short(x)))


@torch.no_grad()
def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int, stride: int = 4) -> torch.Tensor:
    """Cosine similarity of 3x3xC patches of ``f1`` centred on a stride grid (centres at
    ``stride//2 + stride*i``) against the 3x3xC patches of ``f2`` at every offset in +-radius.

    Returns ``[B, (2r+1)^2, H/stride, W/stride]`` (offsets row-major, dy outer). ``f2`` is
    zero outside the map.
    """
    b, c, h, w = f1.shape
    k2 = 3 + 2 * radius
    o = stride // 2 - 1  # first row of the first 3x3 patch
    p1 = F.unfold(f1[:, :, o:, o:], 3, stride=stride)                      # [B, C*9, L]
    length = p1.shape[-1]
    p1 = p1.view(b, c, 3, 3, length)
    f2p = F.pad(f2, [radius] * 4)[:, :, o:, o:]
    win = F.unfold(f2p, k2, stride=stride)[..., :length].view(b, c, k2, k2, length)
    n1 = p1.pow(2).sum((1, 2, 3))                                            # [B, L]
    q = win.pow(2).sum(1)                                                    # [B, k2, k2, L]
    out = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            num = (p1 * win[:, :, dy:dy + 3, dx:dx + 3]).sum((1, 2, 3))
            n2 = q[:, dy:dy + 3, dx:dx + 3].sum((1, 2))
            out.append(num / torch.sqrt(n1 * n2 + 1e-6))
    return torch.stack(out, 1).view(b, -1, h // stride, w // stride)


@torch.no_grad()
def raw_ncc(x1: torch.Tensor, x2: torch.Tensor, radius: int, patch: int) -> torch.Tensor:
    """Zero-mean normalised correlation of ``patch`` x ``patch`` raw-image patches (non-overlapping grid)
    of ``x1`` against ``x2`` shifted by every offset in +-radius pixels: ``[B, K, H/patch, W/patch]``."""
    h, w = x1.shape[-2:]
    x2p = F.pad(x2, [radius] * 4, mode="replicate")
    m1 = F.avg_pool2d(x1, patch)
    v1 = (F.avg_pool2d(x1 * x1, patch) - m1 * m1).clamp_min(0)
    out = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            s2 = x2p[:, :, dy:dy + h, dx:dx + w]
            m2 = F.avg_pool2d(s2, patch)
            v2 = (F.avg_pool2d(s2 * s2, patch) - m2 * m2).clamp_min(0)
            cov = F.avg_pool2d(x1 * s2, patch) - m1 * m2
            out.append(cov / torch.sqrt(v1 * v2 + 1e-8))
    return torch.cat(out, 1)


class GlobalLocalAttention(nn.Module):
    """CBAM-like channel + spatial attention on the local map, then MoGLo patch re-weighting
    by ``(cos(patch, global) + 1) / 2`` on a ``grid x grid`` patch partition; returns the
    fused local feature vector."""

    def __init__(self, channels: int, global_dim: int, out_dim: int, grid: int = 4) -> None:
        super().__init__()
        mid = max(channels // 4, 8)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, mid), nn.SiLU(), nn.Linear(mid, channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)
        self.global_proj = nn.Linear(global_dim, channels)
        self.grid = grid
        self.fuse = nn.Linear(channels * grid * grid + global_dim, out_dim)

    def forward(self, local: torch.Tensor, global_vec: torch.Tensor) -> torch.Tensor:
        ca = torch.sigmoid(self.channel_mlp(local.mean((2, 3))) + self.channel_mlp(local.amax((2, 3))))
        x = local * ca[:, :, None, None]
        sa = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        x = x * sa
        patches = F.adaptive_avg_pool2d(x, self.grid)                       # [B, C, g, g]
        g = self.global_proj(global_vec)                                      # [B, C]
        w = (F.cosine_similarity(patches, g[:, :, None, None], dim=1, eps=1e-6) + 1) / 2  # [B, g, g]
        patches = patches * w.unsqueeze(1)
        return F.silu(self.fuse(torch.cat([patches.flatten(1), global_vec], 1)))


class MotionHead(nn.Module):
    """One-layer LSTM over the pair features and a Linear -> 6 output."""

    def __init__(self, in_dim: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 6)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(seq)[0])


class PoseNet(nn.Module):
    """MoGLo-style relative pose network (see the module docstring for the data flow)."""

    def __init__(self, config: PoseNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        w0, w1, w2, w3 = config.widths
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.SiLU())
        self.stage1 = ResBlock(w0, w1, 2)
        self.stage2 = ResBlock(2 * w1, w2, 2)
        self.stage3 = ResBlock(w2, w3, 2)
        n_corr = (2 * config.corr_radius + 1) ** 2
        n_ncc = (2 * config.ncc_radius + 1) ** 2
        self.stage4 = ResBlock(w3 + n_corr + n_ncc + 2 + config.decorrelation_channels, config.global_width, 2)
        g = config.global_width
        grid4 = config.input_size // 32
        self.global_fc = nn.Sequential(nn.Linear(g * grid4 * grid4, config.feature_dim), nn.SiLU())
        self.attention = GlobalLocalAttention(w2, config.feature_dim, config.feature_dim)
        self.head_local = MotionHead(config.feature_dim, config.hidden, config.bidirectional)
        self.head_global = MotionHead(config.feature_dim, config.hidden, config.bidirectional)
        n16 = config.input_size // 16
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, n16), torch.linspace(-1, 1, n16), indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)

    # --- pieces, so inference can run the frame encoder once per frame ----------------------
    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, 1, S, S]`` frames -> stage-1 maps ``[M, w1, S/4, S/4]``."""
        return self.stage1(self.stem(x))

    def pair_features(self, f1: torch.Tensor, f2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                      decor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 maps and raw frames of pairs (and, for v2, their decorrelation features
        ``[P, 2L, S/16, S/16]``) -> (local, global) feature vectors ``[P, F]`` each."""
        corr = feature_correlation(f1, f2, self.config.corr_radius)
        ncc = raw_ncc(x1, x2, self.config.ncc_radius, 16)
        local = self.stage2(torch.cat([f1, f2], 1))
        s3 = self.stage3(local)
        coords = self.coords.expand(s3.shape[0], -1, -1, -1)
        parts = [s3, corr, ncc, coords]
        if self.config.decorrelation_lags:
            if decor is None:
                raise ValueError("this network (moglo-lite-v2) needs the decorrelation features")
            parts.append(decor)
        s4 = self.stage4(torch.cat(parts, 1))
        global_vec = self.global_fc(s4.flatten(1))
        return self.attention(local, global_vec), global_vec

    def motion(self, local_seq: torch.Tensor, global_seq: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, T, F]`` feature sequences -> scaled 6-DoF predictions ``[B, T, 6]`` (and both heads)."""
        loc = self.head_local(local_seq)
        glo = self.head_global(global_seq)
        return {"local": loc, "global": glo, "pred": (loc + glo) / 2}

    def forward(self, frames: torch.Tensor, decor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``[B, T+1, S, S]`` frames (and for v2 ``[B, T, 2L, g, g]`` decorrelation features) -> dict with
        ``pred``/``local``/``global`` ``[B, T, 6]`` (scaled parameters) and ``embed`` ``[B, T, F]``
        (fused local features, for the triplet loss)."""
        b, t1, s, _ = frames.shape
        x = frames.reshape(b * t1, 1, s, s)
        f = self.encode_frames(x).view(b, t1, -1, s // 4, s // 4)
        xs = x.view(b, t1, 1, s, s)
        f1, f2 = f[:, :-1].flatten(0, 1), f[:, 1:].flatten(0, 1)
        x1, x2 = xs[:, :-1].flatten(0, 1), xs[:, 1:].flatten(0, 1)
        d = None if decor is None else decor.flatten(0, 1)
        loc, glo = self.pair_features(f1, f2, x1, x2, d)
        loc, glo = loc.view(b, t1 - 1, -1), glo.view(b, t1 - 1, -1)
        out = self.motion(loc, glo)
        out["embed"] = loc
        return out


def rescale_outputs(net: PoseNet, old_scales, new_scales) -> None:
    """Re-express the network's outputs in ``new_scales`` without changing what it predicts.

    Outputs are 6-DoF motions divided by per-DoF scales, so the losses weigh each DoF by
    ``1 / scale``; fine-tuning on data whose motions differ from those the scales came from can
    re-weigh the DoFs this way. Both heads' last Linear rows are multiplied by ``old / new``.
    """
    factor = torch.as_tensor(old_scales, dtype=torch.float64) / torch.as_tensor(new_scales, dtype=torch.float64)
    if factor.shape != (6,) or not bool(torch.isfinite(factor).all()) or not bool((factor > 0).all()):
        raise ValueError(f"scales must be 6 positive numbers, got {old_scales} and {new_scales}")
    with torch.no_grad():
        for head in (net.head_local, net.head_global):
            f = factor.to(head.out.weight)
            head.out.weight.mul_(f[:, None])
            head.out.bias.mul_(f)


def build_pose_net(config: PoseNetConfig | None = None) -> PoseNet:
    """Build a :class:`PoseNet` (default configuration when ``config`` is None)."""
    return PoseNet(config or PoseNetConfig())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
