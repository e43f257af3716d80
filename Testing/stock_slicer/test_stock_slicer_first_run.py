"""A first run of the module on a stock 3D Slicer: no torch, h5py, tqdm, safetensors or pytorch-msssim.

The panel must get as far as "install these dependencies" cleanly (selecting a sweep, checking the inputs,
loading the sample, telling what an action still needs), and what needs nothing must work.
"""

import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ABSENT_IN_STOCK_SLICER, MODULE_DIR


def test_this_python_is_a_stock_slicer_python():
    for name in ABSENT_IN_STOCK_SLICER:
        assert importlib.util.find_spec(name) is None, f"{name} is installed: this is not a stock-Slicer environment"
    for name in ("numpy", "vtk", "slicer"):
        assert importlib.util.find_spec(name) is not None


def test_the_package_comes_from_the_module_folder_not_from_pip():
    import freehandrecon

    assert freehandrecon.__file__.startswith(str(MODULE_DIR / "freehandrecon"))
    # not installed into this interpreter (the developer's editable install may leave an .egg-info in the module
    # folder, which is on sys.path here as in Slicer; that is not an install into this Python)
    site = Path(sys.prefix).resolve()
    try:
        dist = metadata.distribution("freehandrecon")
    except metadata.PackageNotFoundError:
        return
    location = Path(str(dist.locate_file(""))).resolve()
    assert site not in (location, *location.parents), f"freehandrecon is pip-installed in {location}"


def test_what_the_panel_imports_loads_without_the_heavy_packages():
    import freehandrecon.dependencies  # noqa: F401
    import freehandrecon.io  # noqa: F401  (io/tusrec imports h5py only to read a .h5)
    import freehandrecon.io.slicer_files  # noqa: F401
    import freehandrecon.io.slicer_scene  # noqa: F401
    import freehandrecon.io.slicer_sequences  # noqa: F401
    import freehandrecon.module_logic  # noqa: F401
    import freehandrecon.scene.browser  # noqa: F401
    import freehandrecon.scene.display  # noqa: F401
    import freehandrecon.scene.nodes  # noqa: F401
    import freehandrecon.slicer_version  # noqa: F401

    assert not set(ABSENT_IN_STOCK_SLICER) & set(sys.modules)


def test_sample_loads_and_tracked_inputs_are_complete(scene):
    from types import SimpleNamespace

    from freehandrecon.module_logic import SAMPLES, FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    assert browser.GetNumberOfItems() == SAMPLES[0].frames
    # what the panel's observer calls on each change: it reaches the image sequence through freehandrecon.io.slicer_sequences
    params = SimpleNamespace(inputBrowser=browser, imageSequence=None, poses="tracked", spacingMm=1.0)
    assert logic.checkInputs(params) is None
    assert logic.checkInputs(SimpleNamespace(inputBrowser=None, imageSequence=None)).startswith("Select the sweep")


def test_missing_dependencies_name_what_each_action_needs():
    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    assert logic.missingDependencies("learned") == ["torch", "safetensors"]
    assert logic.missingDependencies("speckle") == ["torch"]
    assert logic.missingDependencies("tracked", checkQuality=True) == ["torch", "safetensors"]
    assert logic.missingDependencies("tracked") == []
    assert logic.missingDependencies("tracked", fillHoles="stick") == []  # numpy fills with sticks


def test_learned_poses_say_to_install_and_leave_the_scene_unchanged(scene, tmp_path):
    from freehandrecon.errors import ResourceError
    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    before = scene.GetNumberOfNodes()
    with pytest.raises(ResourceError) as err:
        logic.reconstruct(browser, poses="learned")
    assert "torch" in err.value.problem and "Install dependencies" in err.value.fix
    with pytest.raises(ResourceError):
        logic.checkSweep(browser)
    with pytest.raises(ResourceError) as err:  # the speckle calibration needs torch too: nothing is written
        logic.calibrateSpeckle(browser, tmp_path / "curve.json")
    assert "torch" in err.value.problem and not (tmp_path / "curve.json").exists()
    assert scene.GetNumberOfNodes() == before


def test_reading_a_tusrec_file_says_to_install_h5py(tmp_path):
    from freehandrecon.errors import ResourceError
    from freehandrecon.io import read_sweep

    scan = tmp_path / "scan.h5"
    scan.write_bytes(b"not read: h5py is missing")
    with pytest.raises(ResourceError, match="h5py"):
        read_sweep(scan)


def test_requirements_install_nothing_that_pulls_torch():
    from freehandrecon import dependencies

    lines = dependencies.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert [dependencies.parse_requirement(line)[0] for line in lines] == ["h5py", "safetensors", "numba"]
    assert dependencies.unmet_requirements(lines) == lines  # none installed here


