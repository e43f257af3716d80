"""Seeded mutation fuzzing of every reader: only FreehandReconError may escape, no hang, bounded memory.

Small valid files of each format are written once; each case copies one, damages it (byte flips,
truncation, inserted junk, a duplicated or deleted run of bytes) and reads it back. A reader may
succeed (the damage hit pixel data) or raise a FreehandReconError subclass; anything else - a raw
ValueError, KeyError, zlib.error, a hang - fails the test with the case's seed, format and mutation.

FREEHANDRECON_FUZZ_CASES (default 300) sets the number of cases, shared evenly by the formats.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from freehandrecon.compound import options_from_plus_config
from freehandrecon.errors import FreehandReconError
from freehandrecon.geometry import params_to_matrix
from freehandrecon.io import read_sweep, write_sweep
from freehandrecon.io.matrix_file import read_matrix_file
from freehandrecon.io.plus_config import read_plus_config
from freehandrecon.io.pose_file import read_pose_file
from freehandrecon.io.tusrec import read_tusrec_calibration
from freehandrecon.sweep import Sweep

CASES = int(os.environ.get("FREEHANDRECON_FUZZ_CASES", "300"))
SECONDS_PER_CASE = 10.0
# Peak memory may grow by at most this much in any one case (a damaged header must not make a reader
# allocate what it declares). The total grows too: each MRML scene of the .seq.nrrd reader keeps ~5-12 MB.
MAX_CASE_RSS_GROWTH_MB = 256
DATA = Path(__file__).parent / "Data"


class CaseTimeout(Exception):
    """Raised by the alarm when one read takes longer than SECONDS_PER_CASE."""


def _small_sweep() -> Sweep:
    rng = np.random.default_rng(7)
    n, h, w = 4, 12, 16
    poses = params_to_matrix(np.c_[np.zeros((n, 2)), np.arange(n) * 0.5, rng.normal(size=(n, 3))])
    return Sweep(frames=rng.integers(0, 255, (n, h, w), dtype=np.uint8), pixel_spacing=(0.3, 0.3),
                 image_to_world=poses, timestamps=0.1 * np.arange(n),
                 channels={"photoacoustic": rng.integers(0, 255, (n, h, w), dtype=np.uint8)},
                 metadata={"note": "fuzz"})


def _build_corpus(folder: Path) -> dict[str, tuple[Path, callable]]:
    """``{case name: (file to damage, reader)}``; companion files stay intact beside it."""
    sweep = _small_sweep()
    corpus = {}
    for name in ("s.npz", "s.igs.mha", "s.h5", "s.seq.nrrd"):
        sub = folder / name.replace(".", "_")
        sub.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_sweep(sweep, sub / name)
        corpus[name] = (sub / name, lambda p: read_sweep(p))
    corpus["s.h5 calib_matrix.csv"] = (folder / "s_h5" / "calib_matrix.csv", read_tusrec_calibration)
    corpus["s.seq.nrrd transforms"] = (folder / "s_seq_nrrd" / "s_ImageToReference.seq.mha",
                                       lambda p: read_sweep(p.parent / "s.seq.nrrd"))
    corpus["s.seq.nrrd channel"] = (folder / "s_seq_nrrd" / "s_channel-photoacoustic.seq.nrrd",
                                    lambda p: read_sweep(p.parent / "s.seq.nrrd"))
    mhd = folder / "mhd"
    mhd.mkdir()
    from freehandrecon.io.metaimage import write_metaimage

    write_metaimage(mhd / "s.mhd", sweep.frames, spacing=(0.3, 0.3, 1.0), compress=False,
                    fields={"UltrasoundImageOrientation": "MF"})
    corpus["s.mhd header"] = (mhd / "s.mhd", lambda p: read_sweep(p))
    corpus["s.mhd raw"] = (mhd / "s.raw", lambda p: read_sweep(p.parent / "s.mhd"))
    corpus["spine config"] = (_copy(DATA / "igsio" / "Config_VolumeReconstruction_SpinePhantom_NN_MEAN.xml", folder),
                              lambda p: (read_plus_config(p), options_from_plus_config(p)))
    corpus["matrix.txt"] = (_write(folder / "matrix.txt", "# ImageToProbe\n0.1 0 0 5\n0 0.1 0 6\n0 0 1 7\n0 0 0 1\n"),
                            read_matrix_file)
    poses = folder / "poses"
    poses.mkdir()
    from freehandrecon.io.pose_file import write_pose_output

    write_pose_output(sweep, poses / "p.seq.mha")
    corpus["p.seq.mha"] = (poses / "p.seq.mha", lambda p: read_pose_file(p, 4))
    return corpus


def _copy(src: Path, folder: Path) -> Path:
    shutil.copy(src, folder / src.name)
    return folder / src.name


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One damaged copy of ``data`` and a description of the damage."""
    b = bytearray(data)
    kind = rng.choice(["flip", "flips", "truncate", "insert", "duplicate", "delete", "digit"])
    if kind == "flip":
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        return bytes(b), f"flip bit at {i}"
    if kind == "flips":
        idx = rng.integers(len(b), size=int(rng.integers(2, 9)))
        for i in idx:
            b[int(i)] = int(rng.integers(256))
        return bytes(b), f"random bytes at {sorted(int(i) for i in idx)}"
    if kind == "truncate":
        n = int(rng.integers(len(b)))
        return bytes(b[:n]), f"truncate to {n}"
    if kind == "insert":
        i = int(rng.integers(len(b) + 1))
        junk = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        return bytes(b[:i]) + junk + bytes(b[i:]), f"insert {len(junk)} bytes at {i}"
    if kind == "duplicate":
        i = int(rng.integers(len(b)))
        n = int(rng.integers(1, 256))
        return bytes(b[:i + n]) + bytes(b[i:i + n]) + bytes(b[i + n:]), f"duplicate {n} bytes at {i}"
    if kind == "delete":
        i = int(rng.integers(len(b)))
        n = int(rng.integers(1, 64))
        return bytes(b[:i]) + bytes(b[i + n:]), f"delete {n} bytes at {i}"
    # text formats: replace a digit with another character (a sign, a dot, a letter, a huge exponent)
    digits = [i for i, c in enumerate(b[:65536]) if 48 <= c <= 57]
    if not digits:
        return bytes(b), "no digit"
    i = int(rng.choice(digits))
    new = rng.choice([b"-", b".", b"e99", b"nan", b"9999999999", b"x", b" ", b"0"])
    return bytes(b[:i]) + new + bytes(b[i + 1:]), f"digit at {i} -> {new!r}"


