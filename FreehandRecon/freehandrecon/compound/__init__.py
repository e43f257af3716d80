"""Compounding: tracked 2D frames -> 3D volume (grid, masks, scatter kernels, hole filling, memory)."""

from ..fan import FanMask, detect_fan, fan_mask
from .compounder import compound
from .grid import OutputGrid, fit_grid, grid_from_roi
from .memory import estimate_memory_bytes
from .options import CompoundOptions, CompoundResult, HoleFilling
from .plus_options import options_from_plus_config

__all__ = ["OutputGrid", "fit_grid", "grid_from_roi", "FanMask", "detect_fan", "fan_mask", "HoleFilling",
           "CompoundOptions", "CompoundResult", "compound", "estimate_memory_bytes", "options_from_plus_config"]
