"""The register images of simulated devices: a site meter unit and a charger unit.

Theory of operation
-------------------
A ``MeterUnit`` (a ``SimulatedSite``) or ``ChargerUnit`` (a ``SimulatedCharger``) renders
its register image from the physics' snapshot on every read, through the same register
data and codec the drivers use (``hardware.modbus.registers``), and turns writes into
commands (``WSet`` -> ``set_power``, ``SafeMode``, ``ClrReq`` -> ``clear_faults``,
``CtrCmd`` + ``CtrReq`` -> ``open_contactors`` / ``close_contactors``). A write must fall on
writable points of one model, whole points only; the points of one request act together
once it is all taken in (``after_write``), so a setpoint is never enabled before its value.
The charger's SunSpec 704 reversion timer is ``hardware.simulated.reversion``; ``tick`` runs
it (on every request and periodically, from the server).

No I/O here: ``hardware.simulated.serve`` puts these units behind real pymodbus servers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
from pymodbus.constants import ExcCodes

from hardware import __version__ as HW_VERSION
from hardware.interfaces import DeviceFault, FaultKind
from hardware.modbus.registers import (
    CHARGER_LAYOUT,
    CHARGER_MODEL_ID,
    CLEAR_CLEARED,
    CLEAR_NOTHING,
    CLEAR_REFUSED,
    CONTACTOR_STATES,
    CTR_CMD_CLOSE,
    CTR_CMD_EMERGENCY_OPEN,
    CTR_CMD_NONE,
    CTR_CMD_OPEN,
    CTR_DONE,
    CTR_DONE_UNDER_LOAD,
    CTR_NOTHING,
    CTR_REFUSED_UNDER_LOAD,
    CTR_REFUSED_WELDED,
    FAULT_BITS,
    INVERTER_STATES,
    METER_LAYOUT,
    METER_TIMING_MODEL_ID,
    MODELS,
    STANDARD_CHARGER_LAYOUT,
    SUNS_MARKER,
    RegisterError,
    UnitLayout,
    decode,
    encode,
)
from hardware.simulated.charger import ChargerSnapshot, SimulatedCharger
from hardware.simulated.reversion import ReversionTimer
from hardware.simulated.site import SimulatedSite

Values = dict[str, object]


def _bits(codes: tuple[str, ...]) -> int:
    return sum(1 << FAULT_BITS.index(c) for c in codes if c in FAULT_BITS)


def _fit_sf(max_abs: float, bits: int = 16, signed: bool = False, finest: int = 0) -> int:
    """Smallest scale factor >= ``finest`` at which ``max_abs`` fits the integer type."""
    limit = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 2  # keep the not-implemented value free
    sf = finest
    while max_abs / (10.0 ** sf) > limit and sf < 10:
        sf += 1
    return sf


@attrs.define(eq=False)
class Unit:
    layout: UnitLayout
    clock: Callable[[], float]
    name: str
    unit_id: int = 1
    write_log: list[tuple[int, int]] = attrs.field(factory=list)  # (address, registers) of each write

    def model_values(self, model_id: int) -> Values:
        raise NotImplementedError

    def write(self, model_id: int, point: str, value: object) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_ADDRESS

    def after_write(self, model_id: int) -> ExcCodes | None:
        """A write request to ``model_id`` has been taken in whole: act on it (once)."""
        return None

    def tick(self) -> None:
        """Time passes: run the unit's own timers (called on every request and periodically)."""

    def common(self, model: str) -> Values:
        return {"Mn": "meshagent", "Md": model, "Opt": "simulated", "Vr": HW_VERSION, "SN": self.name[-32:],
                "DA": self.unit_id}

    def render_into(self, registers: list[int], start_address: int, address: int, count: int) -> None:
        """Write the image of every model that overlaps [address, address+count)."""
        base = self.layout.base
        if address < base + 2:
            registers[base - start_address:base - start_address + 2] = SUNS_MARKER
        hi = address + count
        for mid, start in self.layout.starts().items():
            model = MODELS[mid]
            end = start + model.length + 2
            if start >= hi or end <= address:
                continue
            values = self.model_values(mid)
            scale = {k: int(v) for k, v in values.items() if k.endswith("_SF") and isinstance(v, int)}
            image: list[int] = []
            for p in model.points:
                if p.name == "ID":
                    image.append(mid)
                elif p.name == "L":
                    image.append(model.length)
                else:
                    v = values.get(p.name)
                    try:
                        image += encode(p, v, scale.get(p.sf, 0) if p.sf else 0)
                    except RegisterError:
                        image += encode(p, None)  # does not fit: report "not implemented"
            registers[start - start_address:end - start_address] = image
        end_marker = self.layout.end
        if address <= end_marker + 1 and hi > end_marker:
            registers[end_marker - start_address:end_marker - start_address + 2] = [0xFFFF, 0]

    def apply_write(self, address: int, values: list[int]) -> ExcCodes | None:
        """A write request: must fall on writable points of one model, whole points only."""
        del self.write_log[:-99]
        self.write_log.append((address, len(values)))
        for mid, start in self.layout.starts().items():
            model = MODELS[mid]
            if not start <= address < start + model.length + 2:
                continue
            offset = address - start
            cursor, i = offset, 0
            scale = {k: int(v) for k, v in self.model_values(mid).items() if k.endswith("_SF") and isinstance(v, int)}
            while i < len(values):
                point = next((p for p in model.points if p.offset == cursor), None)
                if point is None or point.access != "RW" or i + point.size > len(values):
                    return ExcCodes.ILLEGAL_ADDRESS
                value = decode(point, values[i:i + point.size], scale.get(point.sf, 0) if point.sf else 0)
                if (result := self.write(mid, point.name, value)) is not None:
                    return result
                cursor += point.size
                i += point.size
            return self.after_write(mid)
        return ExcCodes.ILLEGAL_ADDRESS


