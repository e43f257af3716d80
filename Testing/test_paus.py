"""Photoacoustic and Doppler channels: simulation physics, reader checks, per-channel compounding
with the B-mode poses, fused display and the bundled PAUS sample."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from freehandrecon.commands.main import main
from freehandrecon.compound import CompoundOptions, compound
from freehandrecon.errors import InputError
from freehandrecon.channels import attach_channel
from freehandrecon.compound.options import channel_options, parse_channel_compounding
from freehandrecon.io import read_sweep, write_sweep
from freehandrecon.logic import PoseRequest, ReconstructionRequest, reconstruct_sweep
from freehandrecon.simulate import (BASE, AcquisitionSettings, doppler_frames, photoacoustic_frames,
                                    random_paus_sweep, random_sweep, vessel_mask)
from freehandrecon.sweep import Sweep

SAMPLE = Path(__file__).parent / "Data" / "paus" / "paus_sample.npz"
PROBE = AcquisitionSettings(probe="linear", depth_mm=32.0, width_mm=24.0, image_size=(128, 96), f0_mhz=7.5,
                            elevation_focus_mm=16.0)


def _poses(n: int, step: float = 0.3) -> np.ndarray:
    """Frames stepping along elevation (world +A) from the default first pose."""
    mats = np.repeat(BASE[None], n, axis=0)
    mats[:, 1, 3] = np.arange(n) * step
    return mats


def _along_elevation(x_mm: float, depth_mm: float, radius: float) -> dict:
    """A vessel crossing the frames at image (x, depth), running along the sweep (world A axis)."""
    return {"point": [x_mm, 0.0, -depth_mm], "direction": [0.0, 1.0, 0.0], "radius": radius}


@pytest.fixture(scope="module")
def paus():
    return random_paus_sweep("site-a", 4, num_frames=12, image_size=(96, 96), kind="linear", direction=1)


@pytest.fixture(scope="module")
def sample():
    return read_sweep(SAMPLE)


# --- simulator ---------------------------------------------------------------------------------------

def test_channels_are_coregistered_and_leave_bmode_unchanged(paus):
    plain = random_sweep("site-a", 4, num_frames=12, image_size=(96, 96), kind="linear", direction=1)
    np.testing.assert_array_equal(paus.frames, plain.frames)  # channels draw from their own random stream
    np.testing.assert_array_equal(paus.image_to_world, plain.image_to_world)
    assert set(paus.channels) == {"photoacoustic", "doppler"}
    for ch in paus.channels.values():
        assert ch.shape == paus.frames.shape and ch.dtype == np.uint8
    assert json.loads(json.dumps(paus.metadata["channel_params"]))["photoacoustic"]["mu_eff_per_mm"] > 0
    with pytest.raises(InputError, match="Unknown simulated channel"):
        random_sweep("site-a", 4, num_frames=3, channels=("ultrasound-elastography",))


def test_photoacoustic_and_doppler_signal_lies_inside_the_vessels(paus):
    mask = vessel_mask(paus.metadata["vessels"], paus.pixel_to_world(), paus.frame_shape)
    near = vessel_mask(paus.metadata["vessels"], paus.pixel_to_world(), paus.frame_shape, margin_mm=-1.0)
    core = vessel_mask(paus.metadata["vessels"], paus.pixel_to_world(), paus.frame_shape, margin_mm=0.5)
    assert mask.mean() > 0.005, "the test sweep must see a vessel"
    pa = paus.channels["photoacoustic"].astype(float)
    bright = pa > 0.4 * pa.max()
    assert (bright & near).sum() / bright.sum() > 0.9      # bright PA is at the vessels (PSF + elevation blur allowed)
    assert (bright & core).sum() / core.sum() > 0.85       # and the vessel cores are bright
    assert pa[core].mean() > 5 * pa[~near].mean()          # background well below blood
    dop = paus.channels["doppler"]
    assert ((dop > 0) & near).sum() / max((dop > 0).sum(), 1) > 0.95  # the colour gate keeps flow pixels only
    assert (dop > 0).sum() > 0.3 * mask.sum()


def test_photoacoustic_fluence_falls_with_depth():
    rng = np.random.default_rng(0)
    vessels = [_along_elevation(6.0, 8.0, 1.5), _along_elevation(18.0, 24.0, 1.5)]
    mu = 0.05
    pa, params = photoacoustic_frames(PROBE, _poses(3), vessels, rng, mu_eff_per_mm=mu, compensation=0.0,
                                      noise=1e-4, background=0.0)
    sx, sy = PROBE.pixel_spacing
    frame = pa[1].astype(float)
    shallow = frame[:, : int(12 / sx)].max()
    deep = frame[:, int(12 / sx):].max()
    strengths = params["vessel_absorption"]
    expected = strengths[1] / strengths[0] * np.exp(-mu * 16.0)
    assert deep / shallow == pytest.approx(expected, rel=0.25)


def test_photoacoustic_detection_enhances_axial_boundaries_only():
    rng = np.random.default_rng(1)
    pa, _ = photoacoustic_frames(PROBE, _poses(3), [_along_elevation(12.0, 16.0, 3.5)], rng, mu_eff_per_mm=0.001,
                                 compensation=0.0, noise=1e-4, background=0.0, dc_fraction=0.4, low_cut_mm=2.0)
    sx, sy = PROBE.pixel_spacing
    frame = pa[1].astype(float)
    col, row = int(round(12.0 / sx)), int(round(16.0 / sy))
    axial, lateral = frame[:, col], frame[row, :]
    centre = frame[row, col]
    assert axial.max() > 1.2 * centre                   # band-limited detection: top/bottom walls brighter
    assert lateral.max() < 1.1 * centre                 # limited view: side walls get no enhancement
    assert centre > 0.3 * axial.max()                   # the lumen stays partly filled
    assert frame[row, col - int(6 / sx)] < 0.1 * axial.max()  # nothing outside the vessel


def test_colour_doppler_follows_flow_direction_and_beam_angle():
    tilted = {"point": [12.0, 0.0, -16.0], "direction": [0.0, 0.8, 0.6], "radius": 2.0}  # 53 deg to the beam
    reverse = dict(tilted, direction=[0.0, -0.8, -0.6])
    across = _along_elevation(12.0, 16.0, 2.0)                                          # perpendicular to the plane
    kw = dict(mode="colour", steer_deg=0.0, broadening=0.0)
    v1, _ = doppler_frames(PROBE, _poses(2), [tilted], np.random.default_rng(2), **kw)
    v2, _ = doppler_frames(PROBE, _poses(2), [reverse], np.random.default_rng(2), **kw)
    v3, _ = doppler_frames(PROBE, _poses(2), [across], np.random.default_rng(2), **kw)
    assert v1.dtype == np.float32
    flow = v1 != 0
    assert flow.sum() > 50
    assert np.sign(np.median(v1[flow])) == -np.sign(np.median(v2[v2 != 0]))  # flow reversed: colour reversed
    # no axial velocity component and no broadening: the wall filter removes flow across the beam
    assert (v3 != 0).sum() < 0.2 * flow.sum()
    with pytest.raises(InputError, match="Doppler mode"):
        doppler_frames(PROBE, _poses(2), [tilted], np.random.default_rng(2), mode="spectral")


# --- readers -----------------------------------------------------------------------------------------

def test_tusrec_channels_round_trip_and_timestamp_check(tmp_path, sample):
    sweep = sample.subset(slice(0, 10))
    path = write_sweep(sweep, tmp_path / "scan.h5")
    back = read_sweep(path)
    assert set(back.channels) == {"photoacoustic", "doppler"}
    np.testing.assert_array_equal(back.channels["photoacoustic"], sweep.channels["photoacoustic"])
    with h5py.File(path, "a") as f:  # a PA clock that drifts away from the B-mode clock
        f.create_dataset("pa_timestamps", data=sweep.timestamps + np.linspace(0, 0.05, 10))
    with pytest.raises(InputError, match="photoacoustic.*frame"):
        read_sweep(path)
    with h5py.File(path, "a") as f:
        del f["pa_timestamps"]
        f.create_dataset("pa_timestamps", data=sweep.timestamps + 0.001)  # within a quarter frame: fine
        del f["doppler_frames"]
        f.create_dataset("doppler_frames", data=sweep.channels["doppler"][:9])
    with pytest.raises(InputError, match="doppler"):
        read_sweep(path)


def test_browser_channels_round_trip_and_index_check(sample):
    from freehandrecon.io.slicer_scene import new_scene
    from freehandrecon.io.slicer_sequences import (CHANNEL_ATTRIBUTE, _image_sequence, sweep_from_browser,
                                                   sweep_to_browser)

    sweep = sample.subset(slice(0, 6))
    scene = new_scene()
    back = sweep_from_browser(sweep_to_browser(scene, sweep))
    assert set(back.channels) == {"photoacoustic", "doppler"}
    np.testing.assert_array_equal(back.channels["doppler"], sweep.channels["doppler"])
    # a channel sequence recorded on another clock
    plain = replace(sweep, channels={})
    browser = sweep_to_browser(scene, plain, name="Plain")
    values = [repr(float(t) + 0.02) for t in sweep.timestamps]
    seq = _image_sequence(scene, sweep.channels["photoacoustic"], sweep.pixel_spacing, values, "time", "s",
                               "Plain_pa")
    seq.SetAttribute(CHANNEL_ATTRIBUTE, "photoacoustic")
    browser.AddSynchronizedSequenceNode(seq)
    with pytest.raises(InputError, match="Plain_pa"):
        sweep_from_browser(browser)


def test_attach_channel_checks_counts_and_timestamps(sample):
    bmode = replace(sample.subset(slice(0, 8)), channels={})
    other = sample.subset(slice(0, 8))
    both = attach_channel(bmode, Sweep(other.channels["photoacoustic"], other.pixel_spacing,
                                       timestamps=other.timestamps), "photoacoustic")
    np.testing.assert_array_equal(both.channels["photoacoustic"], other.channels["photoacoustic"])
    with pytest.raises(InputError, match="frame 7"):
        attach_channel(bmode, other.channels["doppler"], "doppler", timestamps=other.timestamps + np.r_[[0.0] * 7, 0.5])
    with pytest.raises(InputError, match="7 timestamps"):
        attach_channel(bmode, other.channels["doppler"], "doppler", timestamps=other.timestamps[:7])


# --- compounding -------------------------------------------------------------------------------------

def test_channel_compounding_defaults_and_overrides(sample):
    sweep = sample.subset(slice(0, 30))
    res = reconstruct_sweep(sweep, ReconstructionRequest(spacing_mm=0.6))
    assert res.channels["photoacoustic"].stats["compounding"] == "max"
    assert res.channels["doppler"].stats["compounding"] == "max"
    max_pa = compound(sweep, res.grid, CompoundOptions(compounding="max"), channel="photoacoustic")
    np.testing.assert_array_equal(res.channels["photoacoustic"].volume, max_pa.volume)
    mean_bmode = compound(sweep, res.grid, CompoundOptions(compounding="mean"))
    np.testing.assert_array_equal(res.bmode.volume, mean_bmode.volume)
    res2 = reconstruct_sweep(sweep, ReconstructionRequest(spacing_mm=0.6, channels=("doppler",),
                                                          channel_compounding={"doppler": "mean"}))
    assert set(res2.channels) == {"doppler"} and res2.channels["doppler"].stats["compounding"] == "mean"
    assert channel_options(CompoundOptions(compounding="latest"), "other").compounding == "latest"
    assert parse_channel_compounding(["doppler=mean", "photoacoustic=max"]) == {"doppler": "mean",
                                                                                 "photoacoustic": "max"}
    for bad in (["doppler"], ["doppler=median"]):
        with pytest.raises(InputError, match="CHANNEL=MODE"):
            parse_channel_compounding(bad)
    with pytest.raises(InputError, match="Unknown compounding mode 'avg'"):
        reconstruct_sweep(sweep, ReconstructionRequest(spacing_mm=0.6, channel_compounding={"doppler": "avg"}))


@pytest.mark.parametrize("method", ["tracked", "learned", pytest.param("speckle", marks=pytest.mark.slow)])
def test_channels_use_exactly_the_bmode_poses(sample, method):
    sweep = sample.subset(slice(0, 12))
    sweep = replace(sweep, channels={"copy": sweep.frames.copy()})  # a channel identical to the B-mode frames
    req = ReconstructionRequest(spacing_mm=0.6, poses=PoseRequest(method=method), channel_compounding={"copy": "mean"})
    res = reconstruct_sweep(sweep, req)
    np.testing.assert_array_equal(res.channels["copy"].volume, res.bmode.volume)
    np.testing.assert_array_equal(res.channels["copy"].coverage, res.bmode.coverage)
    if method != "tracked":  # estimated poses, not the tracked ones, drove both
        assert not np.allclose(res.sweep.image_to_world, sweep.image_to_world, atol=1e-3)


# --- command line and the bundled sample -------------------------------------------------------------

def test_bundled_sample_is_small_and_complete(sample):
    assert SAMPLE.stat().st_size < 3_000_000
    assert sample.num_frames >= 60 and sample.frame_shape == (128, 128)
    assert set(sample.channels) == {"photoacoustic", "doppler"} and sample.image_to_world is not None
    assert len(sample.metadata["vessels"]) >= 1 and sample.metadata["settings"]["probe"] == "linear"
    assert (Path(__file__).parent / "Data" / "paus" / "README.md").is_file()


def test_cli_reconstruct_writes_channel_volumes_and_modes(tmp_path):
    out = tmp_path / "rec"
    code = main(["--quiet", "reconstruct", str(SAMPLE), "--out", str(out), "--spacing", "0.6", "--no-mrb",
                 "--no-render", "--channel-compounding", "doppler=mean"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["channel_volumes"]["photoacoustic"]["compounding"] == "max"
    assert report["channel_volumes"]["doppler"]["compounding"] == "mean"
    assert report["bmode_compounding"] == "mean"
    for name in ("volume_photoacoustic.nrrd", "volume_doppler.nrrd"):
        assert (out / name).is_file() and name in report["outputs"]
    assert "render_fused.png" not in report["outputs"]
    assert main(["--quiet", "reconstruct", str(SAMPLE), "--out", str(tmp_path / "x"),
                 "--channel-compounding", "doppler"]) == 2


def _rgb(path: Path) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    return vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())[:, :3].astype(int)


def test_fused_display_and_png(tmp_path, sample):
    from freehandrecon.io.slicer_scene import get_logic
    from freehandrecon.scene.display import BMODE_OPACITY_SCALE, show_result_fused
    from freehandrecon.scene.render import render_fused_png
    from freehandrecon.logic import ReconstructionLogic

    logic = ReconstructionLogic()
    nodes, _ = logic.reconstruct(sample.subset(slice(0, 40)), ReconstructionRequest(spacing_mm=0.6))
    channels = {k: v for k, v in nodes.items() if k.startswith("channel:")}
    displays = show_result_fused(logic.scene, nodes)
    assert set(displays) == {"bmode", "Reconstruction_photoacoustic", "Reconstruction_doppler"}
    preset = get_logic(logic.scene, "volumerendering").GetPresetByName("US-BMode").GetScalarOpacity()
    faded = displays["bmode"].GetVolumePropertyNode().GetScalarOpacity()
    assert faded.GetValue(255) == pytest.approx(BMODE_OPACITY_SCALE * preset.GetValue(255))
    assert displays["Reconstruction_photoacoustic"].GetVolumePropertyNode().GetName().endswith("PA-Hot")
    assert displays["Reconstruction_doppler"].GetVolumePropertyNode().GetName().endswith("Doppler-Red")
    stats = render_fused_png(logic.scene, nodes["volume"], channels, tmp_path / "fused.png", width=240, height=180)
    assert stats["presets"] == ["US-BMode", "PA-Hot", "Doppler-Red"] and stats["foreground_fraction"] > 0.05
    rgb = _rgb(tmp_path / "fused.png")
    coloured = (rgb[:, 0] > 120) & (rgb[:, 0] > 2 * rgb[:, 2] + 30)   # hot/red vessel pixels over grey B-mode
    grey = (np.abs(rgb[:, 0] - rgb[:, 2]) < 12) & (rgb.mean(axis=1) > 40)
    assert coloured.mean() > 0.005 and grey.mean() > 0.05
    with pytest.raises(InputError, match="at least one channel"):
        render_fused_png(logic.scene, nodes["volume"], {}, tmp_path / "none.png")


@pytest.mark.slow
def test_cli_reconstruct_writes_fused_png(tmp_path):
    out = tmp_path / "rec"
    assert main(["--quiet", "reconstruct", str(SAMPLE), "--out", str(out), "--spacing", "0.6", "--no-mrb"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "render_fused.png" in report["outputs"] and (out / "render_fused.png").is_file()
    assert report["render"]["fused"]["foreground_fraction"] > 0.05
    rgb = _rgb(out / "render_fused.png")
    assert ((rgb[:, 0] > 120) & (rgb[:, 0] > 2 * rgb[:, 2] + 30)).mean() > 0.005


def test_simulate_command_writes_channels(tmp_path):
    path = tmp_path / "paus.h5"
    assert main(["--quiet", "simulate", "--out", str(path), "--frames", "4", "--size", "48", "48",
                 "--channels", "photoacoustic", "doppler"]) == 0
    sweep = read_sweep(path)  # TUS-REC layout: pa_frames / doppler_frames beside frames
    assert set(sweep.channels) == {"photoacoustic", "doppler"} and sweep.channels["doppler"].shape == (4, 48, 48)
    with h5py.File(path) as f:
        assert {"frames", "tforms", "pa_frames", "doppler_frames"} <= set(f)
