"""The `freehandrecon` command line, end to end on the real PLUS spine sweep."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.commands.main import build_parser, main

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
NN_MEAN = DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console script exactly as a user would."""
    exe = shutil.which("freehandrecon", path=str(Path(sys.executable).parent))
    assert exe, "the freehandrecon console script is not installed next to this Python"
    return subprocess.run([exe, "--quiet", *args], capture_output=True, text=True, timeout=600)


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert {"reconstruct", "info", "convert", "bench"} <= set(subparsers)
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"'{name} {action.dest}' has no --help text"


def test_product_commands_do_not_import_the_lab():
    """A reconstruction does not wait for the research tools' imports; the lab's commands still parse."""
    code = ("import sys; from freehandrecon.commands.main import build_parser; "
            "build_parser(['--quiet', 'reconstruct', 'x.mha', '--out', 'o']); a = 'freehandrecon.lab' in sys.modules; "
            "p = build_parser(['evaluate', '--out', 'o']); b = 'freehandrecon.lab' in sys.modules; "
            "print(a, b, p.parse_args(['evaluate', '--out', 'o']).command)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "evaluate"]


def test_small_tracked_job_imports_neither_numba_nor_all_of_vtk(tmp_path):
    """What keeps the spine command line's start-up short: a 21-frame sweep with the config's stick filling runs
    on the numpy engine (numba's start-up would cost more than it saves) and the headless scene imports only the
    vtkmodules it uses, not the whole vtk module; the volume still gets its holes filled."""
    code = ("import sys, json; from freehandrecon.commands.main import main; "
            f"rc = main(['--quiet', 'reconstruct', {str(SPINE)!r}, '--plus-config', {str(NN_MEAN)!r}, "
            f"'--out', {str(tmp_path / 'o')!r}, '--no-render', '--no-mrb']); "
            "print(json.dumps([rc] + [m in sys.modules for m in ('numba', 'vtk', 'torch')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, False, False, False]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["compound_engine"] == "numpy" and report["filled_voxels"] > 100_000


@pytest.fixture(scope="module")
def spine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "spine"
    proc = run_cli("reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--spacing", "1.0", "--out", str(out))
    return proc, out


def test_reconstruct_writes_all_outputs(spine_run):
    proc, out = spine_run
    assert proc.returncode == 0, proc.stderr
    for name in ("volume.nrrd", "coverage.nrrd", "scene.mrb", "render.png", "report.json"):
        assert (out / name).stat().st_size > 1000, name
    summary = json.loads(proc.stdout)
    report = json.loads((out / "report.json").read_text())
    assert summary["frames"] == report["frames"] == 21
    assert 0.05 < report["coverage_fraction"] <= 1.0
    assert report["grid"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert report["render"]["foreground_fraction"] > 0.02
    assert not list(out.parent.glob(".freehandrecon-*")), "temporary folder left behind"


def test_volume_file_geometry_matches_report(spine_run):
    import slicer  # real Slicer MRML storage reads the file back

    from freehandrecon.io.slicer_scene import new_scene

    _, out = spine_run
    report = json.loads((out / "report.json").read_text())
    scene = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(out / "volume.nrrd"))
    assert storage.ReadData(node)
    arr = slicer.util.arrayFromVolume(node)
    assert list(arr.shape[::-1]) == report["grid"]["dims_ijk"]
    np.testing.assert_allclose(node.GetOrigin(), report["grid"]["origin_mm"], atol=1e-3)
    assert arr.max() > 100


def test_existing_output_needs_force(spine_run, tmp_path):
    _, out = spine_run
    before = (out / "volume.nrrd").stat().st_mtime_ns
    proc = run_cli("reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--out", str(out))
    assert proc.returncode == 3
    assert "--force" in proc.stderr
    assert (out / "volume.nrrd").stat().st_mtime_ns == before


@pytest.mark.parametrize("args, code, words", [
    (["reconstruct", "missing.igs.mha", "--out", "{tmp}/o"], 2, "does not exist"),
    (["reconstruct", str(SPINE), "--out", "{tmp}/o"], 2, "--plus-config"),
    (["reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--image-to-reference", "ImageToNowhere",
      "--out", "{tmp}/o"], 2, "Nowhere"),
    (["reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--spacing", "0", "--out", "{tmp}/o"], 2, "positive"),
    (["reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--spacing", "0.001", "--max-memory-gb", "1",
      "--out", "{tmp}/o"], 4, "spacing"),
    (["reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--roi", "5000", "5000", "5000", "10", "10", "10",
      "--out", "{tmp}/o"], 2, "ROI"),
])
def test_bad_input_exit_codes_and_nothing_written(tmp_path, args, code, words):
    proc = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == code, proc.stderr
    assert words.lower() in proc.stderr.lower()
    assert "fix:" in proc.stderr
    assert not (tmp_path / "o").exists(), "a failed run must not leave output behind"


def test_truncated_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "truncated.igs.mha"
    bad.write_bytes(SPINE.read_bytes()[: SPINE.stat().st_size // 2])
    assert main(["--quiet", "info", str(bad), "--plus-config", str(NN_MEAN)]) == 2


def test_info_and_convert_round_trip(tmp_path, capsys):
    assert main(["--quiet", "info", str(SPINE), "--plus-config", str(NN_MEAN)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 21 and info["has_poses"] and info["path_length_mm"] > 10
    out = tmp_path / "spine.npz"
    assert main(["--quiet", "convert", str(SPINE), "--plus-config", str(NN_MEAN), str(out)]) == 0
    assert main(["--quiet", "info", str(out)]) == 0
    again = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert again["frames"] == 21 and again["pixel_spacing_mm"] == pytest.approx(info["pixel_spacing_mm"])


def test_importance_mask_png_of_the_wrong_size_is_refused(tmp_path):
    mask = DATA / "igsio" / "ImportanceMask.png"  # IGSIO's 700x640 mask; the spine frames are 820x616
    code = main(["--quiet", "reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--compounding", "importance",
                 "--importance-mask", str(mask), "--no-render", "--no-mrb", "--out", str(tmp_path / "o")])
    assert code == 2
    assert not (tmp_path / "o").exists()


def test_importance_mask_weights_the_mean(tmp_path):
    mask = np.zeros((616, 820), np.uint8)
    mask[:, :410] = 255  # only the left half of every frame counts
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "o"
    code = main(["--quiet", "reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--compounding", "importance",
                 "--importance-mask", str(tmp_path / "mask.npy"), "--fill-holes", "none", "--spacing", "1",
                 "--no-render", "--no-mrb", "--out", str(out)])
    assert code == 0
    full = tmp_path / "full"
    assert main(["--quiet", "reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--fill-holes", "none",
                 "--spacing", "1", "--no-render", "--no-mrb", "--out", str(full)]) == 0
    half = json.loads((out / "report.json").read_text())["coverage_fraction"]
    whole = json.loads((full / "report.json").read_text())["coverage_fraction"]
    assert 0.3 * whole < half < 0.75 * whole


@pytest.mark.parametrize("suffix", [".h5", ".seq.nrrd", ".npz", ".igs.mha"])
def test_same_volume_from_every_input_format(tmp_path, suffix):
    """Convert the spine sweep, reconstruct from the converted file: the same volume comes out."""
    import slicer

    from freehandrecon.io.slicer_scene import new_scene

    converted = tmp_path / f"spine{suffix}"
    assert main(["--quiet", "convert", str(SPINE), "--plus-config", str(NN_MEAN), str(converted)]) == 0
    volumes = []
    for name, args in (("ref", [str(SPINE), "--plus-config", str(NN_MEAN)]), ("conv", [str(converted)])):
        out = tmp_path / name
        assert main(["--quiet", "reconstruct", *args, "--spacing", "1", "--fill-holes", "none",
                     "--no-render", "--no-mrb", "--out", str(out)]) == 0
        scene = new_scene()
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(out / "volume.nrrd"))
        assert storage.ReadData(node)
        volumes.append(slicer.util.arrayFromVolume(node).astype(np.int16))
    ref, conv = volumes
    assert ref.shape == conv.shape
    assert np.mean(np.abs(ref - conv) <= 2) > 0.999
