"""The devices an agent acts through, as interfaces: what every implementation promises.

Theory of operation
-------------------
The control loop, the allocation and every simulation touch the physical world only through
the five interfaces below. Each has three implementations that pass one contract suite
(``tests/hardware/``): the simulated device in process (``hardware.simulated``), the same
simulated device behind a real pymodbus server reached over Modbus TCP, and over Modbus RTU
on a pty pair (``hardware.modbus``). So code written against these interfaces cannot tell a
simulated site from a real one, except by the URL it was given.

SIGN CONVENTION (the one convention inside the project; drivers translate at the edge)
    Power is positive when energy flows from the grid towards the vehicle battery:

    * inverter (charger power stage): ``+`` = charging the vehicle, ``-`` = discharging it
      (vehicle-to-grid); ``setpoint_w = -10_000`` asks for 10 kW of discharge.
    * site meter: ``+`` = the site imports from the grid, ``-`` = it exports. A charger that
      moves from +5 kW to -5 kW lowers the site meter reading by 10 kW.
    * limits are magnitudes (``max_charge_w >= 0``, ``max_discharge_w >= 0``), as are the
      ISO 15118-20 vehicle parameters, which the standard states as magnitudes.

    SunSpec DER models count power *out of* the DER (generation, for us discharge) as
    positive, so ``hardware.modbus`` negates at the register; the SunSpec meter models count
    import as positive, like us. Nothing outside the drivers ever sees another convention.

Time
    Every device takes an injected clock, ``Clock = Callable[[], float]`` returning seconds
    (default ``trio.current_time``, which a ``trio.testing.MockClock`` makes virtual). Every
    reading carries ``taken_at_s`` on that clock: when the value was measured (simulated) or
    when the response arrived (Modbus).

Contactors
    The inverter closes its DC contactors itself when it has power to deliver and opens them
    at zero power after an idle delay. ``open_contactors`` overrides that: normally only at
    zero current, in an emergency at once, under load; they then stay open until
    ``close_contactors`` (``InverterStatus.contactors_held_open``).

Faults
    Every I/O method is ``async`` (trio) and either returns a value that passed its range
    checks or raises ``DeviceFault`` with a ``FaultKind``. No value is ever returned from
    bad data: NaN, a negative SoC, a frequency outside 47-63 Hz, a stale sample, a garbage
    frame all become a fault, never a number. Range checks live here (``MeterReading.checked``
    and friends) so every implementation applies the same ones.

Addressing
    Devices are named by URL (``parse_device_url``), the same strings in config and CLI::

        modbus+tcp://127.0.0.1:5020/1                  host, port, unit id (default port 502, unit 1)
        modbus+rtu:///dev/ttyUSB0?baud=115200&unit=1   serial path, baud, parity N/E/O, unit id
        sim://site-a/meter                             a simulated site's device, in process
        sim://site-a/inverter-2                        ... of its second charger (inverter, thermal,
                                                       tamper, vehicle; charger = all four)

    ``hardware.connect`` turns a URL and a device kind into an object implementing one of
    these interfaces (``open_site_meter(url)``, ``open_inverter(url)``, ...).
"""

from __future__ import annotations

import enum
import math
import urllib.parse
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

Clock = Callable[[], float]
"""Seconds on some monotonic clock; injected so simulations run in virtual time."""

# --- resolutions and ranges (the numbers the contract suite checks) -------------------------

POWER_RESOLUTION_W = 0.1
FREQUENCY_RESOLUTION_HZ = 0.001
FREQUENCY_RANGE_HZ = (47.0, 63.0)  # measuring range of the site meter
VOLTAGE_RANGE_V = (0.0, 1000.0)  # line-to-neutral RMS; 0 V is a valid reading (grid down)
TEMPERATURE_RATED_C = (-25.0, 50.0)  # rated ambient of the charger
TEMPERATURE_RANGE_C = (-40.0, 125.0)  # measuring range of the thermal sensor
SOC_RANGE_PCT = (0.0, 100.0)
CHARGE_TO_DISCHARGE_MAX_S = 0.100  # full charge to full discharge at an inverter
MAX_POWER_W = 10e6  # anything larger in magnitude is out of range for one site


