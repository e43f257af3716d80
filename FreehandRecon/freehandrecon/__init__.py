"""FreehandRecon core: freehand 3D ultrasound reconstruction without Qt.

Layering (imports only go down): geometry -> sweep -> io / compound -> mrml -> logic / render -> cli.
"""

__version__ = "0.1.0"
