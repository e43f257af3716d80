"""Multi-channel sweeps: per-channel compounding defaults, channel pairing, fused B-mode + vessel display.

* Compounding: B-mode uses the request's options (mean by default); photoacoustic and Doppler
  default to ``max`` (a vessel seen brightly in one frame should not be averaged away by frames
  that missed it), unless ``ReconstructionRequest.channel_compounding`` says otherwise.
* Poses: channels never get poses of their own; every channel is compounded with the B-mode
  poses (tracked, learned or speckle) of the same sweep.
* Display: B-mode as a grey volume rendering made mostly transparent, photoacoustic with the
  "PA-Hot" and Doppler with the "Doppler-Red" preset in the same 3D view
  (:func:`show_fused`); :func:`render_fused_png` writes the same picture offscreen.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from .compound import CompoundOptions
from .compound.options import COMPOUNDINGS
from .errors import InputError
from .sweep import Sweep

CHANNEL_COMPOUNDING = {"photoacoustic": "max", "doppler": "max"}
"""Default compounding mode per channel name; other channels follow the B-mode options."""
CHANNEL_PRESETS = {"photoacoustic": "PA-Hot", "doppler": "Doppler-Red"}
"""Volume rendering preset per channel name; other channels get ``DEFAULT_CHANNEL_PRESET``."""
DEFAULT_CHANNEL_PRESET = "PA-Hot"
BMODE_PRESET = "US-BMode"
BMODE_OPACITY_SCALE = 0.25  # fused view: B-mode context faint enough for the vessels inside to show
SHARED_OPACITY_SCALE = {"doppler": 0.35}  # with photoacoustic shown too: flow as a veil over the absorbers


def channel_options(base: CompoundOptions, name: str,
                    overrides: Mapping[str, CompoundOptions | str] | None = None) -> CompoundOptions:
    """Compounding options of channel ``name``: an override (full options, or just a mode name),
    else ``base`` with the channel's default mode (:data:`CHANNEL_COMPOUNDING`)."""
    given = (overrides or {}).get(name)
    if isinstance(given, CompoundOptions):
        return given
    mode = given if given is not None else CHANNEL_COMPOUNDING.get(name, base.compounding)
    if mode not in COMPOUNDINGS:
        raise InputError(f"Unknown compounding mode '{mode}' for channel '{name}'.",
                         f"Use one of {', '.join(COMPOUNDINGS)}, e.g. --channel-compounding {name}=max.")
    if mode == "importance" and base.importance_mask is None:
        raise InputError(f"Channel '{name}': compounding 'importance' needs an importance mask.",
                         "Give --importance-mask, or use max/mean for the channel.")
    return replace(base, compounding=mode)


def parse_channel_compounding(items: list[str] | None) -> dict[str, str]:
    """``["photoacoustic=max", "doppler=mean"]`` (the command-line form) -> ``{name: mode}``."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, mode = item.partition("=")
        if not sep or not name or mode not in COMPOUNDINGS:
            raise InputError(f"--channel-compounding '{item}' is not CHANNEL=MODE with a known mode.",
                             f"Use e.g. --channel-compounding doppler=mean (modes: {', '.join(COMPOUNDINGS)}).")
        out[name] = mode
    return out


def attach_channel(sweep: Sweep, channel: Sweep | np.ndarray, name: str, *,
                   timestamps: np.ndarray | None = None, tolerance_s: float | None = None) -> Sweep:
    """A copy of ``sweep`` with ``channel``'s frames as channel ``name`` (e.g. a second PLUS file
    recorded by the same device set: PLUS writes one image stream per sequence file).

    Frame counts and sizes must match; when both have timestamps they must agree within
    ``tolerance_s`` (default: a quarter of the median B-mode frame interval). The channel's own
    poses, if any, are ignored: channels always use the B-mode poses."""
    frames = channel.frames if isinstance(channel, Sweep) else np.asarray(channel)
    stamps = channel.timestamps if isinstance(channel, Sweep) and timestamps is None else timestamps
    check_channel_timestamps(sweep.timestamps, stamps, name, tolerance_s)
    channels = dict(sweep.channels)
    channels[name] = frames
    return Sweep(frames=sweep.frames, pixel_spacing=sweep.pixel_spacing, image_to_world=sweep.image_to_world,
                 timestamps=sweep.timestamps, channels=channels, metadata=dict(sweep.metadata))


def check_channel_timestamps(bmode: np.ndarray | None, channel: np.ndarray | None, name: str,
                             tolerance_s: float | None = None) -> None:
    """Raise :class:`InputError` unless the channel's timestamps match the B-mode ones frame by frame."""
    if bmode is None or channel is None:
        return
    b, c = np.asarray(bmode, dtype=np.float64).ravel(), np.asarray(channel, dtype=np.float64).ravel()
    if b.size != c.size:
        raise InputError(f"Channel '{name}' has {c.size} timestamps but the B-mode sweep has {b.size} frames.",
                         "Acquire or export the channels together so every frame has a partner.")
    if tolerance_s is None:
        gaps = np.diff(b)
        tolerance_s = 0.25 * float(np.median(gaps)) if gaps.size and np.median(gaps) > 0 else 1e-3
    off = np.abs(b - c)
    if off.size and float(off.max()) > tolerance_s:
        k = int(np.argmax(off))
        raise InputError(f"Channel '{name}' frame {k} is at {c[k]:.4f} s but B-mode frame {k} at {b[k]:.4f} s "
                         f"({off.max() * 1000:.1f} ms apart; {int((off > tolerance_s).sum())} frames disagree by more "
                         f"than {tolerance_s * 1000:.1f} ms).",
                         "Export the channels from the same acquisition (one timestamp per frame for all of them), "
                         "or resample the channel onto the B-mode timestamps first.")


