"""The grid the mesh lives on: area frequency, transformers' heat, and the vehicles that arrive.

Pure numpy, no clock and no I/O: each model takes its inputs and a step length and returns its
new state, so the fleet runner steps thousands of them with a few array operations.
"""