# --- faults ----------------------------------------------------------------------------------


class FaultKind(enum.Enum):
    TIMEOUT = "timeout"  # no answer in time
    EXCEPTION_RESPONSE = "exception_response"  # Modbus exception code from the device
    DISCONNECTED = "disconnected"  # link down, connect refused, serial port gone
    BAD_FRAME = "bad_frame"  # garbage on the wire: CRC, length, unexpected function
    STALE = "stale"  # the device answers but its measurement stopped advancing
    OUT_OF_RANGE = "out_of_range"  # NaN, negative SoC, frequency outside 47-63 Hz...
    NOT_SUPPORTED = "not_supported"  # the unit does not implement this device kind
    DEVICE_FAULT = "device_fault"  # the device reports a latched fault (welded contacts...)
    CAUSE_PRESENT = "cause_present"  # clear-faults refused: the cause is still there
    UNDER_LOAD = "under_load"  # a normal contactor opening refused: current still flows


@attrs.frozen
class DeviceFault(Exception):
    """A device could not give a trustworthy value, or refused a command.

    ``str(fault)`` is one line naming the device and the cause. ``exception_code`` is the
    Modbus exception code for ``EXCEPTION_RESPONSE``; ``codes`` the latched fault codes for
    ``DEVICE_FAULT`` / ``CAUSE_PRESENT``; ``power_w`` the AC power that was flowing for
    ``UNDER_LOAD``.
    """

    kind: FaultKind
    message: str
    device: str = ""
    exception_code: int | None = None
    codes: tuple[str, ...] = ()
    power_w: float | None = None

    def __str__(self) -> str:
        where = f"{self.device}: " if self.device else ""
        return f"{where}{self.kind.value}: {self.message}"

    @property
    def retryable(self) -> bool:
        """True for link-level faults that a reconnect or the next poll may cure."""
        return self.kind in (FaultKind.TIMEOUT, FaultKind.DISCONNECTED, FaultKind.BAD_FRAME, FaultKind.STALE)


