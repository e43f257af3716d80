"""Which 3D Slicer versions the module supports, and what differs between them (Qt-free, unit-tested).

FreehandRecon needs Slicer 5.4 or later: the module uses ``slicer.parameterNodeWrapper`` and
``slicer.i18n``, both new in 5.4 (read in Slicer's sources: Base/Python/slicer at v5.2.2 has
neither, v5.4.0 has both). Slicer 5.4-5.8 ship Python 3.9.
"""

from __future__ import annotations

import re
from typing import Any, Tuple, Union

MINIMUM = (5, 4)

# SampleData.registerCustomSampleDataSource: 5.4-5.6 take ``loadFileType`` (default "VolumeFile", so an
# .mrb is downloaded but not loaded); 5.8 renamed it ``loadFileTypes`` and keeps ``loadFileType`` as a
# deprecated alias (Modules/Scripted/SampleData/SampleData.py at v5.4.0, v5.6.0, v5.8.0).
SAMPLE_DATA_FILE_TYPES_FROM = (5, 8)

Version = Tuple[int, ...]


def parse(version: Union[str, Tuple[int, ...], Any]) -> Version:
    """(major, minor, patch) from "5.6.2", "5.13.31053.0", (5, 6) or a ``slicer.app`` (its majorVersion,
    minorVersion and, when present, patchVersion)."""
    if hasattr(version, "majorVersion"):
        return (int(version.majorVersion), int(version.minorVersion), int(getattr(version, "patchVersion", 0) or 0))
    if isinstance(version, str):
        nums = [int(n) for n in re.findall(r"\d+", version.split("-", 1)[0])[:3]]
        if len(nums) < 2:
            raise ValueError(f"not a Slicer version: {version!r}")
        return tuple(nums + [0] * (3 - len(nums)))
    nums = [int(n) for n in version][:3]
    if len(nums) < 2:
        raise ValueError(f"not a Slicer version: {version!r}")
    return tuple(nums + [0] * (3 - len(nums)))


def text(version: Version) -> str:
    """"5.2" for (5, 2, 0); "5.6.1" for (5, 6, 1)."""
    v = parse(version)
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")


def is_supported(version: Any) -> bool:
    return parse(version)[:2] >= MINIMUM


def unsupported_message(version: Any) -> str | None:
    """The message the module shows on a Slicer older than :data:`MINIMUM` (None when supported)."""
    if is_supported(version):
        return None
    return (f"FreehandRecon needs 3D Slicer {MINIMUM[0]}.{MINIMUM[1]} or later; this is {text(version)}. "
            "Install a newer Slicer from https://download.slicer.org.")


def sample_data_load_keywords(version: Any) -> dict[str, str]:
    """The keyword that makes SampleData load a registered .mrb as a scene, for this Slicer version."""
    key = "loadFileTypes" if parse(version)[:2] >= SAMPLE_DATA_FILE_TYPES_FROM else "loadFileType"
    return {key: "SceneFile"}
