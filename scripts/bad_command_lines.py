"""Research tool: run many bad `freehandrecon` command lines and count how each one ended.

The command lines are generated from the hardening defect list (issue 19): crafted bad input files
x every sub-command that reads a sweep, bad numeric options of `reconstruct`, and bad output
locations x every command that writes. Each runs in-process through ``freehandrecon.commands.main.main``
(its return value is the exit code). A clean refusal is exit 1-4; exit 70 is a traceback (a bug).

    python scripts/bad_command_lines.py [--show 70] [--limit N]

Prints the counts and, with --show CODE, the command lines that ended with that code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SPINE = REPO / "Testing" / "Data" / "igsio" / "SpinePhantomFreehand.igs.mha"
NN_MEAN = REPO / "Testing" / "Data" / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml"


def _arrays(n: int = 6, h: int = 20, w: int = 24) -> dict:
    rng = np.random.default_rng(0)
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 2, 3] = 0.5 * np.arange(n)
    return dict(frames=rng.integers(1, 255, (n, h, w), dtype=np.uint8), pixel_spacing=np.array([0.5, 0.5]),
                image_to_world=poses, timestamps=0.05 * np.arange(n))


def make_inputs(folder: Path) -> dict[str, Path]:
    """Crafted input files, one per defect; 'valid' is a good tracked sweep."""
    import h5py

    def npz(name: str, **changes) -> Path:
        arrays = _arrays()
        arrays.update(changes)
        path = folder / f"{name}.npz"
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return path

    a = _arrays()
    sheared = a["image_to_world"].copy()
    sheared[:, 0, 1] = 0.5
    scaled = a["image_to_world"].copy()
    scaled[:, :3, :3] *= 2
    projective = a["image_to_world"].copy()
    projective[:, 3, 0] = 0.01
    nan_frames = a["frames"].astype(np.float32)
    nan_frames[2] = np.nan
    out = {
        "valid": npz("valid"),
        "untracked": npz("untracked", image_to_world=None),
        "channel-traversal": npz("trav", **{"channel_../../../victim": a["frames"]}),
        "channel-empty": npz("chempty", **{"channel_": a["frames"]}),
        "metadata-list": npz("metalist", metadata_json=np.array("[1, 2]")),
        "metadata-broken": npz("metabroken", metadata_json=np.array("{")),
        "poses-strings": npz("posestr", image_to_world=np.array(["a"] * 6)),
        "channel-strings": npz("chstr", channel_pa=np.array(["a"] * 6)),
        "spacing-strings": npz("spstr", pixel_spacing=np.array(["x", "y"])),
        "timestamps-2d": npz("ts2d", timestamps=np.zeros((2, 3))),
        "timestamps-backwards": npz("tsback", timestamps=np.arange(6.0)[::-1].copy()),
        "timestamps-nan": npz("tsnan", timestamps=np.array([0, np.nan, 2, 3, 4, 5.0])),
        "frames-nan": npz("fnan", frames=nan_frames),
        "poses-sheared": npz("shear", image_to_world=sheared),
        "poses-scaled": npz("scaled", image_to_world=scaled),
        "poses-projective": npz("proj", image_to_world=projective),
        "one-frame": npz("one", frames=a["frames"][:1], image_to_world=a["image_to_world"][:1],
                         timestamps=a["timestamps"][:1]),
        "missing": folder / "missing.npz",
        "folder": folder,
        "wrong-extension": folder / "valid.txt",
    }
    (folder / "valid.txt").write_bytes(out["valid"].read_bytes())
    (folder / "empty.npz").write_bytes(b"")
    out["empty"] = folder / "empty.npz"
    (folder / "mha.npz").write_bytes(SPINE.read_bytes()[:5000])
    out["mha-renamed-npz"] = folder / "mha.npz"
    truncated = out["valid"].read_bytes()
    (folder / "truncated.npz").write_bytes(truncated[: len(truncated) // 2])
    out["truncated-npz"] = folder / "truncated.npz"
    with h5py.File(folder / "scalar.h5", "w") as f:
        f["frames"] = 5
    out["h5-scalar"] = folder / "scalar.h5"
    with h5py.File(folder / "flat.h5", "w") as f:
        f["frames"] = np.zeros((20, 30), np.uint8)
    out["h5-2d"] = folder / "flat.h5"
    with h5py.File(folder / "huge.h5", "w") as f:
        f.create_dataset("frames", shape=(10**6, 4096, 2400), dtype=np.uint8, chunks=(1, 64, 64), compression="gzip")
    out["h5-huge"] = folder / "huge.h5"
    with h5py.File(folder / "chan.h5", "w") as f:
        f["frames"] = a["frames"]
        f[".._frames"] = a["frames"]
    out["h5-channel-dotdot"] = folder / "chan.h5"
    data = out["valid"].read_bytes()
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0xFF
    (folder / "flipped.npz").write_bytes(bytes(flipped))
    out["byte-flip-npz"] = folder / "flipped.npz"
    h5bytes = bytearray((folder / "chan.h5").read_bytes())
    h5bytes[1500] ^= 0x55
    (folder / "flipped.h5").write_bytes(bytes(h5bytes))
    out["byte-flip-h5"] = folder / "flipped.h5"
    return out


def make_configs(folder: Path) -> dict[str, Path]:
    text = NN_MEAN.read_text()
    cfgs = {
        "reversed-fan": text.replace('ClipRectangleOrigin="0 0"', 'FanAnglesDeg="45 -45" ClipRectangleOrigin="0 0"'),
        "clip-0-10": text.replace('ClipRectangleSize="820 616"', 'ClipRectangleSize="0 10"'),
        "hole-type": text.replace('Type="STICK"', 'Type="MAGIC"'),
        "wrong-root": text.replace("<PlusConfiguration", "<Configuration").replace("</PlusConfiguration",
                                                                                   "</Configuration"),
        "not-xml": "<PlusConfiguration><VolumeReconstruction",
        "nan-matrix": text.replace('Matrix="', 'Matrix="nan ', 1).replace("nan 0.107", "nan", 1),
    }
    out = {}
    for name, body in cfgs.items():
        out[name] = folder / f"{name}.xml"
        out[name].write_text(body)
    return out


BAD_OPTIONS = [
    ["--spacing", "0"], ["--spacing", "-1"], ["--spacing", "nan"], ["--spacing", "inf"], ["--spacing", "1", "2"],
    ["--hole-size", "0"], ["--hole-size", "-3"], ["--fill-holes", "normalized", "--hole-size", "100000"],
    ["--fill-holes", "stick", "--sticks", "0"], ["--fill-holes", "stick", "--sticks", "14"],
    ["--max-memory-gb", "0"], ["--max-memory-gb", "nan"], ["--max-memory-gb", "-2"], ["--max-memory-gb", "1e-9"],
    ["--pixel-threshold", "1e9"], ["--pixel-threshold", "nan"], ["--pixel-threshold", "inf"],
    ["--roi", "nan", "0", "0", "10", "10", "10"], ["--roi", "0", "0", "0", "0", "10", "10"],
    ["--roi", "0", "0", "0", "10", "-10", "10"], ["--roi", "1e6", "1e6", "1e6", "1", "1", "1"],
    ["--clip", "0", "0", "0", "0"], ["--clip", "-1", "0", "10", "10"], ["--clip", "1000", "1000", "5", "5"],
    ["--fan", "1", "2", "3"], ["--fan", "a", "b", "c", "d", "e", "f"], ["--fan", "0", "0", "45", "-45", "0", "10"],
    ["--fan", "0", "0", "-45", "45", "10", "5"], ["--fan", "auto"], ["--pixel-spacing", "0", "0.5"],
    ["--pixel-spacing", "nan", "nan"], ["--compounding", "importance"],
    ["--importance-mask", "/no/such/mask.png", "--compounding", "importance"],
    ["--channel-compounding", "doppler"], ["--channel-compounding", "x=median"],
    ["--poses-file", "/no/such/poses.seq.mha"], ["--poses", "learned", "--model", "/no/such/model.json"],
    ["--curve", "/no/such/curve.json", "--poses", "speckle"], ["--calibration", "/no/such/cal.txt"],
    ["--plus-config", "/no/such/config.xml"], ["--image-to-reference", "Nonsense"],
]


def command_lines(inputs: dict[str, Path], configs: dict[str, Path], folder: Path) -> list[list[str]]:
    out_dir = folder / "outs"
    out_dir.mkdir()
    blocker = folder / "blocker.txt"
    blocker.write_text("x")
    taken = folder / "taken"
    (taken / "volume.nrrd").mkdir(parents=True)
    existing = folder / "existing.npz"
    existing.write_bytes(inputs["valid"].read_bytes())
    counter = itertools.count()

    def fresh(suffix: str = "") -> str:
        return str(out_dir / f"o{next(counter)}{suffix}")

    cmds: list[list[str]] = []
    readers = [name for name in inputs if name not in ("valid",)]
    for name in readers:  # every bad input through every command that reads one
        src = str(inputs[name])
        cmds += [["info", src], ["convert", src, fresh(".npz")],
                 ["reconstruct", src, "--out", fresh(), "--no-render", "--no-mrb"],
                 ["estimate-poses", src, "--method", "speckle", "--out", fresh(".seq.mha")],
                 ["calibrate-speckle", src, "--out", fresh(".json")],
                 ["reconstruct", src, "--out", fresh(), "--no-render", "--no-mrb", "--poses", "speckle"]]
    valid = str(inputs["valid"])
    for opts in BAD_OPTIONS:  # bad options on a good sweep and on the PLUS recording
        cmds.append(["reconstruct", valid, "--out", fresh(), "--no-render", "--no-mrb", *opts])
        cmds.append(["reconstruct", str(SPINE), "--plus-config", str(NN_MEAN), "--out", fresh(), "--no-render",
                     "--no-mrb", *opts])
    for name, cfg in configs.items():  # bad PLUS configs
        cmds.append(["reconstruct", str(SPINE), "--plus-config", str(cfg), "--out", fresh(), "--no-render"])
        cmds.append(["info", str(SPINE), "--plus-config", str(cfg)])
        cmds.append(["reconstruct", valid, "--plus-config", str(cfg), "--out", fresh(), "--no-render"])
    bad_outputs = {"file": str(blocker), "under-file": str(blocker / "x" / "out.npz"),
                   "read-only": "/proc/freehandrecon-out.npz", "folder": str(taken), "existing": str(existing)}
    for (label, target), force in itertools.product(bad_outputs.items(), (False, True)):
        f = ["--force"] if force else []
        cmds += [["convert", valid, target, *f],
                 ["estimate-poses", valid, "--method", "speckle", "--out", target, *f],
                 ["calibrate-speckle", valid, "--out", target, *f],
                 ["quality", valid, "--out", target, *f]]
        out = target[:-4] if target.endswith(".npz") else target
        cmds.append(["reconstruct", valid, "--out", out, "--no-render", "--no-mrb", *f])
    cmds += [["info", str(SPINE)], ["info", str(SPINE), "--calibration", "/no/such/cal.txt"],
             ["convert", valid, fresh(".txt")], ["convert", valid, fresh(".seq.mha")]]
    return cmds


def run_one(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from freehandrecon.commands.main import main

            code = main(["--quiet", *argv])
        except SystemExit as exc:  # argparse usage errors exit 2 themselves
            code = int(exc.code or 0)
    return code, err.getvalue()


def main_script() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", type=int, action="append", default=[], help="print command lines with this exit code")
    parser.add_argument("--limit", type=int, help="run only the first N command lines")
    parser.add_argument("--src", type=Path, default=REPO / "FreehandRecon",
                        help="folder holding the freehandrecon package to test (default: this checkout's)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        (folder / "cfg").mkdir()
        cmds = command_lines(make_inputs(folder / "in"), make_configs(folder / "cfg"), folder)[: args.limit]
        codes: Counter = Counter()
        t0 = time.perf_counter()
        for argv in cmds:
            code, err = run_one(argv)
            codes[code] += 1
            if code in args.show:
                print(f"[{code}] freehandrecon {' '.join(argv)}\n    {err.strip().splitlines()[-1] if err.strip() else ''}")
        victim = (folder.parent / "victim.nrrd").exists() or any(folder.parent.glob("victim*"))
    refused = sum(v for k, v in codes.items() if 1 <= k <= 4)
    print(f"{len(cmds)} command lines in {time.perf_counter() - t0:.0f} s: exit codes {dict(sorted(codes.items()))}")
    print(f"clean refusals (1-4): {refused}; exit 70: {codes.get(70, 0)}; exit 0: {codes.get(0, 0)}; "
          f"other: {len(cmds) - refused - codes.get(70, 0) - codes.get(0, 0)}; file outside the temp folder: {victim}")
    return 1 if codes.get(70, 0) else 0


if __name__ == "__main__":
    sys.exit(main_script())
