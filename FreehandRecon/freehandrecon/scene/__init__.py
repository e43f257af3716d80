"""The Slicer scene: nodes, sweep <-> browser, display, offscreen rendering."""
