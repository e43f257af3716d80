"""Training of the learned pose estimator (``freehandrecon train``): data, loop, command."""
