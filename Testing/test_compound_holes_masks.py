"""Hole filling (stick vs a direct transcription of IGSIO's rule; normalised convolution), fan masks,
fan detection on real curvilinear frames, and PLUS config parsing."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from freehandrecon.compound import FanMask, HoleFilling, detect_fan, fan_mask, options_from_plus_config
from freehandrecon.compound.holes import STICKS, fill_normalized, fill_sticks
from freehandrecon.errors import InputError
from freehandrecon.io.metaimage import read_metaimage

DATA = Path(__file__).parent / "Data"


def _stick_reference(vol: np.ndarray, filled: np.ndarray, length: int, nsticks: int) -> np.ndarray:
    """IGSIO's per-voxel stick rule written plainly (slow; tiny volumes only)."""
    out = vol.copy()
    nz, ny, nx = vol.shape
    inside = lambda z, y, x: 0 <= z < nz and 0 <= y < ny and 0 <= x < nx  # noqa: E731
    for z, y, x in itertools.product(range(nz), range(ny), range(nx)):
        if filled[z, y, x]:
            continue
        cands = []
        for dx, dy, dz in STICKS:
            fwd = next((j for j in range(1, length) if inside(z + j * dz, y + j * dy, x + j * dx)
                        and filled[z + j * dz, y + j * dy, x + j * dx]), None)
            if fwd is None or not all(inside(z + j * dz, y + j * dy, x + j * dx) for j in range(1, fwd)):
                continue
            rvs = None
            for j in range(1, length - fwd):
                p = (z - j * dz, y - j * dy, x - j * dx)
                if not inside(*p):
                    break
                if filled[p]:
                    rvs = j
                    break
            if rvs is None:
                continue
            total = fwd + rvs + 1
            fv, rv = vol[z + fwd * dz, y + fwd * dy, x + fwd * dx], vol[z - rvs * dz, y - rvs * dy, x - rvs * dx]
            value = (fwd / total) * rv + ((rvs + 1) / total) * fv
            cands.append((1.0 / (total * math.sqrt(dx * dx + dy * dy + dz * dz)), value))
        used, sw, swv = 0, 0.0, 0.0
        while used < nsticks and cands:
            top = max(w for w, _ in cands)
            for w, v in [c for c in cands if c[0] == top]:
                sw, swv, used = sw + w, swv + w * v, used + 1
            cands = [c for c in cands if c[0] != top]
        out[z, y, x] = swv / sw if sw else 0.0
    return out


@pytest.mark.parametrize("length,nsticks", [(9, 1), (4, 1), (5, 3)])
def test_stick_filling_matches_igsio_rule(length: int, nsticks: int) -> None:
    rng = np.random.default_rng(length * 10 + nsticks)
    vol = rng.uniform(0, 255, (7, 8, 9)).astype(np.float32)
    filled = rng.random((7, 8, 9)) < 0.35
    vol[~filled] = 0
    ours, count = fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), length, nsticks)
    ref = _stick_reference(vol.astype(np.float64), filled, length, nsticks)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-3)
    assert count >= int(((ref != 0) & ~filled).sum())  # a filled value can be exactly 0 only by chance


@pytest.mark.parametrize("shape,length,nsticks", [((4, 5, 6), 9, 1), ((1, 6, 9), 4, 1), ((5, 1, 7), 16, 1),
                                                   ((6, 7, 1), 9, 1), ((5, 6, 7), 17, 1), ((4, 5, 6), 6, 2),
                                                   ((3, 4, 5), 130, 1)])
def test_stick_filling_matches_igsio_rule_on_lattices_thin_volumes_and_long_sticks(
        shape: tuple[int, int, int], length: int, nsticks: int) -> None:
    # a lattice of filled voxels makes many equally short sticks (ties); thin volumes put every hole at a
    # border; 16 is the longest stick of the one-stick fast path, 17 and 130 (int16 distances) the longest others
    rng = np.random.default_rng(sum(shape) + length)
    z, y, x = np.indices(shape)
    filled = (z % 3 == 0) & (y % 2 == 0) & (x % 3 == 1) | (rng.random(shape) < 0.05)
    vol = np.where(filled, rng.uniform(0, 255, shape), 0).astype(np.float32)
    ours, count = fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), length, nsticks)
    ref = _stick_reference(vol.astype(np.float64), filled, length, nsticks)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-4)
    assert count >= int(((ref != 0) & ~filled).sum())


def test_stick_fills_gap_between_slices_and_truncates_like_igsio() -> None:
    vol = np.zeros((5, 4, 4), np.float32)
    vol[0], vol[4] = 10.0, 21.0
    filled = np.zeros_like(vol, bool)
    filled[0] = filled[4] = True
    out, n = fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), 9, 1)
    assert n == 3 * 16
    np.testing.assert_allclose(out[1:4, 1, 1].numpy(), [10 + 11 * 0.4, 10 + 11 * 0.6, 10 + 11 * 0.8], rtol=1e-6)
    trunc, _ = fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), 9, 1, truncate=True)
    np.testing.assert_array_equal(trunc[1:4, 1, 1].numpy(), [14, 16, 18])
    short, n_short = fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), 3, 1)
    assert n_short == 0 and short.abs().sum() == vol.sum()  # a 3-voxel stick cannot bridge a 3-voxel gap