@attrs.define(eq=False)
class MeterUnit(Unit):
    site: SimulatedSite = attrs.field(kw_only=True)

    @classmethod
    def of(cls, site: SimulatedSite, unit_id: int = 1) -> MeterUnit:
        return cls(METER_LAYOUT, site.clock, f"{site.name}/meter", unit_id, site=site)

    def model_values(self, model_id: int) -> Values:
        if model_id == 1:
            return self.common("sim-site-meter")
        s = self.site.snapshot()
        if model_id == METER_TIMING_MODEL_ID:
            age_ms = max(0, round((self.clock() - s.taken_at_s) * 1e3))
            return {"Age": min(age_ms, 0xFFFFFFFE), "Seq": s.sample_count % 0xFFFFFFFF}
        v, w = s.voltage_v, s.active_power_w
        amps = abs(w) / (3 * v) if v and math.isfinite(v) and math.isfinite(w) else None
        return {"A": None if amps is None else amps * 3, "AphA": amps, "AphB": amps, "AphC": amps,
                "PhV": v, "PhVphA": v, "PhVphB": v, "PhVphC": v, "PPV": v * math.sqrt(3),
                "PPVphAB": v * math.sqrt(3), "PPVphBC": v * math.sqrt(3), "PPVphCA": v * math.sqrt(3),
                "Hz": s.frequency_hz, "W": w, "WphA": w / 3, "WphB": w / 3, "WphC": w / 3,
                "TotWhExp": s.energy_export_wh, "TotWhImp": s.energy_import_wh, "Evt": 0}