def test_memory_estimate_needs_no_torch(scene):
    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    assert 1.0 < logic.memoryEstimateMb(browser, 0.5, channels=[]) < 1000.0


def test_tracked_reconstruction_needs_no_torch(scene):
    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    volume = logic.reconstruct(browser, poses="tracked", spacingMm=1.0, showIn3D=False)
    assert volume.GetImageData().GetScalarRange()[1] > 200


def test_stick_hole_filling_needs_neither_numba_nor_torch(scene):
    import numpy as np
    from slicer.util import arrayFromVolume

    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    plain = arrayFromVolume(logic.reconstruct(browser, poses="tracked", spacingMm=0.5, showIn3D=False)).copy()
    filled = arrayFromVolume(logic.reconstruct(browser, poses="tracked", spacingMm=0.5, fillHoles="stick",
                                               showIn3D=False))
    assert logic.lastReport["compound_engine"] == "numpy" and logic.lastReport["filled_voxels"] > 10_000
    assert np.count_nonzero(filled) > np.count_nonzero(plain)
    assert "numba" not in sys.modules and "torch" not in sys.modules


def test_panel_calls_from_no_dependencies_to_the_reconstructed_sample(scene):
    """What the panel does on a stock Slicer, in its order: select the sample, check the inputs, show the memory
    estimate and the dependency state, Apply (tracked, 0.5 mm, coverage, 3D rendering), as the self-test checks."""
    from types import SimpleNamespace

    import numpy as np
    from slicer import util

    from freehandrecon.module_logic import FreehandReconLogic

    logic = FreehandReconLogic()
    browser = logic.loadSample()
    params = SimpleNamespace(inputBrowser=browser, imageSequence=None, poses="tracked", spacingMm=0.5)
    assert logic.checkInputs(params) is None
    assert logic.missingDependencies("tracked") == []
    estimate = logic.memoryEstimateMb(browser, 0.5, channels=[])
    volume = logic.reconstruct(browser, poses="tracked", spacingMm=0.5, showIn3D=True, coverage=True)
    array = util.arrayFromVolume(volume)
    assert array.shape == (105, 106, 147) and volume.GetSpacing() == (0.5, 0.5, 0.5)
    assert abs(logic.lastReport["coverage_fraction"] - 0.2213) < 0.01
    coverage = util.arrayFromVolume(logic.lastNodes["coverage"])
    assert float(array[coverage > 0].mean()) > float(array[coverage == 0].mean())
    assert logic.lastNodes["display"] is not None
    assert 1.0 < estimate and logic.lastReport["memory_estimate_mb"] <= estimate * 1.01
    assert np.isfinite(array).all()


def test_live_reconstruction_runs_on_the_numpy_engine(scene):
    """The panel's Live section on a stock Slicer: frames pushed into an image node (as OpenIGTLinkIF does) grow a
    volume with neither numba nor torch; the result equals the offline numpy reconstruction of the same frames."""
    import numpy as np
    from slicer import util

    from freehandrecon.compound import compound, grid_from_roi
    from freehandrecon.module_logic import FreehandReconLogic
    from freehandrecon.scene.nodes import add_volume_node

    logic = FreehandReconLogic()
    sweep = logic.readSweep(logic.loadSample())
    p2w = sweep.pixel_to_world()
    image = add_volume_node(scene, sweep.frames[0][None], p2w[0], "Image_Reference")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
    corners = np.einsum("nij,kj->nki", p2w, [[0, 0, 0, 1], [819, 0, 0, 1], [0, 615, 0, 1], [819, 615, 0, 1]])
    lo, hi = corners[..., :3].reshape(-1, 3).min(0), corners[..., :3].reshape(-1, 3).max(0)
    roi.SetCenter(*((lo + hi) / 2))
    roi.SetSize(*(hi - lo))
    live = logic.liveReconstruction(image, spacingMm=1.0, roiNode=roi, showIn3D=False)
    live.start()
    for i in range(sweep.num_frames):
        add_volume_node(scene, sweep.frames[i][None], p2w[i], "Image_Reference", replace=image)
    volume = live.stop()
    assert live.status["frames_used"] == sweep.num_frames
    assert not {"torch", "numba"} & set(sys.modules)
    grid = live.lastResult.grid
    assert np.allclose(grid.origin, grid_from_roi(tuple((lo + hi) / 2), tuple(hi - lo), 1.0).origin, atol=1e-6)
    offline = compound(sweep, grid).volume_as(np.uint8)  # the numpy engine here, all frames at once
    assert np.array_equal(util.arrayFromVolume(volume), offline)
