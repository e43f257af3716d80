"""The ``freehandrecon`` command line."""