@attrs.define(eq=False)
class ChargerUnit(Unit):
    charger: SimulatedCharger = attrs.field(kw_only=True)
    frequency_hz: Callable[[], float] = lambda: 50.0
    voltage_v: Callable[[], float] = lambda: 230.0
    wset_ena: int = 0
    wset_mod: int = 1
    wset_w: float = 0.0  # SunSpec sign: + generation (our discharge)
    reversion: ReversionTimer = attrs.field(factory=ReversionTimer)  # SunSpec 704's, see its module
    _power_written: bool = False
    clear_ack: int = 0
    clear_result: int = CLEAR_NOTHING
    ctr_cmd: int = CTR_CMD_NONE
    ctr_ack: int = 0
    ctr_result: int = CTR_NOTHING
    ctr_power_w: float = 0.0

    @classmethod
    def of(cls, charger: SimulatedCharger, unit_id: int = 1, site: SimulatedSite | None = None,
           standard: bool = False) -> ChargerUnit:
        """``standard``: only the SunSpec Alliance's models 1, 701, 702, 704, 713 (no 64900)."""
        layout = STANDARD_CHARGER_LAYOUT if standard else CHARGER_LAYOUT
        unit = cls(layout, charger.clock, charger.name, unit_id, charger=charger)
        if site is not None:
            unit.frequency_hz = lambda: site.frequency_hz
            unit.voltage_v = lambda: site.voltage_v
        return unit

    def model_values(self, model_id: int) -> Values:
        c = self.charger
        if model_id == 1:
            return self.common("sim-v2g-charger")
        rating = c.rated_w
        w_sf = _fit_sf(rating, signed=True)
        if model_id == 702:
            s0 = c.snapshot()
            return {"WMaxRtg": rating, "WChaRteMaxRtg": c.max_charge_w, "WDisChaRteMaxRtg": c.max_discharge_w,
                    "WChaRteMax": s0.max_charge_w, "WDisChaRteMax": s0.max_discharge_w,  # now, with the vehicle
                    "VNomRtg": 230, "W_SF": _fit_sf(rating), "V_SF": 0, "PF_SF": -3, "VA_SF": _fit_sf(rating),
                    "Var_SF": _fit_sf(rating), "A_SF": 0, "S_SF": 0}
        s: ChargerSnapshot = c.snapshot()
        if model_id == 701:
            state = s.state
            inv_st = 6 if state == "fault" else 3 if state in ("charging", "discharging") else 7
            alarms = (1 << 5 if s.tamper_open else 0) | (1 << 7 if "over_temperature" in s.faults else 0)
            return {"ACType": 1, "St": 0 if state == "fault" else 1, "InvSt": inv_st,
                    "ConnSt": 1 if s.contactor != "open" else 0, "Alrm": alarms,
                    "W": -s.actual_power_w,  # SunSpec: + generation (= our discharge)
                    "LNV": self.voltage_v(), "Hz": self.frequency_hz(), "TmpCab": s.temperature_c,
                    "TotWhInj": s.energy_out_wh, "TotWhAbs": s.energy_in_wh,
                    "W_SF": w_sf, "V_SF": 0, "Hz_SF": -3, "Tmp_SF": -1, "TotWh_SF": 0,
                    "A_SF": 0, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf, "TotVarh_SF": 0}
        if model_id == 704:
            ramp_pct = s.ramp_w_per_s / rating * 100 if rating else None
            rv = self.reversion
            return {"WSetEna": self.wset_ena, "WSetMod": self.wset_mod, "WSet": self.wset_w,
                    "WSetRvrt": rv.wset_rvrt_w, "WSetEnaRvrt": rv.wset_ena_rvrt, "WSetRvrtTms": rv.wset_rvrt_tms,
                    "WSetRvrtRem": rv.remaining_s(self.clock()),
                    "WRmp": ramp_pct, "WRmpRef": 1, "WSet_SF": -1, "WSetPct_SF": 0, "WMaxLimPct_SF": 0,
                    "PF_SF": -3, "VarSet_SF": 0, "VarSetPct_SF": 0}
        if model_id == 713:
            cap = s.battery_energy_capacity_wh if s.vehicle_connected else 0.0
            soc = s.present_soc_pct if s.vehicle_connected else 0.0
            return {"WHRtg": cap, "WHAvail": cap * soc / 100 if math.isfinite(soc) else None, "SoC": soc, "SoH": 100,
                    "Sta": 2 if s.bms_status == 4 else 0, "WH_SF": _fit_sf(cap), "Pct_SF": -1}
        age_ms = max(0, round((self.clock() - s.taken_at_s) * 1e3))
        return {
            "Age": min(age_ms, 0xFFFFFFFE), "St": INVERTER_STATES.index(s.state), "SafeMode": int(c.safe_mode),
            "ClrReq": 0, "ClrAck": self.clear_ack, "ClrRslt": self.clear_result,
            "Flt": _bits(s.faults), "FltCause": _bits(s.causes_present),
            "Ctr": CONTACTOR_STATES.index(s.contactor), "CtrHold": int(s.contactors_held_open),
            "CtrCyc": s.contactor_cycles,
            "CtrBudget": s.contactor_cycle_budget, "WSetAct": s.setpoint_w, "W": s.actual_power_w,
            "WMaxCha": s.max_charge_w, "WMaxDis": s.max_discharge_w, "WRmp": s.ramp_w_per_s,
            "Tmp": s.temperature_c, "Tmpr": int(s.tamper_open), "TmprLatch": int(s.tamper_latched),
            "EVConn": int(s.vehicle_connected), "BMSSt": s.bms_status,
            "EVMaxChaW": s.ev_maximum_charge_power_w, "EVMaxDisW": s.ev_maximum_discharge_power_w,
            "EVMinDisW": s.ev_minimum_discharge_power_w, "SoC": s.present_soc_pct, "MinSoC": s.minimum_soc_pct,
            "TgtSoC": s.target_soc_pct, "BatWh": s.battery_energy_capacity_wh, "EVId": s.vehicle_id,
            "CtrCmd": self.ctr_cmd, "CtrReq": 0, "CtrAck": self.ctr_ack, "CtrRslt": self.ctr_result,
            "CtrBrkW": self.ctr_power_w,
            "EVFwCap": int(s.ev_old_firmware), "MaxDisA": s.max_discharge_amps,
            "EVDisSpecW": s.ev_discharge_spec_w, "EVChaSpecW": s.ev_charge_spec_w, "EVNomV": s.ev_nominal_v,
        }

    def _contactor_command(self, seq: int) -> None:
        """Carry out ``CtrCmd``; the outcome goes to ``CtrRslt`` (never an exception reply)."""
        c = self.charger
        self.ctr_power_w = 0.0
        try:
            if self.ctr_cmd == CTR_CMD_CLOSE:
                result = c.close_contactors()
            else:
                result = c.open_contactors(emergency=self.ctr_cmd == CTR_CMD_EMERGENCY_OPEN)
            if result.under_load:
                self.ctr_result, self.ctr_power_w = CTR_DONE_UNDER_LOAD, result.broken_power_w
            else:
                self.ctr_result = CTR_DONE if result.changed else CTR_NOTHING
        except DeviceFault as fault:
            if fault.kind is FaultKind.UNDER_LOAD:
                self.ctr_result, self.ctr_power_w = CTR_REFUSED_UNDER_LOAD, fault.power_w or 0.0
            else:
                self.ctr_result = CTR_REFUSED_WELDED
        self.ctr_ack = seq

    def write(self, model_id: int, point: str, value: object) -> ExcCodes | None:
        c = self.charger
        try:
            if (model_id, point) in ((704, "WSetEna"), (704, "WSetEnaRvrt")):
                if value not in (0, 1):
                    return ExcCodes.ILLEGAL_VALUE
                if point == "WSetEna":
                    self.wset_ena, self._power_written = int(value), True
                else:
                    self.reversion.wset_ena_rvrt = int(value)
            elif (model_id, point) == (704, "WSetMod"):
                if value != 1:
                    return ExcCodes.ILLEGAL_VALUE  # only WATTS mode
                self.wset_mod = 1
            elif (model_id, point) in ((704, "WSet"), (704, "WSetRvrt")):
                if not isinstance(value, int | float):
                    return ExcCodes.ILLEGAL_VALUE
                if point == "WSet":
                    self.wset_w, self._power_written = float(value), True
                else:
                    self.reversion.wset_rvrt_w = float(value)
            elif (model_id, point) == (704, "WSetRvrtTms"):
                if not isinstance(value, int):
                    return ExcCodes.ILLEGAL_VALUE
                self.reversion.arm(value, self.clock())
            elif (model_id, point) == (CHARGER_MODEL_ID, "SafeMode"):
                if value not in (0, 1):
                    return ExcCodes.ILLEGAL_VALUE
                c.set_safe_mode(bool(value))
            elif (model_id, point) == (CHARGER_MODEL_ID, "ClrReq"):
                if not isinstance(value, int) or value == 0:
                    return ExcCodes.ILLEGAL_VALUE
                try:
                    result = c.clear_faults()
                    self.clear_result = CLEAR_CLEARED if result.cleared else CLEAR_NOTHING
                except DeviceFault:
                    self.clear_result = CLEAR_REFUSED
                self.clear_ack = value
            elif (model_id, point) == (CHARGER_MODEL_ID, "CtrCmd"):
                if value not in (CTR_CMD_OPEN, CTR_CMD_EMERGENCY_OPEN, CTR_CMD_CLOSE):
                    return ExcCodes.ILLEGAL_VALUE
                self.ctr_cmd = int(value)
            elif (model_id, point) == (CHARGER_MODEL_ID, "CtrReq"):
                if not isinstance(value, int) or value == 0 or self.ctr_cmd == CTR_CMD_NONE:
                    return ExcCodes.ILLEGAL_VALUE
                self._contactor_command(value)
            else:
                return ExcCodes.ILLEGAL_ADDRESS
        except DeviceFault:
            return ExcCodes.DEVICE_FAILURE
        return None

    def after_write(self, model_id: int) -> ExcCodes | None:
        """WSetEna, WSetMod and WSet of one request act together, once it is all taken in: a
        setpoint is never enabled before its value is there. Any write of them restarts an
        armed reversion timer, as writing WSetRvrtTms does."""
        if model_id != 704 or not self._power_written:
            return None
        self._power_written = False
        self.reversion.renew(self.clock())
        return self._apply_setpoint()

    def _apply_setpoint(self) -> ExcCodes | None:
        try:  # SunSpec + generation -> our - discharge; a disabled setpoint is no power
            self.charger.set_power(-self.wset_w if self.wset_ena == 1 else 0.0)
        except DeviceFault:
            return ExcCodes.DEVICE_FAILURE
        return None

    def tick(self) -> None:
        """SunSpec 704 reversion: when WSetRvrtTms runs out with no write renewing it, the
        setpoint reverts to WSetRvrt, enabled as WSetEnaRvrt says."""
        reverted = self.reversion.run_out(self.clock())
        if reverted is not None:
            self.wset_ena, self.wset_w = reverted
            self._apply_setpoint()
