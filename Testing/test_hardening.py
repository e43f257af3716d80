"""Hardening (issue 19): no bad input reaches a traceback, nothing outside --out is touched.

Each test crafts a tiny bad input in tmp_path and runs the command line in-process (``main``
returns the exit code: 1-4 for FreehandReconError, 70 for a traceback) or the Python API.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from freehandrecon import geometry
from freehandrecon.commands.main import main
from freehandrecon.errors import CalibrationError, InputError, ResourceError
from freehandrecon.io import read_sweep, sweep_from_arrays, write_sweep
from freehandrecon.io.plus_config import read_plus_config
from freehandrecon.sweep import Sweep, check_channel_name

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
NN_MEAN = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


def small_arrays(n: int = 6, h: int = 20, w: int = 24) -> dict:
    """A tiny tracked sweep: frames 1..255, translated 0.5 mm per frame along z."""
    rng = np.random.default_rng(0)
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = 0.5 * np.arange(n)
    return dict(frames=rng.integers(1, 255, (n, h, w), dtype=np.uint8), pixel_spacing=np.array([0.5, 0.5]),
                image_to_world=poses, timestamps=0.05 * np.arange(n))


def save_npz(path: Path, **changes) -> Path:
    arrays = small_arrays()
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def run(*args: str) -> int:
    return main(["--quiet", *map(str, args)])


# --- 1. channel names cannot lead outputs out of --out -----------------------------------------

def test_npz_channel_name_with_path_is_refused_and_nothing_outside_out_is_touched(tmp_path, capsys):
    victim = tmp_path / "victim.nrrd"
    victim.write_text("keep me")
    (tmp_path / "a" / "b").mkdir(parents=True)
    frames = small_arrays()["frames"]
    src = save_npz(tmp_path / "a" / "s.npz", **{"channel_../../../victim": frames})
    code = run("reconstruct", src, "--out", tmp_path / "a" / "b" / "out", "--no-render", "--no-mrb")
    assert code == 2
    assert "channel name '../../../victim'" in capsys.readouterr().err
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "a" / "b" / "out").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x y", "é", "a" * 65])
def test_unsafe_channel_names_refused_everywhere(name):
    with pytest.raises(InputError, match="channel name"):
        check_channel_name(name)
    frames = small_arrays()["frames"]
    with pytest.raises(InputError, match="channel name"):
        Sweep(frames=frames, channels={name: frames})
    with pytest.raises(InputError, match="channel name"):
        sweep_from_arrays(frames, 0.5, channels={name: frames})


def test_h5_channel_dataset_name_is_checked(tmp_path):
    arrays = small_arrays()
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["frames"] = arrays["frames"]
        f[".._frames"] = arrays["frames"]  # channel '..'
    with pytest.raises(InputError, match="channel name '..'"):
        read_sweep(tmp_path / "s.h5", pixel_spacing=(0.5, 0.5))


def test_seq_nrrd_channel_file_name_is_checked(tmp_path):
    from freehandrecon.io.slicer_files import write_seq_nrrd

    arrays = small_arrays()
    sweep = sweep_from_arrays(arrays["frames"], 0.5, arrays["image_to_world"], channels={"pa": arrays["frames"]})
    paths = write_seq_nrrd(sweep, tmp_path / "s.seq.nrrd")
    channel_file = next(p for p in paths if "_channel-" in p.name)
    channel_file.rename(tmp_path / "s_channel-a b.seq.nrrd")
    with pytest.raises(InputError, match="channel name 'a b'"):
        read_sweep(tmp_path / "s.seq.nrrd")


# --- 3. declared sizes are checked before reading; info reads no frames ---------------------------

def huge_h5(path: Path, shape: tuple) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", shape=shape, dtype=np.uint8, chunks=(1,) + shape[1:2] + (min(shape[2], 64),),
                         compression="gzip", fillvalue=0)
    return path


def test_h5_claiming_terabytes_is_refused_before_reading(tmp_path, capsys):
    scan = huge_h5(tmp_path / "huge.h5", (10**6, 4096, 2400))  # ~9 TiB claimed in a few KB
    assert scan.stat().st_size < 100_000
    t0 = time.perf_counter()
    assert run("info", scan) == ResourceError.exit_code
    assert time.perf_counter() - t0 < 10
    assert "GiB" in capsys.readouterr().err
    with pytest.raises(ResourceError, match="would take"):
        read_sweep(scan)


def test_info_on_h5_reads_only_shapes(tmp_path, capsys):
    scan = huge_h5(tmp_path / "big.h5", (400, 1000, 1000))  # 400 MB declared, a few KB on disk
    tracemalloc.start()
    try:
        code = run("info", scan, "--pixel-spacing", "0.2", "0.2")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 400 and info["frame_size"] == [1000, 1000]
    assert peak < 50 * 2**20, f"info allocated {peak / 2**20:.0f} MiB: it read the frames"


def test_metaimage_claiming_terabytes_is_refused(tmp_path):
    f = tmp_path / "huge.mha"
    f.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_UCHAR\n"
                  b"CompressedData = True\nElementDataFile = LOCAL\n" + b"x" * 10)
    with pytest.raises(ResourceError, match="would take"):
        read_sweep(f)


# --- 4. bad content gives InputError, never exit 70 -------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(metadata_json=np.array("[1, 2]")), "metadata_json is not a JSON object"),
    (dict(metadata_json=np.array("{broken")), "metadata_json is not a JSON object"),
    (dict(image_to_world=np.array(["a", "b"])), "image_to_world are stored as"),
    (dict(pixel_spacing=np.array(["0.5", "x"])), "pixel_spacing is stored as"),
    (dict(frames=np.array([["a", "b"], ["c", "d"]])), "frames are stored as"),
    (dict(timestamps=np.zeros((4, 5))), r"timestamps have shape \(4, 5\) for 6 frames"),
])
def test_npz_with_wrong_kinds_of_arrays(tmp_path, capsys, changes, message):
    src = save_npz(tmp_path / "s.npz", **changes)
    assert run("info", src) == 2
    assert re.search(message, capsys.readouterr().err)


def test_npz_channel_stored_as_text(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz", channel_pa=np.array(["a"] * 6))
    assert run("info", src) == 2
    assert "channel 'pa' are stored as" in capsys.readouterr().err


def test_mha_renamed_npz_is_named_for_what_it_is(tmp_path):
    f = tmp_path / "s.npz"
    f.write_bytes(SPINE.read_bytes()[:4000])
    with pytest.raises(InputError, match="not a numpy .npz archive.*MetaImage"):
        read_sweep(f)


def test_h5_frames_scalar_and_2d(tmp_path, capsys):
    with h5py.File(tmp_path / "scalar.h5", "w") as f:
        f["frames"] = 5
    assert run("info", tmp_path / "scalar.h5") == 2
    assert "frames must be [N, H, W]" in capsys.readouterr().err
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["frames"] = np.zeros((20, 30), np.uint8)
        f["tforms"] = np.repeat(np.eye(4)[None], 20, axis=0)
    assert run("info", tmp_path / "flat.h5") == 2
    err = capsys.readouterr().err
    assert "'frames' has shape (20, 30)" in err and "tforms" not in err


@pytest.mark.parametrize("extra, message", [
    (["--max-memory-gb", "nan"], "--max-memory-gb must be a positive"),
    (["--max-memory-gb", "0"], "--max-memory-gb must be a positive"),
    (["--max-memory-gb", "-1"], "--max-memory-gb must be a positive"),
    (["--fill-holes", "normalized", "--hole-size", "100000"], "--hole-size must be 1..64"),
    (["--hole-size", "0"], "--hole-size must be 1..64"),
    (["--fill-holes", "stick", "--sticks", "0"], "--sticks must be 1..13"),
    (["--pixel-threshold", "nan"], "--pixel-threshold must be a finite"),
    (["--roi", "nan", "0", "0", "10", "10", "10"], "finite centre and a positive size"),
    (["--roi", "0", "0", "0", "10", "-1", "10"], "finite centre and a positive size"),
    (["--spacing", "nan"], "Output spacing must be positive"),
    (["--fan", "10", "0", "45", "-45", "0", "100"], "A0 < A1"),
    (["--clip", "0", "0", "0", "10"], "W, H > 0"),
])
def test_bad_numbers_refused_before_any_work(tmp_path, capsys, extra, message):
    src = save_npz(tmp_path / "s.npz")
    assert run("reconstruct", src, "--out", tmp_path / "out", "--no-render", "--no-mrb", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- 5. output locations are checked first ---------------------------------------------------------

def test_reconstruct_out_is_a_file_or_under_one(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run("reconstruct", src, "--out", blocker) == 2
    assert "is a file" in capsys.readouterr().err
    assert run("reconstruct", src, "--out", blocker / "sub" / "out") == 2
    assert "which is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_read_only_location_refused_up_front(capsys, tmp_path):
    src = save_npz(tmp_path / "s.npz")
    assert run("reconstruct", src, "--out", "/proc/freehandrecon-out") == 2
    assert "Cannot write in '/proc'" in capsys.readouterr().err
    assert run("convert", src, "/proc/freehandrecon.npz") == 2
    assert "Cannot write in '/proc'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["convert", "{src}", "{out}", "--force"],
    ["estimate-poses", "{src}", "--method", "speckle", "--out", "{out}", "--force"],
    ["calibrate-speckle", "{src}", "--out", "{out}", "--force"],
    ["quality", "{src}", "--out", "{out}", "--force"],
])
def test_force_never_replaces_a_folder(tmp_path, capsys, command):
    src = save_npz(tmp_path / "s.npz")
    out = tmp_path / "taken.npz"
    (out / "inside").mkdir(parents=True)
    args = [a.format(src=src, out=out) for a in command]
    t0 = time.perf_counter()
    assert run(*args) == 2
    assert "is an existing folder" in capsys.readouterr().err
    assert (out / "inside").is_dir()
    assert time.perf_counter() - t0 < 5  # refused before reading or estimating


def test_reconstruct_output_name_taken_by_folder(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz")
    (tmp_path / "out" / "volume.nrrd").mkdir(parents=True)
    assert run("reconstruct", src, "--out", tmp_path / "out", "--force") == 2
    assert "holds folders named volume.nrrd" in capsys.readouterr().err


# --- 6. SIGTERM cleans up like Ctrl-C ---------------------------------------------------------------

def test_sigterm_during_a_run_leaves_no_temporary_folders(tmp_path):
    src = tmp_path / "big.npz"
    arrays = small_arrays(n=60, h=240, w=320)
    np.savez(src, **arrays)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(tmpdir))
    code = ("import sys; from freehandrecon.commands.main import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--quiet", "reconstruct", str(src), "--out", str(out),
                             "--spacing", "0.25"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmpdir.glob("freehandrecon-mrml-cache-*")) \
            and not list(tmp_path.glob(".freehandrecon-*")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert not list(tmp_path.glob(".freehandrecon-*")), "hidden staging folder left beside --out"
    assert not list(tmpdir.iterdir()), f"left in TMPDIR: {list(tmpdir.iterdir())}"
    assert not (out / "volume.nrrd").exists()


# --- 7. wrong geometry and settings are refused or warned about -----------------------------------

def test_projective_calibration_names_the_matrix(tmp_path, capsys):
    m = read_plus_config(NN_MEAN).transforms[("Image", "Probe")].copy()
    m[3] = [0.001, 0, 0, 1]
    cfg = tmp_path / "c.xml"
    text = re.sub(r'(From="Image" To="Probe"\s+Matrix=")[^"]*"', lambda g: g.group(1) + " ".join(map(str, m.ravel()))
                  + '"', NN_MEAN.read_text())
    cfg.write_text(text)
    assert read_plus_config(cfg).transforms[("Image", "Probe")][3, 0] == 0.001
    assert run("reconstruct", SPINE, "--plus-config", cfg, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "ImageToProbe matrix (PLUS config) have last row [0.001, 0.0, 0.0, 1.0]" in err, err
    assert "PB" not in err and "GiB" not in err


def test_sheared_and_scaled_transforms_refused():
    arrays = small_arrays()
    sheared = arrays["image_to_world"].copy()
    sheared[:, 0, 1] = 0.5
    with pytest.raises(CalibrationError, match="sheared"):
        sweep_from_arrays(arrays["frames"], 0.5, sheared)
    scaled = arrays["image_to_world"].copy()
    scaled[:, :3, :3] *= 1.5
    with pytest.raises(CalibrationError, match="rigid"):
        sweep_from_arrays(arrays["frames"], 0.5, scaled)
    projective = arrays["image_to_world"].copy()
    projective[2, 3, 2] = 0.01
    with pytest.raises(CalibrationError, match="frame 2 have last row"):
        sweep_from_arrays(arrays["frames"], 0.5, projective)
    # the bundled PLUS calibrations (axes up to 2.7 degrees from perpendicular) still read
    assert read_sweep(SPINE, plus_config=NN_MEAN).num_frames == 21


def test_timestamps_backwards_nan_and_repeats(tmp_path, capsys):
    arrays = small_arrays()
    with pytest.raises(InputError, match="go backwards: frame 3"):
        sweep_from_arrays(arrays["frames"], 0.5, timestamps=[0, 1, 2, 1.5, 3, 4])
    with pytest.raises(InputError, match="timestamp of frame 1 is nan"):
        sweep_from_arrays(arrays["frames"], 0.5, timestamps=[0, np.nan, 2, 3, 4, 5])
    with pytest.warns(UserWarning, match="repeat the previous frame's timestamp"):
        sweep_from_arrays(arrays["frames"], 0.5, timestamps=[0, 1, 1, 2, 3, 4])
    src = save_npz(tmp_path / "s.npz", timestamps=np.array([5.0, 4, 3, 2, 1, 0]))
    assert run("info", src) == 2
    assert "go backwards" in capsys.readouterr().err


def test_nan_frames_refused():
    frames = np.full((4, 8, 8), np.nan, np.float32)
    with pytest.raises(InputError, match="NaN or infinite pixels"):
        sweep_from_arrays(frames, 0.5)
    ok = np.zeros((4, 8, 8), np.float32)
    ok[2, 3, 3] = np.inf
    with pytest.raises(InputError, match="the first is frame 2"):
        sweep_from_arrays(ok, 0.5)


def test_pixel_threshold_that_no_pixel_passes(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz")
    assert run("reconstruct", src, "--out", tmp_path / "out", "--no-render", "--no-mrb",
               "--pixel-threshold", "1e9") == 2
    assert "No pixel of the sweep reaches the pixel threshold" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_calibration_ignored_is_warned(tmp_path):
    from freehandrecon.io.plus import sweep_from_plus

    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(" ".join(map(str, r)) for r in np.eye(4)))
    with pytest.warns(UserWarning, match="is not used: ProbeToTracker is resolved from the file alone"):
        sweep_from_plus(SPINE, image_to_reference="ProbeToTracker", calibration=cal)


@pytest.mark.parametrize("attrs, message", [
    ('FanAnglesDeg="45 -45"', "reversed"),
    ('ClipRectangleOrigin="0 0" ClipRectangleSize="0 10"', "would keep no pixel"),
    ('ClipRectangleOrigin="0 0" ClipRectangleSize="-5 10"', "would keep no pixel"),
    ('FillHoles="ON"><HoleFilling><HoleFillingElement Type="MAGIC"/></HoleFilling></VolumeReconstruction><X a="1"',
     "not a PLUS hole filling type"),
])
def test_plus_config_volume_reconstruction_checks(tmp_path, attrs, message):
    cfg = tmp_path / "c.xml"
    cfg.write_text(f'<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" {attrs}/></PlusConfiguration>')
    with pytest.raises(InputError, match=message):
        read_plus_config(cfg)


def test_plus_config_zero_clip_warns_and_wrong_root_refused(tmp_path, capsys):
    cfg = tmp_path / "c.xml"
    cfg.write_text('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" ClipRectangleOrigin="0 0" '
                   'ClipRectangleSize="0 0"/></PlusConfiguration>')
    with pytest.warns(UserWarning, match="means no clipping"):
        read_plus_config(cfg)
    cfg.write_text('<html><VolumeReconstruction OutputSpacing="1 1 1"/></html>')
    with pytest.raises(InputError, match="not a PLUS configuration: its root element is <html>"):
        read_plus_config(cfg)
    src = save_npz(tmp_path / "s.npz")
    assert run("reconstruct", src, "--plus-config", cfg, "--out", tmp_path / "out") == 2
    assert "root element is <html>" in capsys.readouterr().err


# --- 8. --force replaces the whole result set ------------------------------------------------------

def test_force_rerun_with_fewer_outputs_removes_the_old_ones(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz", channel_pa=small_arrays()["frames"])
    out = tmp_path / "out"
    assert run("reconstruct", src, "--out", out, "--no-mrb") == 0, capsys.readouterr().err
    assert (out / "render.png").exists() and (out / "volume_pa.nrrd").exists()
    (out / "notes.txt").write_text("mine")
    src2 = save_npz(tmp_path / "s2.npz")  # no channel this time
    assert run("reconstruct", src2, "--out", out, "--no-render", "--no-mrb", "--force") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["coverage.nrrd", "notes.txt", "report.json", "volume.nrrd"], names
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["outputs"]) == ["coverage.nrrd", "report.json", "volume.nrrd"]
    assert not list(tmp_path.glob(".freehandrecon-*"))


# --- 9. messages say the right thing ----------------------------------------------------------------

def test_messages_name_the_real_problem(tmp_path, capsys):
    cal = np.eye(4)
    cal[0, 0] = np.nan
    with pytest.raises(CalibrationError) as err:
        geometry.validate_transforms(cal[None], "ImageToProbe matrix")
    assert "tracker status" not in str(err.value)
    # calibrate-speckle has no --poses option: its message must not suggest it
    src = save_npz(tmp_path / "s.npz", image_to_world=None)
    assert run("calibrate-speckle", src, "--out", tmp_path / "c.json") == 2
    err = capsys.readouterr().err
    assert "--poses" not in err and "tracked sweep" in err
    # a command-line user is told --force, not force=True
    out = tmp_path / "o.npz"
    out.write_text("x")
    assert run("convert", save_npz(tmp_path / "t.npz"), out) == 3
    err = capsys.readouterr().err
    assert "--force" in err and "force=True" not in err


def test_seq_nrrd_without_transforms_names_the_missing_file(tmp_path):
    from freehandrecon.io.slicer_files import write_seq_nrrd

    arrays = small_arrays()
    paths = write_seq_nrrd(sweep_from_arrays(arrays["frames"], 0.5, arrays["image_to_world"]),
                           tmp_path / "s.seq.nrrd")
    for p in paths:
        if p.name != "s.seq.nrrd":
            p.unlink()
    sweep = read_sweep(tmp_path / "s.seq.nrrd")
    with pytest.raises(InputError, match=r"s_ImageToReference.seq.mha beside it"):
        sweep.pixel_to_world()


def test_warnings_are_plain_lines_on_the_command_line(tmp_path, capsys):
    src = save_npz(tmp_path / "s.npz", timestamps=np.array([0.0, 1, 1, 2, 3, 4]))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run("info", src) == 0
    err = capsys.readouterr().err
    assert "freehandrecon: warning: 1 frame(s) repeat" in err
    assert ".py:" not in err and "UserWarning" not in err


def test_help_has_no_rest_markup():
    from freehandrecon.commands.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in [("freehandrecon", parser), *sub.items()]:
        text = p.format_help()
        assert "``" not in text and "**" not in text and ":class:" not in text, name


# --- 10. info on a PLUS recording without its config ---------------------------------------------

def test_info_on_plus_sweep_without_config(capsys):
    assert run("info", SPINE) == 0, capsys.readouterr().err
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 21 and info["frame_size"] == [820, 616]
    assert info["transforms_in_file"] == ["ProbeToTrackerTransform", "ReferenceToTrackerTransform",
                                          "StylusToTrackerTransform"]
    assert "ImageToReference" in info["poses_note"] and info["has_poses"] is False
    assert info["duration_s"] > 0


# --- 11. the Python API -------------------------------------------------------------------------------

def test_logic_api_refuses_wrong_arguments():
    from freehandrecon.logic import ReconstructionRequest, reconstruct_sweep

    arrays = small_arrays()
    sweep = sweep_from_arrays(arrays["frames"], 0.5, arrays["image_to_world"])
    with pytest.raises(InputError, match="Expected a freehandrecon.sweep.Sweep.*int"):
        reconstruct_sweep(42, ReconstructionRequest())
    with pytest.raises(InputError, match="Expected a ReconstructionRequest"):
        reconstruct_sweep(sweep, {"spacing_mm": 1})
    for bad in ("abc", None, 0, -1, float("nan"), (1, 2), True):
        with pytest.raises(InputError, match="one or three positive numbers"):
            reconstruct_sweep(sweep, ReconstructionRequest(spacing_mm=bad))


def test_slicer_logic_reconstruct_validates_arguments():
    from freehandrecon.io.slicer_scene import new_scene
    from freehandrecon.io.slicer_sequences import sweep_to_browser
    from freehandrecon.module_logic import FreehandReconLogic

    scene = new_scene()
    logic = FreehandReconLogic(scene)
    with pytest.raises(InputError, match="browserNode must be a sequence browser.*int"):
        logic.reconstruct(42)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Empty")
    with pytest.raises(InputError, match="'Empty' is empty"):
        logic.reconstruct(seq)
    browser = sweep_to_browser(scene, sweep_from_arrays(small_arrays()["frames"], 0.5,
                                                        small_arrays()["image_to_world"]), name="S")
    for bad in ("abc", None):
        with pytest.raises(InputError, match=f"got {bad!r}"):
            logic.reconstruct(browser, spacingMm=bad)
