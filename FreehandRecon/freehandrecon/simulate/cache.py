"""A folder cache of simulated sweeps, shared by pose training and the quality guard.

File names carry :data:`~freehandrecon.simulate.SIMULATOR_VERSION`, so a newer simulator never
reads an older one's sweeps; entries are written atomically and a broken one is regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..sweep import Sweep


def cached_sweep(cache: Path | None, stem: str, make: Callable[[], Sweep]) -> Sweep:
    """``make()``, read from / written to ``cache/<stem>_sim<SIMULATOR_VERSION>.npz`` (no cache: just ``make()``)."""
    from . import SIMULATOR_VERSION

    if cache is None:
        return make()
    path = Path(cache) / f"{stem}_sim{SIMULATOR_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return Sweep(frames=z["frames"], pixel_spacing=tuple(float(v) for v in z["pixel_spacing"]),
                             image_to_world=z["image_to_world"], metadata=json.loads(str(z["metadata"])))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a broken cache entry is regenerated
    sweep = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=sweep.frames, image_to_world=sweep.image_to_world,
             pixel_spacing=np.asarray(sweep.pixel_spacing), metadata=json.dumps(sweep.metadata, default=str))
    tmp.replace(path)
    return sweep