# --- display ----------------------------------------------------------------------------------------

def _channel_pairs(channel_nodes: Mapping[str, Any] | list[Any]) -> list[tuple[Any, str]]:
    items = channel_nodes.items() if isinstance(channel_nodes, Mapping) else \
        [(n.GetAttribute("FreehandRecon.Channel") or n.GetName(), n) for n in channel_nodes]
    pairs = []
    for name, node in items:
        key = str(name).split(":", 1)[-1]
        preset = next((p for ch, p in CHANNEL_PRESETS.items() if ch in key.lower()), DEFAULT_CHANNEL_PRESET)
        pairs.append((node, preset))
    return pairs


def scale_opacity(display: Any, scale: float) -> None:
    """Multiply the display's own scalar opacity function by ``scale`` (the preset stays as it is)."""
    opacity = display.GetVolumePropertyNode().GetScalarOpacity()
    for i in range(opacity.GetSize()):
        node = [0.0] * 4
        opacity.GetNodeValue(i, node)
        node[1] *= scale
        opacity.SetNodeValue(i, node)


def show_fused(scene: Any, bmode_node: Any, channel_nodes: Mapping[str, Any] | list[Any], *,
               bmode_opacity: float = BMODE_OPACITY_SCALE, method: str = "gpu") -> dict[str, Any]:
    """Show B-mode (grey, faded) and each channel (coloured) as volume renderings in the 3D views.

    ``channel_nodes``: ``{channel name: volume node}`` (names pick the presets, e.g. ``"photoacoustic"``
    -> PA-Hot, ``"doppler"`` -> Doppler-Red; keys like ``"channel:doppler"`` work too) or a list of
    nodes. Returns ``{"bmode": display node, <name>: display node, ...}``; works the same in the
    Slicer application and in a headless scene."""
    from .scene import nodes as mrml

    if not 0.0 < bmode_opacity <= 1.0:
        raise InputError(f"B-mode opacity scale must be in (0, 1], got {bmode_opacity}.", "Use e.g. 0.25.")
    displays = {"bmode": mrml.show_volume_rendering(scene, bmode_node, BMODE_PRESET, method=method)}
    if bmode_opacity < 1.0:
        scale_opacity(displays["bmode"], bmode_opacity)
    pairs = _channel_pairs(channel_nodes)
    for node, preset in pairs:
        displays[node.GetName()] = mrml.show_volume_rendering(scene, node, preset, method=method)
    for (node, _), scale in _shared_fades(pairs).items():
        scale_opacity(displays[node.GetName()], scale)
    return displays


def _shared_fades(pairs: list[tuple[Any, str]]) -> dict[tuple[Any, str], float]:
    """Opacity factors of channels drawn over others (Doppler over photoacoustic)."""
    presets = {p for _, p in pairs}
    if len(presets) < 2:
        return {}
    fades = {}
    for node, preset in pairs:
        for name, scale in SHARED_OPACITY_SCALE.items():
            if CHANNEL_PRESETS.get(name) == preset:
                fades[(node, preset)] = scale
    return fades


def show_result_fused(scene: Any, nodes: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    """:func:`show_fused` for the node dict of :meth:`ReconstructionLogic.reconstruct` / ``add_result_nodes``
    (``"volume"`` and ``"channel:<name>"`` entries); the panel's one call after a reconstruction."""
    channels = {k.split(":", 1)[1]: v for k, v in nodes.items() if k.startswith("channel:")}
    return show_fused(scene, nodes["volume"], channels, **kw)


def render_fused_png(scene: Any, bmode_node: Any, channel_nodes: Mapping[str, Any] | list[Any],
                     path: str | os.PathLike, *, bmode_opacity: float = BMODE_OPACITY_SCALE,
                     **render_kw: Any) -> dict[str, Any]:
    """Write the fused 3D view (B-mode grey + photoacoustic hot / Doppler red) to a PNG offscreen;
    returns :func:`freehandrecon.render.render_volume_png`'s statistics."""
    from .scene import render

    pairs = _channel_pairs(channel_nodes)
    if not pairs:
        raise InputError("A fused picture needs at least one channel volume (photoacoustic or Doppler).",
                         "Reconstruct a sweep that has extra channels, or use render_volume_png for B-mode alone.")
    show_fused(scene, bmode_node, channel_nodes, bmode_opacity=bmode_opacity,
               method=render_kw.get("method", "gpu"))
    # render_volume_png re-applies the presets; fade the B-mode again after it did, then draw
    scales = {bmode_node.GetID(): bmode_opacity}
    scales.update({node.GetID(): scale for (node, _), scale in _shared_fades(pairs).items()})
    return render.render_volume_png(scene, bmode_node, path, preset=BMODE_PRESET, extra_volumes=pairs,
                                    opacity_scale=scales, **render_kw)
