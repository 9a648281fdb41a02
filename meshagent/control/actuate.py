"""Carrying a decision out at the inverter: contactors, safe mode, the setpoint.

Theory of operation
-------------------
``Actuator`` is the one writer to the inverter. ``apply`` carries out a cycle's
``Decision``: an emergency opening of the contactors first (tamper), on its own so that a
failure there cannot keep safe mode off; then safe mode when asked (the inverter refuses
setpoints there) and a normal opening at zero current; otherwise ``set_power`` when the
setpoint moved by the metering resolution or once every ``SETPOINT_REFRESH_S`` (a restarted
inverter forgets), releasing contactors held open first. ``zero`` writes 0 W at once
outside the cycle (the meter's task, on ERR_SENSOR_LOST). One lock orders the two.

``hold_zero`` is asked right before each nonzero write: a code latched after the cycle
decided (the meter's task raises between the cycle's decision and its write) turns the
write into 0 W, so no write ever carries power an active code forbids.

Adapter notes (``hardware.interfaces``): no command is sent to contacts the inverter reports
welded; an inverter in FAULT refuses setpoints until its own faults are cleared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from hardware.interfaces import (
    ContactorResult,
    ContactorState,
    DeviceFault,
    Inverter,
    InverterState,
    InverterStatus,
)
from meshagent.control.logic import ContactorCommand, Decision

SETPOINT_REFRESH_S = 1.0  # re-send an unchanged setpoint this often (a restarted inverter forgets)


class Actuator:
    def __init__(self, inverter: Inverter, *, hold_zero: Callable[[], bool],
                 on_fault: Callable[[DeviceFault], None]) -> None:
        self.inverter = inverter
        self._hold_zero = hold_zero
        self._on_fault = on_fault
        self._lock = trio.Lock()
        self.last_written_w: float | None = None  # None: unknown (the next decision is written)
        self._last_write_s = -math.inf
        self.writes = 0
        self.contactor_commands = 0  # open/close commands the inverter carried out
        self.emergency_openings = 0  # of which emergency openings under load (heavy wear)
        self.zero_writes = 0  # 0 W written outside the cycle (``zero``)
        self.zeroed_at_s: float | None = None  # trio clock when 0 W last replaced power (its write returned)
        self.last_contactor_result: ContactorResult | None = None

    async def apply(self, decision: Decision, status: InverterStatus | None, now: float) -> dict[str, Any] | None:
        """Carry out the decision; returns the figures of an emergency opening it made."""
        async with self._lock:
            return await self._apply(decision, status, now)

    async def zero(self, status: InverterStatus | None, now: float) -> bool:
        """0 W now, if the last setpoint written was not 0 (True: written)."""
        async with self._lock:
            if self.last_written_w == 0.0:
                return False
            if status is not None and status.state in (InverterState.SAFE_MODE, InverterState.FAULT):
                return False  # it holds no power there and refuses setpoints
            try:
                await self.inverter.set_power(0.0)
            except DeviceFault as fault:
                self._on_fault(fault)
                self.last_written_w = None
                return False
            self.last_written_w, self._last_write_s = 0.0, now
            self.writes += 1
            self.zero_writes += 1
            self.zeroed_at_s = trio.current_time()
            return True

    async def _apply(self, decision: Decision, status: InverterStatus | None, now: float) -> dict[str, Any] | None:
        inv = self.inverter
        opened: dict[str, Any] | None = None
        welded = status is not None and status.contactor is ContactorState.WELDED
        if decision.contactor is ContactorCommand.EMERGENCY_OPEN and not welded:
            try:
                result = self._record(await inv.open_contactors(emergency=True))
                opened = {"contactor": result.contactor.value, "under_load": result.under_load,
                          "broken_power_w": result.broken_power_w}
            except DeviceFault as fault:
                self._on_fault(fault)
        try:
            if decision.safe_mode:
                if status is None or status.state not in (InverterState.SAFE_MODE, InverterState.FAULT):
                    await inv.set_safe_mode(True)
                    self.last_written_w = None
                if decision.contactor is ContactorCommand.OPEN and not welded:
                    self._record(await inv.open_contactors())  # the logic saw zero current
                return opened
            if status is not None and status.state is InverterState.SAFE_MODE:
                await inv.set_safe_mode(False)
                self.last_written_w = None
            if status is not None and status.state is InverterState.FAULT:
                return opened  # it refuses setpoints until its own faults are cleared
            w = 0.0 if self._hold_zero() else decision.setpoint_w
            if w != 0 and status is not None and status.contactors_held_open:
                # the logic lets power through only when the contactor guard allows a closing
                self._record(await inv.close_contactors())
                self.last_written_w = None
                if self._hold_zero():
                    w = 0.0
            if (self.last_written_w is None or abs(w - self.last_written_w) >= 0.1
                    or now - self._last_write_s >= SETPOINT_REFRESH_S):
                await inv.set_power(w)
                if w == 0 and self.last_written_w != 0:
                    self.zeroed_at_s = trio.current_time()
                self.last_written_w, self._last_write_s = w, now
                self.writes += 1
        except DeviceFault as fault:
            self._on_fault(fault)
            self.last_written_w = None
        return opened

    def _record(self, result: ContactorResult) -> ContactorResult:
        self.last_contactor_result = result
        if result.changed:
            self.contactor_commands += 1
        if result.under_load:
            self.emergency_openings += 1
        return result
