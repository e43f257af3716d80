"""Shipped model files: ``<name>.json`` (description, with the sha256 of the weights) beside
``<name>.safetensors``. One resolution and checksum scheme for the pose model and the quality guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ResourceError

MODEL_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
DEFAULT_POSE_MODEL = "posenet_sim_v3"  # the shipped learned pose model (here, not in poses.learned: no torch)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model_files(path: str | Path | None, default_name: str, fmt: str, what: str, fix: str
                        ) -> tuple[Path, Path, dict[str, Any]]:
    """``(json path, weights path, description)`` of the model at ``path``.

    ``path`` may be None (the shipped ``default_name`` in Resources/Models), the bare name of a
    shipped model (``posenet_sim_v2``: pins an earlier release), a folder (its ``default_name``.json,
    else its first .json), the .json or the .safetensors. Raises :class:`ResourceError` naming
    ``what`` with ``fix`` when the description is missing, unreadable or not of format ``fmt``.
    """
    p = Path(MODEL_DIR / f"{default_name}.json" if path is None else path)
    if path is not None and not p.exists() and str(p) == p.name and (MODEL_DIR / f"{p.name}.json").is_file():
        p = MODEL_DIR / f"{p.name}.json"  # a shipped model by name (a file of that name here takes precedence)
    if p.is_dir():
        candidates = sorted(p.glob("*.json"))
        if not candidates:
            raise ResourceError(f"No {what} (.json + .safetensors) in {p}.", fix)
        p = p / f"{default_name}.json" if (p / f"{default_name}.json").exists() else candidates[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        names = ", ".join(shipped_names(fmt)) or "none"
        raise ResourceError(f"The {what} description {p} does not exist.",
                            f"Give an existing .json (beside its .safetensors), or the name of a shipped {what} "
                            f"({names}). {fix}")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ResourceError(f"The {what} description {p} is not readable JSON ({exc}).", fix) from exc
    if meta.get("format") != fmt:
        raise ResourceError(f"{p} is not a FreehandRecon {what} (format {meta.get('format')!r}).", fix)
    return p, p.parent / meta.get("weights", p.with_suffix(".safetensors").name), meta


def shipped_names(fmt: str) -> list[str]:
    """Names of the models of format ``fmt`` shipped in Resources/Models (what ``--model NAME`` accepts)."""
    names = []
    for js in sorted(MODEL_DIR.glob("*.json")):
        try:
            if json.loads(js.read_text()).get("format") == fmt:
                names.append(js.stem)
        except (OSError, ValueError):
            continue
    return names


def verify_weights(js: Path, weights: Path, meta: dict[str, Any], what: str, fix: str) -> None:
    """Refuse missing weights, or weights whose sha256 differs from the one in the description."""
    if not weights.exists():
        raise ResourceError(f"The {what} weights {weights} are missing.", fix)
    digest = sha256_file(weights)
    if digest != meta.get("sha256"):
        raise ResourceError(f"The {what} weights {weights} do not match the checksum in {js.name} "
                            f"(sha256 {digest[:12]}..., expected {str(meta.get('sha256'))[:12]}...): the file is "
                            f"corrupt, truncated or from another {what}.", fix)
