"""Vehicle specifications for the EV emulator, and the battery + BMS of one simulated vehicle.

Theory of operation
-------------------
``VEHICLE_SPECS`` is a small table of real V2G-capable vehicles: usable battery energy, the
power the vehicle accepts when charging through a bidirectional charger, and the power it
will export. The figures come from published sources, cited per row (``source``); where a
row's figure is the maker's own spec rather than the cited article, the comment says so.
They set realistic magnitudes for simulations; they are not a compatibility list.

The emulated vehicle then applies the caps seen in the field:

* ``firmware="old"``: early bidirectional firmware caps discharge at 50 % of the vehicle's
  maximum charge power (``OLD_FIRMWARE_DISCHARGE_FRACTION``);
* ``max_discharge_amps`` (the charger setting MAX_DISCHARGE_AMPS): discharge current limit
  at the battery's nominal DC voltage, so ``EVMaximumDischargePower <= A * V``;
* the BMS stops discharge at MinimumSOC (status 0x03 Battery_Lower_Limit) and charge at
  100 % (0x01).

``EVBattery`` integrates power into state of charge exactly (energy = integral of power);
it never reads a clock: the charger that owns it passes the elapsed time.
"""

from __future__ import annotations

import attrs

from hardware.interfaces import BmsStatus, VehicleParameters

OLD_FIRMWARE_DISCHARGE_FRACTION = 0.5


@attrs.frozen
class VehicleSpec:
    model: str
    battery_kwh: float  # usable energy
    charge_kw: float  # max charge power through a bidirectional charger
    discharge_kw: float  # max export power (V2G / V2H)
    nominal_v: float  # battery nominal DC voltage (for MAX_DISCHARGE_AMPS)
    source: str


# Sources (retrieved 2026):
#  [MB]  mybroadband.co.za, "Electric cars that could also give load-shedding backup power",
#        2023-04-14: F-150 Lightning 131 kWh pack, 9.6 kW output; Nissan Leaf 39 kWh, 7 kW DC
#        (CHAdeMO) output.
#  [EVC] evcentral.com.au, "V2G charging tech for Mitsubishi Outlander PHEVs back to MY17":
#        Outlander PHEV battery 12.0 kWh, 13.8 kWh from December 2019; V2G through the
#        Wallbox Quasar (7.4 kW bidirectional, maker's spec).
#  [WC]  whichcar.com.au, "Mitsubishi confirms Australia-first Vehicle-to-Grid power exports"
#        (Outlander / Eclipse Cross PHEV V2G approval, Wallbox Quasar 1 hardware).
#  [MAKER] a figure from the maker's spec sheet as we remember it; no copy of the sheet
#        was fetched to check it (none was reachable from our build machines). Treat
#        [MAKER] figures as unverified until someone checks them against the sheet.
VEHICLE_SPECS: dict[str, VehicleSpec] = {
    s.model: s
    for s in (
        # Leaf ZE1 40 kWh (39 kWh usable [MB]); CHAdeMO charge 46 kW [MAKER]; 7 kW out [MB]
        VehicleSpec("nissan-leaf-40", 39.0, 46.0, 7.0, 350.0, "[MB], charge [MAKER]"),
        # F-150 Lightning extended range: 131 kWh, 9.6 kW out [MB]; 19.2 kW AC in [MAKER]
        VehicleSpec("ford-f150-lightning-er", 131.0, 19.2, 9.6, 400.0, "[MB], charge [MAKER]"),
        # Outlander PHEV MY20: 13.8 kWh [EVC]; through a 7.4 kW Quasar both ways [EVC][WC]
        VehicleSpec("mitsubishi-outlander-phev", 13.8, 7.4, 7.4, 300.0, "[EVC] [WC]"),
    )
}


