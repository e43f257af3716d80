"""Volume rendering: FreehandRecon's presets on a volume, and the fused B-mode + vessel display.

Display of multi-channel sweeps: B-mode as a grey volume rendering made mostly transparent,
photoacoustic with the "PA-Hot" and Doppler with the "Doppler-Red" preset in the same 3D view
(:func:`show_fused`); :func:`freehandrecon.scene.render.render_fused_png` writes the same picture offscreen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR

from ..errors import InputError
from ..io.slicer_scene import PRESET_NAMES, get_logic, register_presets, unique_name

def _stretch_preset(prop_node: Any, high: float) -> None:
    """Map a preset's 0..255 intensity axis onto 0..``high`` (few nodes; not a per-voxel loop)."""
    scale = high / 255.0
    color, opacity = prop_node.GetColor(), prop_node.GetScalarOpacity()
    for i in range(color.GetSize()):
        v = [0.0] * 6
        color.GetNodeValue(i, v)
        v[0] *= scale
        color.SetNodeValue(i, v)
    for i in range(opacity.GetSize()):
        v = [0.0] * 4
        opacity.GetNodeValue(i, v)
        v[0] *= scale
        opacity.SetNodeValue(i, v)
    prop_node.SetEffectiveRange(0.0, high)


RENDERING_METHODS = {"gpu": "vtkMRMLGPURayCastVolumeRenderingDisplayNode",
                     "cpu": "vtkMRMLCPURayCastVolumeRenderingDisplayNode"}


def show_in_3d(scene: Any, volume_node: Any, preset: str = "US-BMode") -> Any:
    """:func:`show_volume_rendering` with FreehandRecon's presets registered first (a fresh scene lacks them)."""
    if get_logic(scene, "volumerendering").GetPresetByName(preset) is None:
        register_presets(get_logic(scene, "volumerendering"))
    return show_volume_rendering(scene, volume_node, preset=preset)


def show_volume_rendering(scene: Any, volume_node: Any, preset: str = "US-BMode", method: str | None = None,
                          rescale: bool | None = None) -> Any:
    """Give ``volume_node`` a visible volume rendering display node with a FreehandRecon preset.

    Presets ("US-BMode", "PA-Hot", "Doppler-Red") are defined on 0..255; with ``rescale``
    (default: any volume that is not 8-bit) they are stretched onto 0..max of the volume,
    so float or 16-bit reconstructions look the same. ``method``: "gpu" or "cpu" ray casting, or None for
    the volume rendering logic's default (in Slicer: the user's choice in Application Settings > Volume
    rendering; GPU ray casting when none is set); an existing display node is then kept whatever its method.
    Returns the display node (reused if the volume already has one).
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.GetImageData() is None:
        raise InputError("Volume rendering needs a scalar volume node with image data.",
                         "Pass the reconstructed volume node (scene.nodes.add_volume_node returns one).")
    if method is not None and method not in RENDERING_METHODS:
        raise InputError(f"Unknown volume rendering method '{method}'.", "Use 'gpu' or 'cpu' (or None for the default).")
    logic = get_logic(scene, "volumerendering")
    preset_node = logic.GetPresetByName(preset)
    if preset_node is None:
        raise InputError(f"Unknown volume rendering preset '{preset}'.", f"Use one of {', '.join(PRESET_NAMES)}.")
    display = logic.GetFirstVolumeRenderingDisplayNode(volume_node)
    if display is not None and method is not None and not display.IsA(RENDERING_METHODS[method]):
        scene.RemoveNode(display)
        display = None
    if display is None:
        # None: the logic's DefaultRenderingMethod (set from the application settings in Slicer)
        display = logic.CreateVolumeRenderingDisplayNode(None if method is None else RENDERING_METHODS[method])
        scene.AddNode(display)
        display.UnRegister(None)  # the scene holds it now
        volume_node.AddAndObserveDisplayNodeID(display.GetID())
        logic.UpdateDisplayNodeFromVolumeNode(display, volume_node)
    prop = display.GetVolumePropertyNode()
    prop.Copy(preset_node)
    wanted = f"{volume_node.GetName()} {preset}"
    if prop.GetName() != wanted:
        prop.SetName(unique_name(scene, wanted))
    image = volume_node.GetImageData()
    high = float(image.GetScalarRange()[1])
    if rescale is None:
        rescale = image.GetScalarType() != VTK_UNSIGNED_CHAR
    if rescale and high > 0:
        _stretch_preset(prop, high)
    display.SetVisibility(True)
    return display


# --- fused display of channels ------------------------------------------------------------------

CHANNEL_PRESETS = {"photoacoustic": "PA-Hot", "doppler": "Doppler-Red"}
"""Volume rendering preset per channel name; other channels get ``DEFAULT_CHANNEL_PRESET``."""


DEFAULT_CHANNEL_PRESET = "PA-Hot"


BMODE_PRESET = "US-BMode"


BMODE_OPACITY_SCALE = 0.25  # fused view: B-mode context faint enough for the vessels inside to show


SHARED_OPACITY_SCALE = {"doppler": 0.35}  # with photoacoustic shown too: flow as a veil over the absorbers


def channel_pairs(channel_nodes: Mapping[str, Any] | list[Any]) -> list[tuple[Any, str]]:
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
    if not 0.0 < bmode_opacity <= 1.0:
        raise InputError(f"B-mode opacity scale must be in (0, 1], got {bmode_opacity}.", "Use e.g. 0.25.")
    displays = {"bmode": show_volume_rendering(scene, bmode_node, BMODE_PRESET, method=method)}
    if bmode_opacity < 1.0:
        scale_opacity(displays["bmode"], bmode_opacity)
    pairs = channel_pairs(channel_nodes)
    for node, preset in pairs:
        displays[node.GetName()] = show_volume_rendering(scene, node, preset, method=method)
    for (node, _), scale in shared_fades(pairs).items():
        scale_opacity(displays[node.GetName()], scale)
    return displays


def shared_fades(pairs: list[tuple[Any, str]]) -> dict[tuple[Any, str], float]:
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
