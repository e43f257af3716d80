"""``freehandrecon adapt``: calibrate once on tracked sweeps, then estimate poses with the probe model.

Real PLUS/IGSIO data for the refusals and the real-sweep check, simulated held-out-site sweeps for the
fast functional run; the slicer-core scene for ``adapt_from_browsers``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from freehandrecon.commands import main as cli
from freehandrecon.adapt import AdaptOptions, FineTuneOptions, adapt_probe
from freehandrecon.errors import Cancelled, InputError, OutputExistsError, ResourceError
from freehandrecon.io import read_sweep, write_sweep
from freehandrecon.model_files import sha256_file
from freehandrecon.poses.learned import DEFAULT_MODEL_NAME
from freehandrecon.sweep import Sweep

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
SPINE_CFG = DATA / "plus" / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"
NWIRE = DATA / "plus" / "NwirePhantomFreehand.igs.mha"
NWIRE_CFG = DATA / "plus" / "PlusDeviceSet_NwirePhantomFreehand_vtkVolumeReconstructorTest2.xml"
TINY = FineTuneOptions(epochs=1, steps_per_epoch=3, batch_size=2, warmup_steps=1)


def sim(seed: int, frames: int = 60) -> Sweep:
    from freehandrecon.simulate import random_sweep

    return random_sweep("site-f", seed, num_frames=frames, kind="linear")  # site-f: held out of training


@pytest.fixture(scope="module")
def sims() -> list[Sweep]:
    return [sim(1), sim(2)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the whole run, once: CLI on a simulated tracked sweep -----------------------------------------

@pytest.fixture(scope="module")
def adapted(tmp_path_factory, sims):
    root = tmp_path_factory.mktemp("adapt")
    write_sweep(sims[0], root / "tracked.npz")
    # the same probe setting without its tracking (another site-f seed would be another probe setting)
    write_sweep(Sweep(sims[0].frames, sims[0].pixel_spacing, metadata=dict(sims[0].metadata)), root / "untracked.npz")
    code = cli.main(["--quiet", "adapt", str(root / "tracked.npz"), "--out", str(root / "probe"), "--epochs", "1",
                     "--steps-per-epoch", "3", "--batch-size", "2"])
    assert code == 0
    return root


@pytest.mark.slow
def test_adapt_writes_a_checksummed_probe_model_and_a_report(adapted):
    out = adapted / "probe"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["probe_model.json", "probe_model.safetensors", "probe_curve.json", "probe_guard.json",
         "probe_guard.safetensors", "report.json"])
    meta = json.loads((out / "probe_model.json").read_text())
    assert meta["sha256"] == sha256_file(out / "probe_model.safetensors")
    assert meta["curve"] == {"file": "probe_curve.json", "sha256": sha256_file(out / "probe_curve.json")}
    assert meta["guard"] == {"file": "probe_guard.json", "sha256": sha256_file(out / "probe_guard.json")}
    assert json.loads((out / "probe_guard.json").read_text())["sha256"] == sha256_file(out / "probe_guard.safetensors")
    assert meta["adapted_from"] == DEFAULT_MODEL_NAME
    report = json.loads((out / "report.json").read_text())
    assert report["split"].startswith("one sweep: frames 0-41 adapt, frames 42-59")
    for method in ("learned", "speckle"):
        assert np.isfinite(report["heldout"][method]["before_pct"])
        assert np.isfinite(report["heldout"][method]["after_pct"])
    assert report["epochs"] == 1 and report["steps"] == 3 and report["seconds"]["total"] > 0
    assert 0.0 <= report["quality_guard"]["heldout_fraction_out_after"] <= 1.0
    assert not [p for p in adapted.iterdir() if p.name.startswith(".freehandrecon")]  # no staging folder left


@pytest.mark.slow
def test_estimate_poses_and_reconstruct_use_the_curve_and_guard_the_probe_model_carries(adapted, capsys):
    model = adapted / "probe" / "probe_model.json"
    capsys.readouterr()
    assert cli.main(["--quiet", "estimate-poses", str(adapted / "untracked.npz"), "--model", str(model),
                     "--out", str(adapted / "poses.seq.mha")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the network takes the fitted curve when adapt kept a candidate made with it (else the typical one)
    uses_probe_curve = json.loads(model.read_text())["learned_curve"] == "probe"
    assert summary["decorrelation_curve"].startswith("probe curve fitted by freehandrecon adapt") == uses_probe_curve
    assert (adapted / "poses.seq.mha").is_file()
    # speckle takes the probe model's curve too
    from freehandrecon.poses import estimate_poses

    est = estimate_poses(read_sweep(adapted / "untracked.npz"), "speckle", model=model)
    assert est.info["curve"].startswith("probe curve fitted by freehandrecon adapt")
    # another probe setting (pixel spacing) than the model was adapted on: said, not silently used
    other = read_sweep(adapted / "untracked.npz")
    est = estimate_poses(Sweep(other.frames, (0.25, 0.25)), "learned", model=model)
    assert any("was adapted on frames of 128x128" in w for w in est.info["warnings"])
    assert not estimate_poses(other, "learned", model=model).info["warnings"]
    assert cli.main(["--quiet", "reconstruct", str(adapted / "untracked.npz"), "--poses", "learned", "--model",
                     str(model), "--no-render", "--no-mrb", "--out", str(adapted / "vol")]) == 0
    report = json.loads((adapted / "vol" / "report.json").read_text())
    assert report["quality"]["guard"] == "probe_guard"
    assert report["pose_estimation"]["decorrelation_curve"] == summary["decorrelation_curve"]


@pytest.mark.slow
def test_a_probe_model_with_a_changed_curve_or_guard_is_refused(adapted, tmp_path):
    from freehandrecon.poses.learned import load_model

    for name in ("probe_curve.json", "probe_guard.json"):
        copy = tmp_path / name.split(".")[0]
        shutil.copytree(adapted / "probe", copy)
        with open(copy / name, "a") as fh:
            fh.write(" ")
        with pytest.raises(ResourceError, match="checksum"):
            load_model(copy / "probe_model.json")


@pytest.mark.slow
def test_adapt_refuses_to_overwrite_without_force_and_replaces_with_it(adapted, sims):
    out = adapted / "probe"
    before = (out / "probe_model.json").read_bytes()
    with pytest.raises(OutputExistsError, match="probe_model.json"):
        adapt_probe([("a", sims[0])], out, AdaptOptions(TINY))
    assert (out / "probe_model.json").read_bytes() == before


# --- refusals: before any long work, nothing written ------------------------------------------------

def test_a_too_short_real_sweep_is_refused_with_its_fix(tmp_path, capsys):
    code = cli.main(["--quiet", "adapt", str(SPINE), "--plus-config", str(SPINE_CFG), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == InputError.exit_code
    assert "has 21 frames; adapt needs at least 40" in err and "fix: Record a longer tracked sweep" in err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["still", "constant", "untracked", "mismatch"])
def test_bad_inputs_are_refused_before_any_work(tmp_path, sims, case):
    s = sims[0]
    named = [("s.npz", s)]
    if case == "still":  # the probe barely moves: 0.01 mm per frame
        poses = np.repeat(s.image_to_world[:1], s.num_frames, axis=0)
        poses[:, 2, 3] += 0.01 * np.arange(s.num_frames)
        named = [("s.npz", s.with_poses(poses))]
        match = "barely moves"
    elif case == "constant":
        named = [("s.npz", Sweep(np.full_like(s.frames, 90), s.pixel_spacing, s.image_to_world))]
        match = "blank"
    elif case == "untracked":
        named = [("s.npz", Sweep(s.frames, s.pixel_spacing))]
        match = "has no tracking"
    else:
        named = [("a.npz", s), ("b.npz", Sweep(s.frames, (0.3, 0.3), s.image_to_world))]
        match = "b.npz does not match a.npz"
    with pytest.raises(InputError, match=match) as info:
        adapt_probe(named, tmp_path / "probe", AdaptOptions(TINY))
    assert info.value.fix
    assert leftovers(tmp_path) == []


def test_nearly_constant_frames_have_no_speckle(tmp_path, sims):
    s = sims[0]
    rng = np.random.default_rng(0)
    faint = (100 + rng.integers(0, 2, s.frames.shape)).astype(np.uint8)  # not blank, but no texture either
    with pytest.raises(InputError, match="has no speckle"):
        adapt_probe([("faint", Sweep(faint, s.pixel_spacing, s.image_to_world))], tmp_path / "p", AdaptOptions(TINY))
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_cancel_during_training_writes_nothing(tmp_path, sims):
    stages: list[str] = []

    def cancel() -> bool:
        return "adapt" in stages  # past the curve, the baseline and the gain, inside the fine-tuning

    with pytest.raises(Cancelled):
        adapt_probe([("s", sims[0])], tmp_path / "probe", AdaptOptions(FineTuneOptions(epochs=1, steps_per_epoch=20,
                                                                                         batch_size=2)),
                    progress=lambda stage, f: stages.append(stage), should_cancel=cancel)
    assert "adapt" in stages
    assert leftovers(tmp_path) == []


def test_several_sweeps_hold_out_whole_sweeps(sims):
    from freehandrecon.adapt import split_sweeps

    split = split_sweeps([("a", sims[0]), ("b", sims[1]), ("c", sims[0])])
    assert [n for n, _ in split.adapt] == ["a", "b"] and [n for n, _ in split.heldout] == ["c"]
    one = split_sweeps([("a", sims[0])])
    assert one.adapt[0][1].num_frames == 42 and one.heldout[0][1].num_frames == 18
    np.testing.assert_array_equal(one.heldout[0][1].frames, sims[0].frames[42:])


# --- the module logic on slicer-core's scene ----------------------------------------------------------

@pytest.mark.slow
def test_module_logic_adapts_from_browsers(tmp_path, sims, monkeypatch):
    import slicer

    from freehandrecon.adapt.browsers import adapt_from_browsers, adaptation_summary
    from freehandrecon.io.slicer_scene import new_scene
    from freehandrecon.io.slicer_sequences import sweep_to_browser
    from freehandrecon.module_logic import FreehandReconLogic

    scene = new_scene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    a = sweep_to_browser(scene, sims[0], name="SweepA")
    # a second sweep of the same probe setting: the first played backwards (a functional check, not a measurement)
    first = sims[0]  # played backwards, with the clock still running forwards
    back = dataclasses.replace(first, frames=np.ascontiguousarray(first.frames[::-1]),
                               image_to_world=np.ascontiguousarray(first.image_to_world[::-1]))
    b = sweep_to_browser(scene, back, name="SweepB")
    short = sweep_to_browser(scene, sims[0].subset(slice(0, 30)), name="Short")
    logic = FreehandReconLogic(scene)
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="Short has 30 frames"):
        adapt_from_browsers(logic, short, tmp_path / "bad")
    assert leftovers(tmp_path) == []
    stages = []
    report = adapt_from_browsers(logic, [a, "SweepB"], tmp_path / "probe", lambda s, f: stages.append(s), epochs=1,
                                 stepsPerEpoch=2)
    assert report["heldout"]["sweeps"] == ["SweepB"] and report["adaptation"]["sweeps"] == ["SweepA"]
    assert {"curve", "adapt", "guard"} <= set(stages)
    assert (tmp_path / "probe" / "probe_model.json").is_file()
    summary = adaptation_summary(report)  # the panel's status line after "Adapt to my probe"
    held = report["heldout"]["learned"]
    assert f"{held['before_pct']:.1f} % -> {held['after_pct']:.1f} %" in summary
    assert f"({report['heldout']['frames']} held-out frames" in summary
    assert scene.GetNumberOfNodes() == nodes  # adapting adds nothing to the scene
    transforms = logic.estimatePoses(b, "learned", model=str(tmp_path / "probe" / "probe_model.json"))
    assert transforms.GetNumberOfDataNodes() == back.num_frames


# --- a real sweep: adaptation should not make drift worse ---------------------------------------------

@pytest.mark.slow
def test_adapting_on_the_real_nwire_sweep_does_not_worsen_held_out_drift(tmp_path):
    sweep = read_sweep(NWIRE, plus_config=NWIRE_CFG)
    report = adapt_probe([("nwire", sweep)], tmp_path / "probe",
                         AdaptOptions(FineTuneOptions(epochs=1, steps_per_epoch=12), threads=2))
    learned = report["heldout"]["learned"]
    assert report["split"].startswith("one sweep: frames 0-67 adapt, frames 68-96")
    assert learned["after_pct"] <= learned["before_pct"] + 5.0
    assert report["quality_guard"]["heldout_fraction_out_after"] < report["quality_guard"]["heldout_fraction_out_before"]
