"""Simulated devices with physics (see ``charger``, ``site``, ``vehicles``), their in-process
implementations of the device interfaces (``devices``), and their Modbus servers (``serve``)."""

from hardware.simulated.charger import ChargerSnapshot, SimulatedCharger
from hardware.simulated.devices import (
    SimInverter,
    SimSiteMeter,
    SimTamperSwitch,
    SimThermalSensor,
    SimVehicleLink,
)
from hardware.simulated.site import MeterSnapshot, SimulatedSite, SimWorld
from hardware.simulated.vehicles import VEHICLE_SPECS, EVBattery, VehicleConfig, VehicleSpec

__all__ = [
    "VEHICLE_SPECS",
    "ChargerSnapshot",
    "EVBattery",
    "MeterSnapshot",
    "SimInverter",
    "SimSiteMeter",
    "SimTamperSwitch",
    "SimThermalSensor",
    "SimVehicleLink",
    "SimWorld",
    "SimulatedCharger",
    "SimulatedSite",
    "VehicleConfig",
    "VehicleSpec",
]
