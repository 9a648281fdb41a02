"""Devices behind interfaces: meter, inverter, thermal sensor, tamper switch, vehicle link.

``hardware.interfaces`` states the contracts (and the project's sign convention);
``hardware.connect`` opens a device from its URL; ``hardware.modbus`` has the TCP and RTU
drivers and the register maps; ``hardware.simulated`` the physics and its Modbus servers.
This package never imports ``meshagent``.
"""

__version__ = "0.1.0"
