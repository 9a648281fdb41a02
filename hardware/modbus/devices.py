"""The device interfaces over Modbus: a site meter unit and a charger unit (SunSpec + ours).

Theory of operation
-------------------
Each driver owns nothing but a ``SunSpecUnit`` (shared by the four devices of one charger
when opened through ``hardware.connect``) and does one request per call on the hot path:

    SiteMeter.read       one read from 64901 ``Age`` to 213 ``W`` (36 registers)
    Inverter.set_power   one FC16 write of 704 ``WSetEna``, ``WSetMod`` (WATTS), ``WSet``
                         (int32, ``WSet_SF``; SunSpec counts discharge as positive, so the
                         register holds ``-setpoint_w``) and ``WSetRvrt`` (0): the value is
                         never enabled before it is written; 0 W disables the setpoint.
                         Then one write of ``WSetEnaRvrt`` (disabled) and ``WSetRvrtTms``
                         (``revert_after_s``) re-arms the reversion timer, so a device whose
                         agent dies or loses its link returns to no power by itself. The
                         control loop re-sends its setpoint every second, renewing it.
    Inverter.status, ThermalSensor.read, TamperSwitch.read, VehicleLink.read
                         one read of our model 64900 (the part each needs); the inverter
                         also reads 702 ``WMaxRtg`` once per connection (64900 has no
                         rating point: the nameplate is the standard model's)
    Inverter.open_contactors / close_contactors
                         one write of 64900 ``CtrCmd`` + ``CtrReq`` (a new sequence
                         number), then reads of ``Ctr``..``CtrBrkW`` until ``CtrAck``
                         echoes it (one read for a device that acts at once); the
                         sequence number is learnt from ``CtrAck`` once per connection

Standard SunSpec devices (models 1, 701, 702, 704, 713 only, no 64900) work too: the
inverter's status comes from 701 (``InvSt``, ``ConnSt``, ``W``) and 704 (``WSetEna``,
``WSet``): two reads; 702 (``WChaRteMax``/``WDisChaRteMax``, else the ratings, and
``WMaxRtg``, the nameplate in ``InverterLimits.rated_w``) and 704 ``WRmp`` are re-read at
most once a second; the thermal sensor
reads 701 ``TmpCab`` (else ``TmpSnk``), the tamper switch 701 ``Alrm`` bit CABINET_OPEN, the
vehicle link 713 (``SoC``, ``WHRtg``; connected while both are implemented and nonzero).
Contactor commands, safe mode latches and fault clearing are ours (64900): on a standard
device contactor commands raise NOT_SUPPORTED, safe mode is held by the driver (setpoint
disabled, set_power refused) and there is nothing to clear. A point a standard device
lacks is named once (``notes``, and a warning log) and its fallback is the safe one.

Every value goes through the interface's range checks; a float register holding NaN is
SunSpec's "not implemented" and decodes to ``None``, which the checks refuse. A sample
older than ``stale_after_s`` (the unit's own ``Age`` register) raises STALE. ``taken_at_s``
is the reply's arrival on the injected clock minus that age.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import trio

from hardware.interfaces import (
    ClearResult,
    ContactorResult,
    ContactorState,
    DeviceFault,
    FaultKind,
    InverterLimits,
    InverterState,
    InverterStatus,
    MeterReading,
    TamperReading,
    ThermalReading,
    VehicleParameters,
    VehicleStatus,
)
from hardware.modbus.registers import (
    CHARGER_MODEL_ID,
    CLEAR_NOTHING,
    CLEAR_REFUSED,
    CONTACTOR_STATES,
    CTR_CMD_CLOSE,
    CTR_CMD_EMERGENCY_OPEN,
    CTR_CMD_OPEN,
    CTR_DONE,
    CTR_DONE_UNDER_LOAD,
    CTR_NOTHING,
    CTR_REFUSED_UNDER_LOAD,
    CTR_REFUSED_WELDED,
    FAULT_BITS,
    INVERTER_STATES,
    METER_TIMING_MODEL_ID,
    MODELS,
    decode,
)
from hardware.modbus.sunspec import Block, SunSpecUnit

DEFAULT_STALE_AFTER_S = 0.5
DEFAULT_REVERT_AFTER_S = 3  # SunSpec WSetRvrtTms is whole seconds
CHARGER = CHARGER_MODEL_ID
CABINET_OPEN_BIT = 5  # 701 Alrm
OVER_TEMP_BIT = 7
INVST_FAULT = 6
SLOW_POINTS_EVERY_S = 1.0  # a standard device's ratings, limits in force and ramp are re-read this often
log = logging.getLogger(__name__)


def _bits(value: object) -> tuple[str, ...]:
    n = int(value) if isinstance(value, int) else 0
    return tuple(code for i, code in enumerate(FAULT_BITS) if n >> i & 1)


@attrs.define(eq=False)
class _ModbusDevice:
    unit: SunSpecUnit
    clock: Callable[[], float] = trio.current_time
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    owns_link: bool = True

    @property
    def url(self) -> str:
        return self.unit.url

    def _fault(self, kind: FaultKind, message: str, **kw: object) -> DeviceFault:
        return DeviceFault(kind, message, self.url, **kw)  # type: ignore[arg-type]

    def _taken_at(self, age_ms: object) -> float:
        if not isinstance(age_ms, int):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"sample age not implemented ({age_ms!r})")
        if age_ms > self.stale_after_s * 1e3:
            raise self._fault(FaultKind.STALE, f"sample is {age_ms} ms old (limit {self.stale_after_s * 1e3:g} ms)")
        return self.clock() - age_ms / 1e3

    async def aclose(self) -> None:
        if self.owns_link:
            await self.unit.link.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def __aenter__(self):  # type: ignore[no-untyped-def]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _charger(self, first: str, last: str) -> tuple[Block, float]:
        block = await self.unit.read_block(CHARGER, first, last)
        return block, self._taken_at(block.get("Age"))

    async def _standard(self) -> bool:
        """True for a device without our model 64900: only the SunSpec standard models."""
        return CHARGER not in await self.unit.models()

    def _not_available(self, what: str) -> DeviceFault:
        return self._fault(FaultKind.NOT_SUPPORTED, f"{what} not available: the device has no model {CHARGER} "
                           "and no standard point for it")


@attrs.define(eq=False)
class ModbusSiteMeter(_ModbusDevice):
    async def read(self) -> MeterReading:
        models = await self.unit.models()
        if METER_TIMING_MODEL_ID not in models or 213 not in models:
            await self.unit.require(213, "three-phase float meter")
            await self.unit.require(METER_TIMING_MODEL_ID, "meter sample timing")
        t0 = models[METER_TIMING_MODEL_ID] + MODELS[METER_TIMING_MODEL_ID].point("Age").offset
        m213 = MODELS[213]
        end = models[213] + m213.point("W").offset + 2
        if not 0 < end - t0 <= 125:
            raise self._fault(FaultKind.NOT_SUPPORTED, "meter timing block is not next to model 213")
        regs = await self.unit._read(t0, end - t0)

        def at(model_id: int, name: str) -> object:
            p = MODELS[model_id].point(name)
            i = models[model_id] + p.offset - t0
            return decode(p, regs[i:i + p.size])

        taken_at = self._taken_at(at(METER_TIMING_MODEL_ID, "Age"))
        # Model 213 counts import as positive, as we do: no sign change here.
        return MeterReading.checked(at(213, "W"), at(213, "Hz"), at(213, "PhV"), taken_at, self.url)  # type: ignore[arg-type]


@attrs.define(eq=False)
class ModbusInverter(_ModbusDevice):
    revert_after_s: int = DEFAULT_REVERT_AFTER_S
    notes: list[str] = attrs.field(init=False, factory=list)  # what the device lacks, said once
    _limits: InverterLimits | None = attrs.field(init=False, default=None)
    _prepared_on_connect: int = attrs.field(init=False, default=-1)
    _reversion: bool = attrs.field(init=False, default=False)
    _safe_mode: bool = attrs.field(init=False, default=False)  # standard devices: held here
    _slow: tuple[int, float, tuple[Block, Block, Block]] | None = attrs.field(init=False, default=None)
    _rating: tuple[int, float] | None = attrs.field(init=False, default=None)  # (connects, 702 WMaxRtg)
    _ctr_seq: int = attrs.field(init=False, default=0)
    _ctr_seq_on_connect: int = attrs.field(init=False, default=-1)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s: %s", self.url, text)

    async def _prepare(self) -> None:
        """Once per connection: check 704's setpoint points and whether it can revert."""
        connects = self.unit.link.statistics().connects
        if self._prepared_on_connect == connects:
            return
        b = await self.unit.read_block(704, "WSetEna", "WSetRvrtTms")
        if b.get("WSet") is None or b.get("WSetEna") is None or b.get("WSetMod") is None:
            raise self._fault(FaultKind.NOT_SUPPORTED, "no active power setpoint (704 WSetEna/WSetMod/WSet)")
        missing = [n for n in ("WSetRvrt", "WSetEnaRvrt", "WSetRvrtTms") if b.get(n) is None]
        self._reversion = not missing
        if missing:
            self._note(f"no setpoint reversion ({', '.join(missing)} not implemented): if this agent dies the "
                       "device holds its last setpoint; the agent writes 0 W on every stop")
        self._prepared_on_connect = self.unit.link.statistics().connects

    async def status(self) -> InverterStatus:
        if await self._standard():
            return await self._standard_status()
        b, taken_at = await self._charger("Age", "WRmp")
        st, ctr = b.get("St"), b.get("Ctr")
        if not isinstance(st, int) or not 0 <= st < len(INVERTER_STATES):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"inverter state {st!r}")
        if not isinstance(ctr, int) or not 0 <= ctr < len(CONTACTOR_STATES):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"contactor state {ctr!r}")
        limits = InverterLimits(b.get("WMaxCha"), b.get("WMaxDis"), b.get("WRmp"),  # type: ignore[arg-type]
                                await self._rated_w())
        status = InverterStatus.checked(
            state=InverterState(INVERTER_STATES[st]), setpoint_w=b.get("WSetAct"), actual_power_w=b.get("W"),  # type: ignore[arg-type]
            limits=limits, contactor=ContactorState(CONTACTOR_STATES[ctr]),
            contactor_cycles=b.get("CtrCyc"), contactor_cycle_budget=b.get("CtrBudget"),  # type: ignore[arg-type]
            faults=_bits(b.get("Flt")), taken_at_s=taken_at, contactors_held_open=b.get("CtrHold") == 1,
            device=self.url,
        )
        self._limits = status.limits
        return status

    def _rated_from(self, m702: Block) -> float:
        """702 ``WMaxRtg`` (the nameplate, the droop's base), or 0, said once, when missing."""
        rating = m702.get("WMaxRtg")
        if isinstance(rating, int | float) and math.isfinite(rating) and rating > 0:
            return float(rating)
        self._note("702 WMaxRtg not implemented: no nameplate rating from the device (set [control] "
                   "inverter_nameplate)")
        return 0.0

    async def _rated_w(self) -> float:
        """Our 64900 has no rating point: 702 ``WMaxRtg`` beside it, read once per connection."""
        connects = self.unit.link.statistics().connects
        if self._rating is None or self._rating[0] != connects:
            rated = 0.0
            if 702 in await self.unit.models():
                rated = self._rated_from(await self.unit.read_block(702, "WMaxRtg", "WMaxRtg"))
            else:
                self._note("no model 702: no nameplate rating from the device (set [control] inverter_nameplate)")
            self._rating = (connects, rated)
        return self._rating[1]

    async def _standard_status(self) -> InverterStatus:
        m701 = await self.unit.read_block(701, "ACType", "W")
        taken_at = self.clock()  # no sample age in the standard models: the reply's arrival
        m704 = await self.unit.read_block(704, "WSetEna", "WSet")
        connects = self.unit.link.statistics().connects
        if self._slow is None or self._slow[0] != connects or taken_at - self._slow[1] >= SLOW_POINTS_EVERY_S:
            # ratings, limits in force and ramp: three more reads, at most once a second
            self._slow = (connects, taken_at, (await self.unit.read_block(702, "WMaxRtg", "WDisChaRteMaxRtg"),
                                               await self.unit.read_block(702, "WChaRteMax", "WDisChaRteMax"),
                                               await self.unit.read_block(704, "WRmp", "WRmpRef")))
        m702, m702s, ramp = self._slow[2]
        inv_st, w = m701.get("InvSt"), m701.get("W")
        if not isinstance(w, int | float):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"701 W not implemented ({w!r})")
        actual = -float(w)  # SunSpec + generation -> our - discharge
        setpoint = -float(m704.get("WSet") or 0) if m704.get("WSetEna") == 1 else 0.0
        alarms = m701.get("Alrm")
        faults = ("over_temperature",) if isinstance(alarms, int) and alarms >> OVER_TEMP_BIT & 1 else ()
        if inv_st == INVST_FAULT:
            state = InverterState.FAULT
        elif self._safe_mode:
            state = InverterState.SAFE_MODE
        else:
            state = (InverterState.CHARGING if actual > 0.5 else InverterState.DISCHARGING if actual < -0.5
                     else InverterState.IDLE)

        def limit(setting: str, rating: str) -> float:
            v = m702s.get(setting)
            v = m702.get(rating) if v is None else v
            if not isinstance(v, int | float):
                self._note(f"702 {setting} and {rating} not implemented: {setting} taken as 0 W")
                return 0.0
            return float(v)

        rating = m702.get("WMaxRtg")
        pct = ramp.get("WRmp")
        if isinstance(pct, int | float) and isinstance(rating, int | float):
            ramp_w = float(pct) / 100 * float(rating)
        else:
            self._note("704 WRmp or 702 WMaxRtg not implemented: ramp rate taken as 100 %/s of the rating")
            ramp_w = float(rating) if isinstance(rating, int | float) else 0.0
        conn = m701.get("ConnSt")
        status = InverterStatus.checked(
            state=state, setpoint_w=setpoint, actual_power_w=actual,
            limits=InverterLimits(limit("WChaRteMax", "WChaRteMaxRtg"), limit("WDisChaRteMax", "WDisChaRteMaxRtg"),
                                  ramp_w, self._rated_from(m702)),
            contactor=ContactorState.OPEN if conn == 0 else ContactorState.CLOSED,
            contactor_cycles=0, contactor_cycle_budget=0, faults=faults, taken_at_s=taken_at, device=self.url)
        self._limits = status.limits
        return status

    async def set_power(self, setpoint_w: float) -> float:
        if not isinstance(setpoint_w, int | float) or not math.isfinite(setpoint_w):
            raise ValueError(f"setpoint must be a finite number of watts, got {setpoint_w!r}")
        if self._limits is None:
            await self.status()
        assert self._limits is not None
        if self._safe_mode:
            raise self._fault(FaultKind.DEVICE_FAULT, "refused: inverter is in safe mode")
        applied = round(self._limits.clamp(float(setpoint_w)), 1) + 0.0
        try:
            await self._prepare()
            # One request: the value and its enable arrive together. SunSpec DER: positive =
            # generation = our discharge (the one sign flip); 0 W disables the setpoint.
            values: list[tuple[str, object]] = [("WSetEna", 1 if applied else 0), ("WSetMod", 1), ("WSet", -applied)]
            if self._reversion:
                values.append(("WSetRvrt", 0))
            await self.unit.write_run(704, values)
            if self._reversion:  # (re-)arm: no write within revert_after_s and the device reverts to 0 W
                await self.unit.write_run(704, [("WSetEnaRvrt", 0), ("WSetRvrtTms", self.revert_after_s)])
        except DeviceFault as fault:
            if fault.kind is FaultKind.EXCEPTION_RESPONSE and fault.exception_code == 4:
                status = await self.status()
                if status.state in (InverterState.FAULT, InverterState.SAFE_MODE):
                    why = f"latched faults {', '.join(status.faults)}" if status.faults else "inverter is in safe mode"
                    raise self._fault(FaultKind.DEVICE_FAULT, f"refused: {why}", codes=status.faults) from None
                if status.contactors_held_open:
                    raise self._fault(FaultKind.DEVICE_FAULT,
                                      "refused: contactors held open (close_contactors first)") from None
            raise
        return applied

    async def energy_registers(self) -> tuple[float, float]:
        """(imported Wh, exported Wh): 701 ``TotWhAbs`` and ``TotWhInj``, for billing."""
        b = await self.unit.read_block(701, "TotWhInj", "TotWhAbs")
        injected, absorbed = b.get("TotWhInj"), b.get("TotWhAbs")
        if not isinstance(injected, int | float) or not isinstance(absorbed, int | float):
            raise self._fault(FaultKind.NOT_SUPPORTED, "energy registers not implemented (701 TotWhInj/TotWhAbs)")
        return float(absorbed), float(injected)

    async def set_safe_mode(self, on: bool) -> None:
        if not await self._standard():
            await self.unit.write_point(CHARGER, "SafeMode", 1 if on else 0)
            return
        if on:  # no safe mode register: disable the setpoint and refuse new ones here
            await self._prepare()
            await self.unit.write_run(704, [("WSetEna", 0), ("WSetMod", 1), ("WSet", 0)])
        self._safe_mode = on

    async def clear_faults(self) -> ClearResult:
        if await self._standard():
            return ClearResult(())  # no latches of ours on a standard device
        before = await self.unit.read_block(CHARGER, "ClrReq", "Flt")
        ack = before.get("ClrAck")
        seq = (int(ack) % 0xFFFF + 1) if isinstance(ack, int) else 1
        await self.unit.write_point(CHARGER, "ClrReq", seq)
        with trio.move_on_after(self.unit.link.timeout_s):
            while True:
                after = await self.unit.read_block(CHARGER, "ClrReq", "FltCause")
                if after.get("ClrAck") == seq:
                    break
                await trio.sleep(0.01)  # a real device may process the command asynchronously
        if after.get("ClrAck") != seq:
            raise self._fault(FaultKind.TIMEOUT, "clear-faults request not acknowledged")
        result = after.get("ClrRslt")
        if result == CLEAR_REFUSED:
            blocking = tuple(c for c in _bits(after.get("FltCause")) if c in _bits(after.get("Flt")))
            raise self._fault(FaultKind.CAUSE_PRESENT, f"cannot clear: cause still present: {', '.join(blocking)}",
                              codes=blocking)
        if result == CLEAR_NOTHING:
            return ClearResult(())
        return ClearResult(_bits(before.get("Flt")))

    async def open_contactors(self, *, emergency: bool = False) -> ContactorResult:
        return await self._contactor_command(CTR_CMD_EMERGENCY_OPEN if emergency else CTR_CMD_OPEN)

    async def close_contactors(self) -> ContactorResult:
        return await self._contactor_command(CTR_CMD_CLOSE)

    async def _contactor_command(self, command: int) -> ContactorResult:
        if await self._standard():
            raise self._not_available("contactor commands")
        if self._ctr_seq_on_connect != self.unit.link.statistics().connects:
            ack = (await self.unit.read_block(CHARGER, "CtrAck", "CtrAck")).get("CtrAck")
            self._ctr_seq = ack if isinstance(ack, int) else 0
            self._ctr_seq_on_connect = self.unit.link.statistics().connects
        seq = self._ctr_seq % 0xFFFF + 1  # nonzero, and never the one the device last acknowledged
        self._ctr_seq = seq
        await self.unit.write_run(CHARGER, [("CtrCmd", command), ("CtrReq", seq)])
        b: Block | None = None
        with trio.move_on_after(self.unit.link.timeout_s):
            while True:
                b = await self.unit.read_block(CHARGER, "Ctr", "CtrBrkW")
                if b.get("CtrAck") == seq:
                    break
                await trio.sleep(0.005)  # a real contactor takes a few ms to move
        if b is None or b.get("CtrAck") != seq:
            raise self._fault(FaultKind.TIMEOUT, "contactor command not acknowledged")
        result, ctr, power_w = b.get("CtrRslt"), b.get("Ctr"), b.get("CtrBrkW")
        if not isinstance(ctr, int) or not 0 <= ctr < len(CONTACTOR_STATES):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"contactor state {ctr!r}")
        if not isinstance(power_w, float) or not math.isfinite(power_w):
            power_w = 0.0 if result in (CTR_DONE, CTR_NOTHING) else math.nan
        if result == CTR_REFUSED_UNDER_LOAD:
            raise self._fault(FaultKind.UNDER_LOAD, f"refused: {power_w:.1f} W flowing; open at zero current "
                              "(set 0 W first)", power_w=power_w)
        if result == CTR_REFUSED_WELDED:
            raise self._fault(FaultKind.DEVICE_FAULT, "refused: contactor contacts are welded",
                              codes=("contactor_welded",))
        if result not in (CTR_DONE, CTR_NOTHING, CTR_DONE_UNDER_LOAD) or not math.isfinite(power_w):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"contactor command result {result!r} ({power_w!r} W)")
        under_load = result == CTR_DONE_UNDER_LOAD
        return ContactorResult(ContactorState(CONTACTOR_STATES[ctr]), b.get("CtrHold") == 1,
                               changed=result != CTR_NOTHING, under_load=under_load,
                               broken_power_w=round(power_w, 1) + 0.0 if under_load else 0.0)


