"""Modbus TCP and RTU drivers (``link``), SunSpec units (``sunspec``), register maps as data
(``registers``) and the device interfaces over them (``devices``)."""
