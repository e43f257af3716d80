"""Stick hole filling on the CPU without torch: compiled with numba (compound/holes_numba.py) and with numpy
alone (compound/holes_numpy.py), each bit for bit the torch implementation (holes.fill_sticks) on random sparse
volumes of odd shapes, every stick count, short and long sticks, truncation, edges, all/nothing filled; the
IGSIO/PLUS stick references through them; numba the same with 1 and 2 threads."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_parity_igsio import CASES, FLOORS

from freehandrecon.compound import HoleFilling, OutputGrid, compound, options_from_plus_config
from freehandrecon.compound import holes
from freehandrecon.io.metaimage import read_metaimage
from freehandrecon.io.plus import sweep_from_plus

from freehandrecon.compound import holes_numpy

numba = pytest.importorskip("numba")  # optional in the product; installed in the test environment
from freehandrecon.compound import holes_numba  # noqa: E402

DATA = Path(__file__).parent / "Data"
FILLERS = {"numba": holes_numba.fill_sticks, "numpy": holes_numpy.fill_sticks}


@pytest.fixture(params=sorted(FILLERS))
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


def _both(vol: np.ndarray, filled: np.ndarray, length: int, sticks: int, truncate: bool = False,
          impl: str = "numba"):
    ours, n = FILLERS[impl](vol, filled, length, sticks, truncate=truncate)
    ref, n_ref = holes.fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), length, sticks, truncate=truncate)
    return ours, n, ref.numpy(), n_ref


def _random(shape: tuple[int, int, int], density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    filled = rng.random(shape) < density
    vol = np.where(filled, rng.uniform(0, 255, shape), rng.uniform(0, 3, shape)).astype(np.float32)
    return vol, filled


def test_directions_are_igsios() -> None:
    assert holes_numba.STICKS == holes.STICKS == holes_numpy.STICKS
    assert holes.STICKS[:3] == ((1, 0, 0), (0, 1, 0), (0, 0, 1)) and len(set(holes.STICKS)) == 13


@pytest.mark.parametrize("sticks", range(1, 14))
def test_every_stick_count_matches_torch_bit_for_bit(sticks: int, impl: str) -> None:
    for k, (shape, density, length) in enumerate([((7, 11, 13), 0.15, 9), ((9, 6, 12), 0.3, 5),
                                                  ((5, 8, 17), 0.08, 16), ((6, 7, 9), 0.2, 20)]):
        vol, filled = _random(shape, density, 100 * sticks + k)
        for truncate in (False, True):
            ours, n, ref, n_ref = _both(vol, filled, length, sticks, truncate, impl)
            assert n == n_ref and n > 0, (shape, length, truncate)
            np.testing.assert_array_equal(ours, ref, err_msg=f"{shape} length {length} truncate {truncate}")


@pytest.mark.parametrize("length", range(2, 16))
def test_every_length_matches_torch_bit_for_bit(length: int, impl: str) -> None:
    vol, filled = _random((8, 10, 12), 0.12, length)
    for sticks in (1, 3):
        for truncate in (False, True):
            ours, n, ref, n_ref = _both(vol, filled, length, sticks, truncate, impl)
            assert n == n_ref
            np.testing.assert_array_equal(ours, ref)
            if length <= 2:  # a stick needs a hole between two filled voxels: at least 3 voxels
                assert n == 0 and np.array_equal(ours, vol)
            if length >= 6:
                assert n > 0
            assert np.array_equal(ours[filled], vol[filled])


@pytest.mark.parametrize("shape", [(1, 9, 11), (7, 1, 10), (6, 8, 1), (1, 1, 15), (2, 3, 2), (1, 1, 1)])
def test_thin_volumes_match_torch(shape: tuple[int, int, int], impl: str) -> None:
    vol, filled = _random(shape, 0.3, sum(shape))
    for length, sticks in ((9, 1), (4, 2), (17, 1), (40, 13)):
        ours, n, ref, n_ref = _both(vol, filled, length, sticks, True, impl)
        assert n == n_ref
        np.testing.assert_array_equal(ours, ref)


def test_holes_at_the_edges_lattices_and_long_sticks_match_torch(impl: str) -> None:
    # filled voxels only in the interior: holes on every face get sticks only inwards or none at all;
    # a lattice makes many equally short sticks (ties); 130: distances past uint8 (int32 codes: 300)
    shape = (9, 10, 11)
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(5)
    inner = (z > 0) & (z < 8) & (y > 0) & (y < 9) & (x > 0) & (x < 10)
    lattice = (z % 3 == 1) & (y % 2 == 0) & (x % 3 == 1)
    for filled in (inner & (rng.random(shape) < 0.2), lattice, lattice | (rng.random(shape) < 0.05)):
        vol = np.where(filled, rng.uniform(0, 255, shape), 0).astype(np.float32)
        for length, sticks in ((9, 1), (9, 2), (16, 1), (17, 1), (130, 1), (130, 4), (300, 1)):
            ours, n, ref, n_ref = _both(vol, filled, length, sticks, impl=impl)
            assert n == n_ref and n > 0
            np.testing.assert_array_equal(ours, ref)
    edge = np.zeros(shape, bool)
    edge[:, :, 0] = edge[:, :, -1] = True  # only sticks along x (and diagonals) reach the holes
    vol = np.where(edge, 100.0, 0).astype(np.float32)
    ours, n, ref, n_ref = _both(vol, edge, 12, 1, impl=impl)
    assert n == n_ref == int((~edge).sum())
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours, 100.0)


def test_all_filled_and_nothing_filled_change_nothing(impl: str) -> None:
    vol, _ = _random((5, 6, 7), 0.5, 1)
    for filled in (np.ones(vol.shape, bool), np.zeros(vol.shape, bool)):
        ours, n = FILLERS[impl](vol, filled, 9, 1)
        assert n == 0 and np.array_equal(ours, vol) and ours is not vol


def test_one_and_two_threads_give_identical_volumes() -> None:
    vol, filled = _random((23, 31, 37), 0.1, 7)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            results.append([holes_numba.fill_sticks(vol, filled, length, sticks, truncate=True)
                            for length, sticks in ((9, 1), (7, 3))])
    finally:
        numba.set_num_threads(before)
    for (a, na), (b, nb) in zip(*results):
        assert na == nb > 0
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["NN_MEAN", pytest.param("LN_MEAN", marks=pytest.mark.slow),
                                  pytest.param("SPINE_LN_MEAN_STICK", marks=pytest.mark.slow)])
def test_igsio_stick_references_through_numba_and_numpy(mode: str, impl: str) -> None:
    """The IGSIO/PLUS cases that fill holes with sticks: compounded in PLUS arithmetic without hole filling,
    then filled by the numba kernels or numpy; equal to the torch filling and within the parity floor of the
    reference volume."""
    sweep_file, cfg, ref_name = (DATA / p for p in CASES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = sweep_from_plus(sweep_file, plus_config=cfg)
    options, _ = options_from_plus_config(cfg, plus_arithmetic=True)
    hf = options.hole_filling
    assert hf.method == "stick"
    ref = read_metaimage(ref_name)
    grid = OutputGrid(np.array(ref.offset), np.array(ref.spacing), ref.dim_size)
    raw = compound(sweep, grid, dataclasses.replace(options, hole_filling=HoleFilling()))
    vol = np.ascontiguousarray(raw.volume, dtype=np.float32)
    filled = raw.coverage > 0
    ours, n = FILLERS[impl](vol, filled, hf.size, hf.sticks, truncate=True)
    theirs, n_t = holes.fill_sticks(torch.from_numpy(vol), torch.from_numpy(filled), hf.size, hf.sticks,
                                    truncate=True)
    assert n == n_t > 0
    np.testing.assert_array_equal(ours, theirs.numpy())
    diff = np.abs(ours.astype(np.int64) - ref.array.astype(np.int64))
    assert float((diff <= 2).mean()) >= FLOORS[(True, mode)]