@attrs.define(eq=False)
class ModbusThermalSensor(_ModbusDevice):
    async def read(self) -> ThermalReading:
        if await self._standard():
            b = await self.unit.read_block(701, "TmpAmb", "TmpSw")
            t = b.get("TmpCab")
            t = b.get("TmpSnk") if t is None else t
            if t is None:
                raise self._not_available("temperature (701 TmpCab/TmpSnk)")
            return ThermalReading.checked(t, self.clock(), self.url)  # type: ignore[arg-type]
        b, taken_at = await self._charger("Age", "Tmp")
        return ThermalReading.checked(b.get("Tmp"), taken_at, self.url)  # type: ignore[arg-type]


@attrs.define(eq=False)
class ModbusTamperSwitch(_ModbusDevice):
    async def read(self) -> TamperReading:
        if await self._standard():
            alarms = (await self.unit.read_block(701, "Alrm", "Alrm")).get("Alrm")
            if not isinstance(alarms, int):
                raise self._not_available("tamper switch (701 Alrm)")
            cabinet_open = bool(alarms >> CABINET_OPEN_BIT & 1)
            return TamperReading(cabinet_open, cabinet_open, self.clock())  # the device latches nothing for us
        b, taken_at = await self._charger("Age", "TmprLatch")
        opened, latched = b.get("Tmpr"), b.get("TmprLatch")
        if opened not in (0, 1) or latched not in (0, 1):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"tamper registers {opened!r}, {latched!r}")
        return TamperReading(bool(opened), bool(latched), taken_at)