@attrs.frozen
class VehicleConfig:
    """One emulated vehicle: a spec plus its session state and firmware caps."""

    spec: VehicleSpec
    present_soc_pct: float = 60.0
    minimum_soc_pct: float = 20.0
    target_soc_pct: float = 80.0
    firmware: str = "current"  # "current" or "old" (discharge capped at 50 % of charge power)
    max_discharge_amps: float | None = None  # MAX_DISCHARGE_AMPS; None = no setting
    min_discharge_w: float = 0.0  # EVMinimumDischargePower
    vehicle_id: str = ""

    def __attrs_post_init__(self) -> None:
        if self.firmware not in ("current", "old"):
            raise ValueError(f"firmware must be 'current' or 'old', got {self.firmware!r}")
        if not 0 <= self.minimum_soc_pct <= self.present_soc_pct <= 100:
            raise ValueError("need 0 <= minimum SoC <= present SoC <= 100")

    @classmethod
    def of(cls, model: str, **kw: object) -> VehicleConfig:
        try:
            spec = VEHICLE_SPECS[model]
        except KeyError:
            raise ValueError(f"unknown vehicle model {model!r} (known: {', '.join(VEHICLE_SPECS)})") from None
        return cls(spec, **kw)  # type: ignore[arg-type]

    def max_discharge_w(self) -> float:
        """EVMaximumDischargePower after firmware and MAX_DISCHARGE_AMPS caps."""
        w = self.spec.discharge_kw * 1000.0
        if self.firmware == "old":
            w = min(w, OLD_FIRMWARE_DISCHARGE_FRACTION * self.spec.charge_kw * 1000.0)
        if self.max_discharge_amps is not None:
            w = min(w, self.max_discharge_amps * self.spec.nominal_v)
        return w


@attrs.define
class EVBattery:
    """State of one connected vehicle's battery; SoC moves only through ``integrate``."""

    config: VehicleConfig
    soc_pct: float = attrs.field(init=False)
    bms_fault: bool = False  # a BMS that refuses transfer (injected by tests)

    def __attrs_post_init__(self) -> None:
        self.soc_pct = self.config.present_soc_pct

    @property
    def capacity_wh(self) -> float:
        return self.config.spec.battery_kwh * 1000.0

    def bms_status(self) -> BmsStatus:
        if self.bms_fault:
            return BmsStatus.BATTERY_FAULT
        if self.soc_pct <= self.config.minimum_soc_pct + 1e-9:
            return BmsStatus.BATTERY_LOWER_LIMIT
        if self.soc_pct >= 100.0 - 1e-9:
            return BmsStatus.BATTERY_UPPER_LIMIT
        return BmsStatus.NORMAL

    def charge_limit_w(self) -> float:
        status = self.bms_status()
        if status in (BmsStatus.BATTERY_FAULT, BmsStatus.BATTERY_UPPER_LIMIT):
            return 0.0
        return self.config.spec.charge_kw * 1000.0

    def discharge_limit_w(self) -> float:
        status = self.bms_status()
        if status in (BmsStatus.BATTERY_FAULT, BmsStatus.BATTERY_LOWER_LIMIT):
            return 0.0
        return self.config.max_discharge_w()

    def integrate(self, energy_wh: float) -> None:
        """Move ``energy_wh`` into (+) or out of (-) the battery, bounded by the BMS limits."""
        soc = self.soc_pct + energy_wh / self.capacity_wh * 100.0
        self.soc_pct = min(100.0, max(self.config.minimum_soc_pct if energy_wh < 0 else 0.0, soc))

    def parameters(self) -> VehicleParameters:
        return VehicleParameters(
            ev_maximum_charge_power_w=self.charge_limit_w(),
            ev_maximum_discharge_power_w=self.discharge_limit_w(),
            ev_minimum_discharge_power_w=self.config.min_discharge_w,
            present_soc_pct=round(self.soc_pct, 2),
            minimum_soc_pct=self.config.minimum_soc_pct,
            target_soc_pct=self.config.target_soc_pct,
            battery_energy_capacity_wh=self.capacity_wh,
        )
