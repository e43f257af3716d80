"""What each action needs beyond a stock Slicer, and the requirement checks of Slicer 5.4-5.10's install path."""

import sys
from importlib import metadata
from pathlib import Path

import pytest

from freehandrecon import dependencies

REQUIREMENTS = Path(__file__).resolve().parents[1] / "FreehandRecon" / "Resources" / "requirements.txt"


def test_needs_per_action():
    assert dependencies.needed_for("tracked") == []  # the numpy engine compounds without torch
    assert dependencies.needed_for("tracked", fill_holes="normalized") == []
    assert dependencies.needed_for("tracked", fill_holes="stick") == []  # numpy fills with sticks too
    assert dependencies.needed_for("learned", fill_holes="stick") == ["torch", "safetensors"]  # torch does it then
    assert dependencies.needed_for("tracked", device="cuda") == ["torch"]
    assert dependencies.needed_for("speckle") == ["torch"]
    assert dependencies.needed_for("learned") == ["torch", "safetensors"]
    assert dependencies.needed_for("tracked", check_quality=True) == ["torch", "safetensors"]


def test_numba_is_an_optional_speed_up_not_a_need():
    for poses in ("tracked", "learned", "speckle"):
        assert "numba" not in dependencies.needed_for(poses)
    assert dependencies.OPTIONAL == ("numba",)
    assert dependencies.optional_missing() == []  # installed here
    assert dependencies.optional_missing(lambda name: None) == ["numba"]


def test_missing_finds_without_importing():
    sys.modules.pop("safetensors", None)
    assert dependencies.missing(["numpy", "safetensors", "no_such_package_freehandrecon"]) == [
        "no_such_package_freehandrecon"]
    assert "safetensors" not in sys.modules  # found, not imported


def test_parse_requirement():
    assert dependencies.parse_requirement("h5py>=3.8") == ("h5py", [(">=", "3.8")])
    assert dependencies.parse_requirement("foo[bar] >=1.2, <2 ; python_version>'3'") == ("foo", [(">=", "1.2"),
                                                                                                ("<", "2")])
    assert dependencies.parse_requirement("safetensors") == ("safetensors", [])
    with pytest.raises(ValueError):
        dependencies.parse_requirement("h5py=>3")


@pytest.mark.parametrize("numeric", [False, True], ids=["packaging", "numeric fallback"])
@pytest.mark.parametrize("version, specs, ok", [
    ("3.8.0", [(">=", "3.8")], True),
    ("3.7.9", [(">=", "3.8")], False),
    ("3.10.1", [(">=", "3.8")], True),            # 3.10 > 3.8 (not a string comparison)
    ("2.13.0+cpu", [(">=", "2.0"), ("<", "3")], True),
    ("0.4.5", [("==", "0.4.5")], True),
    ("0.4.5", [("!=", "0.4.5")], False),
    ("1.4.2", [("~=", "1.4")], True),
    ("2.0", [("~=", "1.4")], False),
    ("0.3.9", [(">", "0.4")], False),
])
def test_version_satisfies(monkeypatch, numeric, version, specs, ok):
    if numeric:  # Slicer ships packaging from 5.4 on; the fallback must agree with it anyway
        assert dependencies._numeric_satisfies(version, specs) is ok
    else:
        assert dependencies.version_satisfies(version, specs) is ok


def test_unmet_requirements_checks_versions_not_only_presence():
    lines = dependencies.read_requirements(REQUIREMENTS)
    assert [dependencies.parse_requirement(line)[0] for line in lines] == ["h5py", "safetensors", "numba"]
    installed = {"h5py": "3.7.0", "safetensors": "0.4.3", "numba": "0.68.1"}

    def version_of(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    assert dependencies.unmet_requirements(lines, version_of) == ["h5py>=3.8"]  # too old
    del installed["safetensors"], installed["numba"]
    assert dependencies.unmet_requirements(lines, version_of) == lines          # too old + missing
    installed.update(h5py="3.12.1", safetensors="0.5.0", numba="0.68.1")
    assert dependencies.unmet_requirements(lines, version_of) == []
    installed["numba"] = "0.58.0"  # too old for numpy 2
    assert dependencies.unmet_requirements(lines, version_of) == ["numba>=0.60"]
    installed["numba"] = "0.60.0"
    assert dependencies.unmet_requirements(lines, version_of) == []
    assert dependencies.unmet_requirements(lines) == []  # this environment has both


def test_install_declined_is_a_cancellation_with_a_plain_message():
    from freehandrecon.errors import Cancelled

    err = dependencies.InstallDeclined()
    assert isinstance(err, Cancelled) and err.problem == "Dependencies not installed."