@attrs.define(eq=False)
class ModbusVehicleLink(_ModbusDevice):
    async def read(self) -> VehicleStatus:
        if await self._standard():
            return await self._standard_read()
        b, taken_at = await self._charger("Age", "EVId")
        conn = b.get("EVConn")
        if conn not in (0, 1):
            raise self._fault(FaultKind.OUT_OF_RANGE, f"vehicle connected register {conn!r}")
        bms = b.get("BMSSt")
        params = None
        if conn:
            params = VehicleParameters(*(b.get(n) for n in (  # type: ignore[arg-type]
                "EVMaxChaW", "EVMaxDisW", "EVMinDisW", "SoC", "MinSoC", "TgtSoC", "BatWh")))
        return VehicleStatus.checked(connected=bool(conn), parameters=params,
                                     bms_status=bms if isinstance(bms, int) else -1,
                                     vehicle_id=str(b.get("EVId") or ""), taken_at_s=taken_at, device=self.url)

    async def _standard_read(self) -> VehicleStatus:
        """713 says what the battery holds; 702's settings what it takes and gives now."""
        b = await self.unit.read_block(713, "WHRtg", "Sta")
        taken_at = self.clock()
        cap, soc, sta = b.get("WHRtg"), b.get("SoC"), b.get("Sta")
        if not isinstance(cap, int | float) or not isinstance(soc, int | float) or not cap:
            return VehicleStatus.checked(connected=False, parameters=None, bms_status=0, vehicle_id="",
                                         taken_at_s=taken_at, device=self.url)
        lim = await self.unit.read_block(702, "WChaRteMax", "WDisChaRteMax")
        cha, dis = lim.get("WChaRteMax"), lim.get("WDisChaRteMax")
        params = VehicleParameters(float(cha or 0), float(dis or 0), 0.0, float(soc), 0.0, 100.0,
                                   float(cap))
        return VehicleStatus.checked(connected=True, parameters=params, bms_status=4 if sta == 2 else 0,
                                     vehicle_id="", taken_at_s=taken_at, device=self.url)
