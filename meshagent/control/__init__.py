"""The control loop: 10 ms meter polling, spike detection, IEEE 1547 frequency response, interlocks.

``logic.ControlLogic`` decides (synchronous, clock-free); ``loop.ControlLoop`` is its trio
shell. See docs/control.md.
"""