def _check_range(name: str, value: float, lo: float, hi: float, device: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DeviceFault(FaultKind.OUT_OF_RANGE, f"{name} is not a finite number ({value!r})", device)
    if not lo <= value <= hi:
        raise DeviceFault(FaultKind.OUT_OF_RANGE, f"{name} {value:g} outside [{lo:g}, {hi:g}]", device)
    return float(value)


def require_fresh(taken_at_s: float, now_s: float, max_age_s: float, device: str = "") -> None:
    """Raise ``STALE`` if a reading taken at ``taken_at_s`` is older than ``max_age_s``."""
    age_s = now_s - taken_at_s
    if age_s > max_age_s:
        raise DeviceFault(FaultKind.STALE, f"reading is {age_s * 1e3:.1f} ms old (limit {max_age_s * 1e3:g} ms)", device)


# --- site meter ------------------------------------------------------------------------------


@attrs.frozen
class MeterReading:
    """One sample of the site's grid connection point. ``active_power_w``: + import, - export."""

    active_power_w: float  # 0.1 W resolution
    frequency_hz: float  # 1 mHz resolution, 47-63 Hz
    voltage_v: float  # line-to-neutral RMS (average of phases)
    taken_at_s: float

    @classmethod
    def checked(cls, active_power_w: float, frequency_hz: float, voltage_v: float, taken_at_s: float,
                device: str = "") -> MeterReading:
        """Validate ranges, round to the meter's resolution; raise ``OUT_OF_RANGE`` otherwise."""
        p = _check_range("active power", active_power_w, -MAX_POWER_W, MAX_POWER_W, device)
        f = _check_range("frequency", frequency_hz, *FREQUENCY_RANGE_HZ, device)
        v = _check_range("voltage", voltage_v, *VOLTAGE_RANGE_V, device)
        return cls(round(p, 1) + 0.0, round(f, 3), round(v, 1) + 0.0, taken_at_s)  # + 0.0: no -0.0


@runtime_checkable
class SiteMeter(Protocol):
    async def read(self) -> MeterReading:
        """Sample the meter now. Raises ``DeviceFault`` (STALE if the meter stopped updating)."""
        ...

    async def aclose(self) -> None: ...


# --- inverter --------------------------------------------------------------------------------


class InverterState(enum.Enum):
    IDLE = "idle"  # contactors may be closed, power ~0
    CHARGING = "charging"
    DISCHARGING = "discharging"
    SAFE_MODE = "safe_mode"  # commanded: power held at 0, setpoints refused until released
    FAULT = "fault"  # latched fault; power 0, contactors open; needs clear_faults()


class ContactorState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    WELDED = "welded"  # stuck closed: a latched fault that clear_faults() cannot clear


@attrs.frozen
class InverterLimits:
    """What the power stage can do now (magnitudes). ``ramp_w_per_s`` bounds |d power / dt|.

    ``rated_w`` is the nameplate active power rating (SunSpec 702 ``WMaxRtg``), which does
    not move with the vehicle or a derating: the base of the IEEE 1547 droop. 0 when the
    device does not say (our model 64900 has no rating point of its own; a device with it
    is read for 702 as well).
    """

    max_charge_w: float
    max_discharge_w: float
    ramp_w_per_s: float
    rated_w: float = 0.0

    def clamp(self, setpoint_w: float) -> float:
        return min(self.max_charge_w, max(-self.max_discharge_w, setpoint_w))


@attrs.frozen
class InverterStatus:
    state: InverterState
    setpoint_w: float  # the setpoint in force (after clamping to limits); + charge, - discharge
    actual_power_w: float  # measured at the AC terminals; same sign
    limits: InverterLimits
    contactor: ContactorState
    contactor_cycles: int  # close/open cycles so far (wear)
    contactor_cycle_budget: int  # rated cycles; wear beyond it ends in WELDED
    faults: tuple[str, ...]  # latched fault codes, e.g. ("contactor_welded",); empty if none
    taken_at_s: float
    contactors_held_open: bool = False  # by ``open_contactors`` until ``close_contactors``

    @classmethod
    def checked(cls, *, state: InverterState, setpoint_w: float, actual_power_w: float,
                limits: InverterLimits, contactor: ContactorState, contactor_cycles: int,
                contactor_cycle_budget: int, faults: tuple[str, ...], taken_at_s: float,
                contactors_held_open: bool = False, device: str = "") -> InverterStatus:
        for name, value in (("max charge power", limits.max_charge_w), ("max discharge power", limits.max_discharge_w),
                            ("ramp rate", limits.ramp_w_per_s), ("rated power", limits.rated_w)):
            _check_range(name, value, 0.0, MAX_POWER_W * 1000, device)
        _check_range("setpoint", setpoint_w, -MAX_POWER_W, MAX_POWER_W, device)
        _check_range("actual power", actual_power_w, -MAX_POWER_W, MAX_POWER_W, device)
        if contactor_cycles < 0 or contactor_cycle_budget < 0:
            raise DeviceFault(FaultKind.OUT_OF_RANGE, "negative contactor cycle count", device)
        return cls(state, round(setpoint_w, 1) + 0.0, round(actual_power_w, 1) + 0.0, limits, contactor,
                   contactor_cycles, contactor_cycle_budget, faults, taken_at_s, bool(contactors_held_open))


@attrs.frozen
class ClearResult:
    """What ``clear_faults`` did: the codes it cleared (empty when there was nothing to clear)."""

    cleared: tuple[str, ...]


@attrs.frozen
class ContactorResult:
    """What ``open_contactors`` / ``close_contactors`` did.

    ``changed`` is False when the contactors were already as asked (the commands are
    idempotent). ``under_load`` is True when an emergency opening broke current: heavy wear
    (breaking DC under load is what welds contacts), ``broken_power_w`` the AC power it broke.
    """

    contactor: ContactorState  # right after the command
    held_open: bool  # held open until ``close_contactors``
    changed: bool
    under_load: bool = False
    broken_power_w: float = 0.0


@runtime_checkable
class Inverter(Protocol):
    async def status(self) -> InverterStatus: ...

    async def set_power(self, setpoint_w: float) -> float:
        """Command ``setpoint_w`` (+ charge, - discharge); returns the setpoint in force.

        The setpoint is clamped to the current limits (the value returned says by how much);
        the inverter ramps towards it at ``ramp_w_per_s``, closing its contactors if needed.
        Raises ``DeviceFault(DEVICE_FAULT)`` in FAULT state, in SAFE_MODE and for a nonzero
        setpoint while ``open_contactors`` holds the contactors open (0 W is accepted), and
        ``ValueError`` for a non-finite setpoint (a caller bug, never sent to a device).
        """
        ...

    async def set_safe_mode(self, on: bool) -> None:
        """Enter (power to 0, setpoints refused) or leave safe mode. Idempotent."""
        ...

    async def clear_faults(self) -> ClearResult:
        """Reset latched faults. Idempotent: a second call clears nothing and succeeds.

        Raises ``DeviceFault(CAUSE_PRESENT)`` naming the cause when a fault cannot be cleared
        because its cause persists (welded contacts, over-temperature).
        """
        ...

    async def open_contactors(self, *, emergency: bool = False) -> ContactorResult:
        """Open the contactors and hold them open (power 0) until ``close_contactors``.

        Normal (``emergency=False``): only at zero current; while power flows it refuses with
        ``DeviceFault(UNDER_LOAD)`` (``power_w`` says how much) and changes nothing: set 0 W
        first. Emergency: open now, whatever the current; an opening under load counts heavy
        wear on the contactor (``ContactorResult.under_load``). Either way welded contacts
        cannot open: ``DeviceFault(DEVICE_FAULT)`` with code ``contactor_welded``.
        Idempotent: contactors already open are held open and ``changed`` is False.
        """
        ...

    async def close_contactors(self) -> ContactorResult:
        """Release the hold of ``open_contactors``: the inverter closes its contactors again
        when it has power to deliver, as it does by itself otherwise. Idempotent. The
        setpoint stays 0 until the next ``set_power`` (an open never resumes a setpoint).
        """
        ...

    async def aclose(self) -> None: ...


# --- thermal sensor and tamper switch --------------------------------------------------------


@attrs.frozen
class ThermalReading:
    temperature_c: float  # power stage temperature; rated ambient -25..+50 deg C
    taken_at_s: float

    @classmethod
    def checked(cls, temperature_c: float, taken_at_s: float, device: str = "") -> ThermalReading:
        return cls(round(_check_range("temperature", temperature_c, *TEMPERATURE_RANGE_C, device), 2), taken_at_s)


@runtime_checkable
class ThermalSensor(Protocol):
    async def read(self) -> ThermalReading: ...

    async def aclose(self) -> None: ...


@attrs.frozen
class TamperReading:
    open: bool  # the enclosure is open now
    latched: bool  # it has been opened since the last clear_faults()
    taken_at_s: float


@runtime_checkable
class TamperSwitch(Protocol):
    async def read(self) -> TamperReading: ...

    async def aclose(self) -> None: ...


# --- vehicle link (ISO 15118-20 bidirectional power transfer) --------------------------------


class BmsStatus(enum.IntEnum):
    """The vehicle BMS's status code as the charger's vehicle link reports it."""

    NORMAL = 0x00
    BATTERY_UPPER_LIMIT = 0x01  # TargetSOC reached: no more charge
    BATTERY_OVER_TEMPERATURE = 0x02  # BMS derates or refuses power transfer
    BATTERY_LOWER_LIMIT = 0x03  # MinimumSOC reached: no more discharge (Battery_Lower_Limit)
    BATTERY_FAULT = 0x04  # BMS refuses any power transfer


# attribute -> name in ISO 15118-20 (BPT_DC/AC parameters and DisplayParameters)
ISO15118_20_NAMES: dict[str, str] = {
    "ev_maximum_charge_power_w": "EVMaximumChargePower",
    "ev_maximum_discharge_power_w": "EVMaximumDischargePower",
    "ev_minimum_discharge_power_w": "EVMinimumDischargePower",
    "present_soc_pct": "PresentSOC",
    "minimum_soc_pct": "MinimumSOC",
    "target_soc_pct": "TargetSOC",
    "battery_energy_capacity_wh": "BatteryEnergyCapacity",
}


@attrs.frozen
class VehicleParameters:
    """The connected EV's bidirectional power transfer parameters, named as ISO 15118-20 does
    (see ``ISO15118_20_NAMES``; powers are magnitudes in W, SoC in percent).

    The standard carries SoC as whole percent; the simulated link gives 0.01 % so the control
    loop sees the energy move between integer steps.
    """

    ev_maximum_charge_power_w: float  # EVMaximumChargePower
    ev_maximum_discharge_power_w: float  # EVMaximumDischargePower (after firmware caps)
    ev_minimum_discharge_power_w: float  # EVMinimumDischargePower
    present_soc_pct: float  # PresentSOC
    minimum_soc_pct: float  # MinimumSOC: the BMS stops discharge here (BATTERY_LOWER_LIMIT)
    target_soc_pct: float  # TargetSOC
    battery_energy_capacity_wh: float  # BatteryEnergyCapacity

    def iso_names(self) -> dict[str, float]:
        """The same values keyed by their ISO 15118-20 names."""
        return {iso: getattr(self, attr) for attr, iso in ISO15118_20_NAMES.items()}

    @property
    def energy_above_minimum_wh(self) -> float:
        return max(0.0, (self.present_soc_pct - self.minimum_soc_pct) / 100.0 * self.battery_energy_capacity_wh)


@attrs.frozen
class VehicleStatus:
    connected: bool
    parameters: VehicleParameters | None  # None when no vehicle is connected
    bms_status: BmsStatus
    vehicle_id: str  # the emulator's model name / EVCCID; "" when none
    taken_at_s: float

    @classmethod
    def checked(cls, *, connected: bool, parameters: VehicleParameters | None, bms_status: int,
                vehicle_id: str, taken_at_s: float, device: str = "") -> VehicleStatus:
        try:
            bms = BmsStatus(bms_status)
        except ValueError:
            raise DeviceFault(FaultKind.OUT_OF_RANGE, f"unknown BMS status 0x{bms_status:02x}", device) from None
        if not connected:
            return cls(False, None, bms, "", taken_at_s)
        if parameters is None:
            raise DeviceFault(FaultKind.OUT_OF_RANGE, "vehicle connected but no parameters", device)
        p = parameters
        for attr in ("ev_maximum_charge_power_w", "ev_maximum_discharge_power_w", "ev_minimum_discharge_power_w"):
            _check_range(ISO15118_20_NAMES[attr], getattr(p, attr), 0.0, MAX_POWER_W, device)
        for attr in ("present_soc_pct", "minimum_soc_pct", "target_soc_pct"):
            _check_range(ISO15118_20_NAMES[attr], getattr(p, attr), *SOC_RANGE_PCT, device)
        _check_range("BatteryEnergyCapacity", p.battery_energy_capacity_wh, 1.0, 1e7, device)
        return cls(True, p, bms, vehicle_id, taken_at_s)


@runtime_checkable
class VehicleLink(Protocol):
    async def read(self) -> VehicleStatus: ...

    async def aclose(self) -> None: ...


# --- device URLs -----------------------------------------------------------------------------


class DeviceUrlError(ValueError):
    """A device URL that cannot be used; the message quotes it and says what was expected."""


class DeviceKind(enum.Enum):
    METER = "meter"
    INVERTER = "inverter"
    THERMAL = "thermal"
    TAMPER = "tamper"
    VEHICLE = "vehicle"


SCHEMES = ("modbus+tcp", "modbus+rtu", "sim")
PARITIES = ("N", "E", "O")


@attrs.frozen
class DeviceUrl:
    """A parsed device URL. Fields that do not apply to the scheme keep their defaults."""

    scheme: str  # one of SCHEMES
    text: str  # the URL as given (for messages)
    host: str = ""  # modbus+tcp
    port: int = 502  # modbus+tcp
    serial_path: str = ""  # modbus+rtu
    baud: int = 19200  # modbus+rtu
    parity: str = "N"  # modbus+rtu
    unit: int = 1  # modbus unit (slave) id, 1..247
    site: str = ""  # sim: the simulated site's name
    device: str = ""  # sim: meter, inverter, thermal, tamper, vehicle, or charger (all four of a charger)
    index: int = 1  # sim: which charger of the site (``sim://site-a/inverter-2``), from 1

    def __str__(self) -> str:
        return self.text


def _int_param(url: str, name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise DeviceUrlError(f"{url!r}: {name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise DeviceUrlError(f"{url!r}: {name} must be in {lo}..{hi}, got {n}")
    return n


def parse_device_url(text: str) -> DeviceUrl:
    """Parse a device URL (see the module docstring); raise ``DeviceUrlError`` on any problem."""
    if not isinstance(text, str) or not text.strip():
        raise DeviceUrlError(f"empty device URL (expected e.g. 'modbus+tcp://127.0.0.1:5020/1'), got {text!r}")
    text = text.strip()
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DeviceUrlError(f"{text!r}: unknown scheme {parts.scheme!r} (expected one of: {', '.join(SCHEMES)})")
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise DeviceUrlError(f"{text!r}: malformed query string {parts.query!r}") from None
    params = {k: v[-1] for k, v in query.items()}
    if parts.fragment:
        raise DeviceUrlError(f"{text!r}: fragments are not used in device URLs")

    def take(allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise DeviceUrlError(f"{text!r}: unknown parameter {unknown[0]!r} (allowed: {', '.join(allowed) or 'none'})")

    if scheme == "modbus+tcp":
        take(("unit",))
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise DeviceUrlError(f"{text!r}: bad port (expected 1..65535)") from None
        if not host:
            raise DeviceUrlError(f"{text!r}: missing host (expected modbus+tcp://HOST[:PORT][/UNIT])")
        path = parts.path.strip("/")
        if path and "unit" in params:
            raise DeviceUrlError(f"{text!r}: unit given twice (path and ?unit=)")
        unit_text = path or params.get("unit", "1")
        unit = _int_param(text, "unit id", unit_text, 1, 247)
        return DeviceUrl(scheme, text, host=host, port=port or 502, unit=unit)
    if scheme == "modbus+rtu":
        take(("baud", "unit", "parity"))
        if parts.netloc:
            raise DeviceUrlError(f"{text!r}: expected modbus+rtu:///dev/PORT?baud=N&unit=N (three slashes, no host)")
        if not parts.path or parts.path == "/":
            raise DeviceUrlError(f"{text!r}: missing serial device path")
        baud = _int_param(text, "baud", params.get("baud", "19200"), 300, 4_000_000)
        unit = _int_param(text, "unit id", params.get("unit", "1"), 1, 247)
        parity = params.get("parity", "N").upper()
        if parity not in PARITIES:
            raise DeviceUrlError(f"{text!r}: parity must be one of N, E, O, got {parity!r}")
        return DeviceUrl(scheme, text, serial_path=parts.path, baud=baud, parity=parity, unit=unit)
    # sim://SITE/DEVICE
    take(())
    site = parts.netloc
    device = parts.path.strip("/")
    if not site or not device or "/" in device:
        raise DeviceUrlError(f"{text!r}: expected sim://SITE/DEVICE, e.g. sim://site-a/meter")
    base, _, index_text = device.partition("-")
    allowed = {k.value for k in DeviceKind} | {"charger"}
    if base not in allowed:
        raise DeviceUrlError(f"{text!r}: unknown simulated device {device!r} (expected one of: {', '.join(sorted(allowed))})")
    if base == "meter" and index_text:
        raise DeviceUrlError(f"{text!r}: a site has one meter (sim://SITE/meter)")
    index = _int_param(text, "charger index", index_text, 1, 10_000) if index_text else 1
    return DeviceUrl(scheme, text, site=site, device=base, index=index)