def _alarm(signum, frame):
    raise CaseTimeout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _build_corpus(tmp_path_factory.mktemp("fuzz"))


def test_corpus_reads_back_intact(corpus):
    """The undamaged files are valid, so damage is what the fuzz cases exercise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (path, reader) in corpus.items():
            assert reader(path) is not None, name


def test_fuzz_readers(corpus, capsys):
    rng = np.random.default_rng(19)
    names = sorted(corpus)
    originals = {name: corpus[name][0].read_bytes() for name in names}
    outcomes: Counter = Counter()
    rss0 = rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worst = (0.0, "")
    previous = signal.signal(signal.SIGALRM, _alarm)
    t_start = time.perf_counter()
    try:
        for case in range(CASES):
            name = names[case % len(names)]
            path, reader = corpus[name]
            damaged, how = _mutate(originals[name], rng)
            path.write_bytes(damaged)
            signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reader(path)
                outcomes["read"] += 1
            except FreehandReconError as err:
                outcomes[type(err).__name__] += 1
            except CaseTimeout:
                pytest.fail(f"case {case} ({name}, {how}) took over {SECONDS_PER_CASE} s")
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {case} ({name}, {how}): {type(exc).__name__}: {exc}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                path.write_bytes(originals[name])
            now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            worst = max(worst, ((now - rss) / 1024, f"case {case} ({name}, {how})"))
            rss = now
    finally:
        signal.signal(signal.SIGALRM, previous)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    with capsys.disabled():
        print(f"\nfuzz: {CASES} cases over {len(names)} formats in {time.perf_counter() - t_start:.1f} s: "
              f"{dict(sorted(outcomes.items()))}; peak RSS grew {growth_mb:.0f} MB in all, at most "
              f"{worst[0]:.0f} MB in {worst[1]}")
    assert sum(outcomes.values()) == CASES
    assert worst[0] < MAX_CASE_RSS_GROWTH_MB, worst
