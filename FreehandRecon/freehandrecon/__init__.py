"""FreehandRecon core: freehand 3D ultrasound reconstruction without Qt.

Layers, bottom to top (a module imports only from its own layer or below; Testing/test_layout.py checks it):
data model (errors, geometry, sweep, channels, fan, model_files, dependencies, slicer_version) -> io ->
simulate -> poses -> compound -> quality -> scene -> logic -> module_logic -> commands.common -> lab -> commands.
"""

__version__ = "0.1.0"