def test_normalized_convolution_fills_only_holes() -> None:
    vol = np.full((3, 5, 5), 40.0, np.float32)
    cov = np.ones_like(vol)
    vol[1, 2, 2], cov[1, 2, 2] = 0.0, 0.0
    vol[:, :, 0], cov[:, :, 0] = 80.0, 2.0
    out, n = fill_normalized(torch.from_numpy(vol), torch.from_numpy(cov), 3)
    assert n == 1
    assert out[1, 2, 2] == pytest.approx(40.0)
    np.testing.assert_array_equal(out.numpy()[cov > 0], vol[cov > 0])
    empty, n0 = fill_normalized(torch.zeros(3, 3, 3), torch.zeros(3, 3, 3), 3)
    assert n0 == 0 and empty.abs().sum() == 0


def test_hole_filling_settings_are_validated() -> None:
    with pytest.raises(InputError, match="Unknown hole filling"):
        HoleFilling("gauss").validate()
    with pytest.raises(InputError, match="sticks"):
        HoleFilling("stick", 9, 20).validate()


def _synthetic_fan_frames(fan: FanMask, h: int = 300, w: int = 400) -> np.ndarray:
    rng = np.random.default_rng(1)
    m = fan_mask(fan, w, h)
    frames = (rng.uniform(40, 255, (3, h, w)) * m).astype(np.uint8)
    return frames


def test_detect_fan_recovers_a_synthetic_sector() -> None:
    fan = FanMask((200.0, -20.0), (-35.0, 35.0), 60.0, 290.0)
    found = detect_fan(_synthetic_fan_frames(fan))
    assert found is not None
    assert abs(found.origin_px[0] - 200) < 3 and abs(found.origin_px[1] + 20) < 6
    assert abs(found.angles_deg[0] + 35) < 1.5 and abs(found.angles_deg[1] - 35) < 1.5
    assert abs(found.radius_start_px - 60) < 6 and abs(found.radius_stop_px - 290) < 6
    truth, got = fan_mask(fan, 400, 300), fan_mask(found, 400, 300)
    assert (truth & got).sum() / (truth | got).sum() > 0.95


def test_detect_fan_on_real_curvilinear_frames_and_none_for_rectangles() -> None:
    img = read_metaimage(DATA / "plus" / "UltrasonixCurvilinearScanConvertedData.igs.mha")
    frames = img.array
    found = detect_fan(frames)
    assert found is not None
    h, w = frames.shape[1:]
    inside = fan_mask(found, w, h)
    bright = frames.max(axis=0) > 0.02 * frames.max()
    assert (inside & bright).sum() / bright.sum() > 0.9  # the fan covers the imaged sector
    assert found.angles_deg[0] < -10 < 10 < found.angles_deg[1]
    rect = np.zeros((2, 100, 120), np.uint8)
    rect[:, 10:90, 20:100] = 100
    assert detect_fan(rect) is None


def test_fan_parameters_are_validated() -> None:
    with pytest.raises(InputError, match="radii"):
        fan_mask(FanMask((0, 0), (-30, 30), 50, 10), 10, 10)
    with pytest.raises(InputError, match="angles"):
        fan_mask(FanMask((0, 0), (-95, 30), 0, 10), 10, 10)


def test_plus_configs_are_read() -> None:
    opts, spacing = options_from_plus_config(DATA / "igsio" / "Config_VolumeReconstruction_SonixRP_TRUS_D70mm_LN_MEAN.xml")
    assert spacing == (0.5, 0.5, 0.5)
    assert (opts.interpolation, opts.compounding) == ("linear", "mean")
    assert opts.clip_rectangle == (192, 16, 421, 581)  # PLUS keeps the pixel at origin + size
    assert opts.fan == FanMask((380.0, 20.0), (-45.0, 45.0), 120.0, 360.0)
    assert opts.hole_filling == HoleFilling("stick", 9, 1)
    nn, _ = options_from_plus_config(DATA / "igsio" / "Config_VolumeReconstruction_SonixRP_TRUS_D70mm_NN_LATE.xml",
                                     plus_arithmetic=True)
    assert (nn.interpolation, nn.compounding, nn.hole_filling.method, nn.plus_arithmetic) == \
        ("nearest", "latest", "none", True)
    mx, _ = options_from_plus_config(DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_LN_MAXI.xml")
    assert mx.compounding == "max" and mx.fan is None


def test_bad_plus_configs_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<PlusConfiguration><VolumeReconstruction OutputSpacing="0.5 0.5" /></PlusConfiguration>')
    with pytest.raises(InputError, match="OutputSpacing"):
        options_from_plus_config(bad)
    bad.write_text('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" CompoundingMode="SUM"/>'
                   '</PlusConfiguration>')
    with pytest.raises(InputError, match="CompoundingMode"):
        options_from_plus_config(bad)
    bad.write_text("<PlusConfiguration><DataCollection/></PlusConfiguration>")
    with pytest.raises(InputError, match="no VolumeReconstruction"):
        options_from_plus_config(bad)
    bad.write_text('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"/>'
                   '</PlusConfiguration>')
    with pytest.raises(InputError, match="HoleFilling"):
        options_from_plus_config(bad)
