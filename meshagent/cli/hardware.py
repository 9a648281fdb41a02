"""Hardware commands: ``read``, ``test-discharge``, ``clear-faults``, ``emulator``.

Each opens devices through ``hardware.connect`` from a URL (``modbus+tcp://``,
``modbus+rtu://``, ``sim://``), so the same command works on a real charger, on the EV
emulator over Modbus, and on an in-process simulated site. Device faults are one line
(``meshagent: error: <url>: <kind>: <reason>``) and exit 1; a bad URL is a usage error.
Heavy imports (trio, pymodbus) happen inside the commands, keeping ``meshagent --help``
fast.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from hardware.simulated.visits import DEFAULT_VISITS
from meshagent.errors import MeshagentError

TRANSITION_LIMIT_S = 0.100
DEFAULT_API = "127.0.0.1:7947"


def _url(value: str, param: str) -> Any:
    from hardware.interfaces import DeviceUrlError, parse_device_url

    try:
        return parse_device_url(value)
    except DeviceUrlError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def _run(fn: Any, *args: Any) -> Any:
    import trio

    from hardware.interfaces import DeviceFault

    try:
        return trio.run(fn, *args)
    except DeviceFault as fault:
        # a one-shot command does not retry: drop the link's "; retry in 0.05 s"
        raise MeshagentError(re.sub(r"; retry in [0-9.e+-]+ s$", "", str(fault))) from None


def _plain(value: Any) -> Any:
    import enum

    import attrs

    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _print_record(title: str, record: dict[str, Any]) -> None:
    click.echo(f"[{title}]")
    for key, value in record.items():
        if key in ("discharge_caps", "parameters"):
            continue  # structured detail for --json; the text has its own line
        if isinstance(value, dict):
            for k2, v2 in value.items():
                click.echo(f"  {key}.{k2} = {v2}")
        else:
            click.echo(f"  {key} = {value}")


def _token_file_option(fn: Any) -> Any:
    from meshagent.cli.api import token_file_option

    return token_file_option(fn)


def register(cli: click.Group) -> None:
    @cli.command("read")
    @click.argument("device_url")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the listing.")
    @click.option("--raw", is_flag=True, help="Also show every SunSpec point as read (before scale factors, "
                  "SunSpec sign); --json always has both.")
    @click.option("--timeout", "timeout_s", default=1.0, show_default=True, type=float,
                  help="Seconds to wait for each Modbus reply.")
    def read(device_url: str, as_json: bool, raw: bool, timeout_s: float) -> None:
        """Dump the live values of the device at DEVICE_URL.

        A Modbus unit shows whatever it implements (a site meter, or a charger's inverter,
        thermal sensor, tamper switch and vehicle link); sim://SITE/meter or
        sim://SITE/charger-N shows a simulated one.
        """
        url = _url(device_url, "DEVICE_URL")
        out = _run(_read, url, raw or as_json, timeout_s)
        if as_json:  # both: interpreted values (our sign, enums by name) and the raw points
            click.echo(json.dumps({k: v for k, v in out.items() if not k.endswith(" text")}, sort_keys=True,
                                  default=str))
        else:
            for title, record in out.items():
                if title.startswith("model ") and not title.endswith((" text", " raw")) and f"{title} text" in out:
                    continue  # printed from its text record: units, names, resolution
                _print_record(title.removesuffix(" text"), record)

    @cli.command("test-discharge")
    @click.option("--rate", default="10kW", show_default=True, help="Discharge power to command (e.g. 10kW).")
    @click.option("--duration", default="30s", show_default=True, help="How long to hold the discharge.")
    @click.option("--device", "device_url", default=None,
                  help="The inverter's URL (required; sim://SITE/inverter for a simulator).")
    def test_discharge(rate: str, duration: str, device_url: str | None) -> None:
        """Inverter calibration from the seed procedure: charge, command a discharge of RATE,
        measure the charge-to-discharge transition, hold for DURATION, return to idle.

        Passes if the transition takes at most 100 ms. Exit status 0 on pass, 1 on fail.
        """
        from meshagent.config.units import parse_duration_s, parse_power_w

        try:
            rate_w = parse_power_w(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from None
        try:
            duration_s = parse_duration_s(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--duration") from None
        if rate_w <= 0:
            raise click.BadParameter("must be a positive power", param_hint="--rate")
        if not 0 <= duration_s <= 3600:
            raise click.BadParameter("must be between 0s and 1h", param_hint="--duration")
        if device_url is None:
            raise MeshagentError("test-discharge: pass --device URL, the inverter to test (sim://site-a/inverter "
                                 "for a simulator); a running agent's inverter is driven by its control loop: "
                                 "stop the agent first")
        url = _url(device_url, "--device")
        report = _run(_test_discharge, url, rate_w, duration_s)
        for line in report["lines"]:
            click.echo(line)
        if not report["passed"]:
            raise SystemExit(1)

    @cli.command("clear-faults")
    @click.option("--device", "device_url", default=None,
                  help="An inverter's URL: reset its own latches now (sim://SITE/inverter for a simulator).")
    @click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                  help="The node's config: ask its control loop, through its state directory.")
    @click.option("--api", "api_address", default=None,
                  help=f"The running agent's API address [default without --device/--config: {DEFAULT_API}].")
    @click.option("--wait", "wait_s", default=3.0, show_default=True, type=click.FloatRange(0.1, 60),
                  help="Seconds to wait for the control loop's answer.")
    @_token_file_option
    def clear_faults(device_url: str | None, config_path: str | None, api_address: str | None, wait_s: float) -> None:
        """Clear the latched faults of a charger, and say what happened.

        With no flag, the agent running on this machine is asked through its API; --config
        asks the node's control loop through its state directory; --device resets an
        inverter's own latches. Each active code is answered: cleared, or refused with the
        cause still present and what the code needs (exit status 1). A refused clear is not
        remembered: clear again once the cause is gone.
        """
        refused = False
        if device_url is None and config_path is None and api_address is None:
            api_address = DEFAULT_API
        if api_address is not None:
            answer = _clear_through_api(api_address, wait_s)
            refused |= _print_answer(answer)
        if config_path is not None:
            answer = _clear_through_state_dir(config_path, wait_s)
            refused |= _print_answer(answer)
        if device_url is not None:
            url = _url(device_url, "--device")
            result = _run(_clear, url)
            if result.cleared:
                click.echo(f"{url}: cleared {', '.join(result.cleared)}")
            else:
                click.echo(f"{url}: no latched faults; nothing to clear")
        if refused:
            raise SystemExit(1)

    @cli.command("emulator")
    @click.option("--mode", type=click.Choice(["iso15118-20"]), required=True,
                  help="What to emulate: ISO 15118-20 bidirectional vehicles behind a charger's Modbus map.")
    @click.option("--vehicles", default=1, show_default=True, type=click.IntRange(1, 236),
                  help="Number of chargers, each with a vehicle plugged in.")
    @click.option("--listen", default="modbus+tcp://127.0.0.1:5020", show_default=True,
                  help="modbus+tcp://HOST:PORT (loopback only), modbus+rtu:///dev/PORT, or modbus+rtu://pty "
                       "(make a pty pair and print the client end).")
    @click.option("--model", "models", multiple=True,
                  help="Vehicle model (repeatable; cycled over the chargers). Default: every model in the table.")
    @click.option("--old-firmware", is_flag=True, help="Vehicles cap discharge at 50% of their maximum charge power.")
    @click.option("--max-discharge-amps", type=click.FloatRange(0, 1000), default=None,
                  help="The MAX_DISCHARGE_AMPS setting (caps discharge at A x battery voltage).")
    @click.option("--soc", "soc_pct", type=click.FloatRange(0, 100), default=60.0, show_default=True,
                  help="Initial PresentSOC of every vehicle.")
    @click.option("--min-soc", "min_soc_pct", type=click.FloatRange(0, 100), default=20.0, show_default=True,
                  help="MinimumSOC (the BMS stops discharge there: status 0x03 Battery_Lower_Limit).")
    @click.option("--duration", default=None, help="Stop after this long (default: run until Ctrl-C).")
    @click.option("--frequency", default=None,
                  help="The grid frequency the site meter reports [default: the agent's default nominal frequency, "
                       "control.nominal_frequency].")
    @click.option("--arrivals", default=DEFAULT_VISITS, show_default=True, metavar="STAY/AWAY|none",
                  help="Vehicles come and go: each stays STAY, leaves, and the next one arrives AWAY later "
                       "(chargers staggered); none: plugged in for good.")
    def emulator(mode: str, vehicles: int, listen: str, models: tuple[str, ...], old_firmware: bool,
                 max_discharge_amps: float | None, soc_pct: float, min_soc_pct: float, duration: str | None,
                 frequency: str | None, arrivals: str) -> None:
        """Serve simulated vehicles behind simulated chargers over real Modbus.

        Unit 1 is the site meter; chargers are units 11, 12, ... (one per vehicle). A
        request for any other unit is logged in one line and answered with Modbus
        exception 0x0B (gateway target device failed to respond). Every charger starts
        with a vehicle plugged in; with --arrivals it leaves after STAY and another
        (the next model, a new id) arrives AWAY later: each visit is one charging session.
        """
        from meshagent.config.units import parse_duration_s, parse_frequency_hz
        from meshagent.control.config import ControlSection

        frequency_hz = ControlSection().nominal_frequency_hz
        if frequency is not None:
            try:
                frequency_hz = parse_frequency_hz(frequency)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--frequency") from None
            if not 45.0 <= frequency_hz <= 65.0:
                raise click.BadParameter("must be within 45Hz..65Hz", param_hint="--frequency")

        duration_s = None
        if duration is not None:
            try:
                duration_s = parse_duration_s(duration)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--duration") from None
        if min_soc_pct > soc_pct:
            raise click.BadParameter("must not exceed --soc", param_hint="--min-soc")
        from hardware.simulated.visits import Visits

        try:
            visits = Visits.parse(arrivals, parse_duration_s)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--arrivals") from None
        _run(_emulate, listen, vehicles, models, old_firmware, max_discharge_amps, soc_pct, min_soc_pct, duration_s,
             frequency_hz, visits)


# --- the commands' bodies (trio) ---------------------------------------------------------


def _print_answer(answer: dict[str, Any]) -> bool:
    """Print a control loop's clear-faults answer; True when a code was refused."""
    from meshagent.control.operator import describe

    lines, ok = describe(answer)
    for line in lines:
        click.echo(line)
    return not ok


def _clear_through_api(address: str, wait_s: float) -> dict[str, Any]:

    import trio

    from meshagent.api.http import get_json
    from meshagent.mesh.config import DEFAULT_API_PORT, parse_host_port

    try:
        host, port = parse_host_port(address, DEFAULT_API_PORT)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--api") from None

    from meshagent.cli.api import current_ssl_context, current_token

    token, tls = current_token(), current_ssl_context()

    async def ask() -> tuple[int, Any]:
        status, body = await get_json(host, port, "/v1/control/clear-faults", method="POST", token=token,
                                      ssl_context=tls)
        if status != 202 or not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return status, body
        with trio.move_on_after(wait_s):
            while True:
                status, answer = await get_json(host, port, f"/v1/control/clear-faults?id={body['id']}",
                                                token=token, ssl_context=tls)
                if status != 202:
                    return status, answer
                await trio.sleep(0.02)
        return 504, {"error": f"the control loop did not answer within {wait_s:g} s"}

    try:
        status, body = trio.run(ask)
    except (OSError, trio.TooSlowError):
        raise MeshagentError(f"no running agent at {host}:{port}: pass --config NODE.toml (its state directory), "
                             "--api HOST:PORT, or --device URL (an inverter; sim://SITE/inverter for a simulator)"
                             ) from None
    if status != 200 or not isinstance(body, dict):
        detail = body.get("error") if isinstance(body, dict) else body
        if status == 401:
            detail = f"{detail} (pass --token-file FILE; `meshagent api token --config NODE.toml` prints one)"
        raise MeshagentError(f"agent at {host}:{port}: {detail}")
    return body


def _clear_through_state_dir(config_path: str, wait_s: float) -> dict[str, Any]:
    import secrets
    import time
    from pathlib import Path

    from meshagent.config import load_config
    from meshagent.control import journal

    cfg = load_config(Path(config_path))
    state_dir = cfg.node.state_dir
    request_id = secrets.token_hex(8)
    journal.request_clear(state_dir, by="meshagent clear-faults", request_id=request_id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        answer = journal.read_clear_answer(state_dir, request_id)
        if answer is not None:
            return answer
        time.sleep(0.02)
    latched = ", ".join(journal.load_latched(state_dir)) or "nothing"
    raise MeshagentError(f"no running agent answered within {wait_s:g} s (state_dir {state_dir}, latched: {latched}); "
                         "the request stays there and its next start answers it")


async def _read(url: Any, raw: bool, timeout_s: float) -> dict[str, Any]:
    from hardware.connect import open_charger, open_device
    from hardware.interfaces import DeviceKind

    out: dict[str, Any] = {}
    if url.scheme == "sim":
        if url.device == "meter":
            async with open_device(url, DeviceKind.METER) as meter:
                out["meter"] = _plain(await meter.read())
            return out
        async with open_charger(url) as ch:
            out["inverter"] = _plain(await ch.inverter.status())
            out["thermal"] = _plain(await ch.thermal.read())
            out["tamper"] = _plain(await ch.tamper.read())
            s = ch.vehicle.charger.snapshot()
            out["vehicle"] = _vehicle_record(await ch.vehicle.read(), {
                "old_firmware": s.ev_old_firmware, "max_discharge_amps": s.max_discharge_amps,
                "discharge_spec_w": s.ev_discharge_spec_w, "charge_spec_w": s.ev_charge_spec_w,
                "nominal_v": s.ev_nominal_v})
        return out
    from hardware.interfaces import DeviceFault, FaultKind
    from hardware.modbus.interpret import interpret
    from hardware.modbus.link import open_link
    from hardware.modbus.registers import MODELS
    from hardware.modbus.sunspec import SunSpecUnit

    link = open_link(url, timeout_s=timeout_s)
    try:
        unit = SunSpecUnit(link)
        models = await unit.models()
        out["unit"] = {"url": str(url), "models": " ".join(str(m) for m in models)}
        if 213 in models:
            meter = open_device(url, DeviceKind.METER, link=link)
            out["meter"] = _plain(await meter.read())
        if 704 in models:  # a charger: ours (64900) or one with only the standard models
            for kind, read in ((DeviceKind.INVERTER, "status"), (DeviceKind.THERMAL, "read"),
                               (DeviceKind.TAMPER, "read"), (DeviceKind.VEHICLE, "read")):
                dev = open_device(url, kind, link=link)
                try:
                    value = await getattr(dev, read)()
                    if kind is DeviceKind.VEHICLE:
                        out[kind.value] = _vehicle_record(value, await _caps(unit, models))
                        continue
                    out[kind.value] = _plain(value)
                except DeviceFault as fault:
                    if fault.kind is not FaultKind.NOT_SUPPORTED:
                        raise
                    out[kind.value] = {"available": False, "reason": fault.message}
        for mid in models:
            if mid not in MODELS:
                out[f"model {mid}"] = {"note": "not a model this tool knows: shown with --raw only" if raw else
                                       "not a model this tool knows"}
                continue
            points = interpret(mid, await unit.read_model_points(mid))
            title = f"model {mid} ({MODELS[mid].name})"
            out[title] = {name: e["value"] for name, e in points.items() if name not in ("ID", "L")}
            out[f"{title} text"] = {name: e["text"] for name, e in points.items() if name not in ("ID", "L")}
            if raw:
                out[f"{title} raw"] = {name: e["raw"] for name, e in points.items()}
    finally:
        await link.aclose()
    return out


async def _caps(unit: Any, models: dict[int, int]) -> dict[str, Any] | None:
    """The vehicle's discharge caps as our model 64900 reports them; None on a standard device."""
    from hardware.modbus.registers import CHARGER_MODEL_ID

    if CHARGER_MODEL_ID not in models:
        return None
    b = await unit.read_block(CHARGER_MODEL_ID, "EVFwCap", "EVNomV")
    return {"old_firmware": b.get("EVFwCap") == 1, "max_discharge_amps": b.get("MaxDisA"),
            "discharge_spec_w": b.get("EVDisSpecW"), "charge_spec_w": b.get("EVChaSpecW"),
            "nominal_v": b.get("EVNomV")}


def _vehicle_record(status: Any, caps: dict[str, Any] | None) -> dict[str, Any]:
    """The vehicle link under ISO 15118-20's parameter names, with the discharge caps in force."""
    from hardware.interfaces import ISO15118_20_NAMES, BmsStatus
    from hardware.modbus.interpret import discharge_caps

    units = {"power": "W", "soc": "%", "energy": "Wh"}
    record: dict[str, Any] = {"connected": status.connected, "vehicle_id": status.vehicle_id,
                              "bms_status": f"{BmsStatus(status.bms_status).name} (0x{int(status.bms_status):02x})"}
    p = status.parameters
    record["parameters"] = _plain(p)  # for --json: the numbers, as the interface names them
    for attr, name in ISO15118_20_NAMES.items():
        value = getattr(p, attr) if p is not None else None
        unit = units["power" if attr.endswith("_w") and "energy" not in attr else "soc" if "soc" in attr else "energy"]
        record[name] = None if value is None else f"{value:g} {unit}"
    if not status.connected:
        record["discharge caps in force"] = "no vehicle"
    elif caps is None:
        record["discharge caps in force"] = "not reported (the device has no model 64900)"
    else:
        found = discharge_caps(**caps)
        binding = [c for c in found if c.get("binding")]
        record["discharge caps in force"] = "; ".join(
            c["text"] + (" (limits EVMaximumDischargePower)" if c in binding else "") for c in found) or "none"
        record["discharge_caps"] = found
        record["vehicle discharge power before caps"] = f"{caps['discharge_spec_w']:g} W"
    return record


async def _clear(url: Any) -> Any:
    from hardware.connect import open_device
    from hardware.interfaces import DeviceKind

    async with open_device(url, DeviceKind.INVERTER, timeout_s=1.0) as inverter:
        return await inverter.clear_faults()


async def _test_discharge(url: Any, rate_w: float, duration_s: float) -> dict[str, Any]:
    import trio

    from hardware.connect import open_device
    from hardware.interfaces import DeviceKind, InverterState

    lines: list[str] = []
    async with open_device(url, DeviceKind.INVERTER, timeout_s=1.0) as inv:
        status = await inv.status()
        if status.state in (InverterState.FAULT, InverterState.SAFE_MODE):
            raise MeshagentError(f"{url}: inverter is in {status.state.value} ({', '.join(status.faults) or 'no faults'}); "
                                 "run `meshagent clear-faults` first")
        lim = status.limits
        if lim.max_charge_w <= 0 or lim.max_discharge_w <= 0:
            raise MeshagentError(f"{url}: no vehicle can take charge and discharge now "
                                 f"(limits +{lim.max_charge_w:g} W / -{lim.max_discharge_w:g} W)")
        charge_w = min(lim.max_charge_w, rate_w)
        discharge_w = min(lim.max_discharge_w, rate_w)
        if discharge_w < rate_w:
            lines.append(f"note: discharge limited to {discharge_w:g} W by the inverter/vehicle limits")
        # 1. charge until steady
        await inv.set_power(charge_w)
        with trio.fail_after(5.0):
            while True:
                if (await inv.status()).actual_power_w >= 0.9 * charge_w:
                    break
                await trio.sleep(0.002)
        # 2. command the discharge and time it: command -> 90 % of the discharge reached
        t0 = trio.current_time()
        applied = await inv.set_power(-discharge_w)
        with trio.fail_after(5.0):
            while True:
                s = await inv.status()
                if s.actual_power_w <= 0.9 * applied:
                    break
                await trio.sleep(0.001)
        transition_s = trio.current_time() - t0
        # 3. hold, watching the power, then back to idle
        samples: list[float] = []
        end = trio.current_time() + duration_s
        while trio.current_time() < end:
            samples.append((await inv.status()).actual_power_w)
            await trio.sleep(min(0.1, max(0.0, end - trio.current_time())))
        await inv.set_power(0.0)
    passed = transition_s <= TRANSITION_LIMIT_S
    mean_w = sum(samples) / len(samples) if samples else applied
    lines += [
        f"device:      {url}",
        f"charge:      +{charge_w:g} W, then discharge {applied:g} W",
        f"transition:  {transition_s * 1e3:.1f} ms from command to 90% of the discharge (limit 100 ms)",
        f"held:        {duration_s:g} s at {mean_w:.1f} W mean",
        f"result:      {'PASS' if passed else 'FAIL'}",
    ]
    return {"passed": passed, "transition_s": transition_s, "lines": lines}


def _log_line(line: str) -> None:
    click.echo(f"emulator: {line}", err=True)


async def _emulate(listen: str, n: int, models: tuple[str, ...], old_firmware: bool, max_discharge_amps: float | None,
                   soc_pct: float, min_soc_pct: float, duration_s: float | None, frequency_hz: float = 60.0,
                   visits: Any = None) -> None:
    import functools
    import ipaddress
    import math
    import time
    import urllib.parse

    import trio

    from hardware.simulated.serve import PtyLine, SimServer, site_units
    from hardware.simulated.site import SimulatedSite
    from hardware.simulated.vehicles import VEHICLE_SPECS, VehicleConfig

    names = models or tuple(VEHICLE_SPECS)
    unknown = [m for m in names if m not in VEHICLE_SPECS]
    if unknown:
        raise click.BadParameter(f"unknown model {unknown[0]!r} (known: {', '.join(VEHICLE_SPECS)})", param_hint="--model")

    def vehicle(i: int, visit: int) -> VehicleConfig:
        """Charger ``i``'s vehicle on its ``visit``-th visit: models cycled, a new id each time."""
        k = i + visit * n
        return VehicleConfig.of(names[k % len(names)], present_soc_pct=soc_pct, minimum_soc_pct=min_soc_pct,
                                firmware="old" if old_firmware else "current", max_discharge_amps=max_discharge_amps,
                                vehicle_id=f"EV{k + 1:03d}-{names[k % len(names)]}")

    vehicles = [vehicle(i, 0) for i in range(n)]
    site = SimulatedSite.with_chargers(time.monotonic, n, name="emulator", vehicles=vehicles, frequency_hz=frequency_hz)
    units = site_units(site)
    parts = urllib.parse.urlsplit(listen)
    line = None
    if parts.scheme == "modbus+tcp":
        host = parts.hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise click.BadParameter("the emulator listens on loopback only (127.0.0.0/8 or ::1)", param_hint="--listen")
        try:
            port = parts.port if parts.port is not None else 5020
        except ValueError:
            raise click.BadParameter(f"bad port in {listen!r}", param_hint="--listen") from None
        server = SimServer(units, kind="tcp", host=host, port=port, log=_log_line)
    elif parts.scheme == "modbus+rtu":
        query = urllib.parse.parse_qs(parts.query)
        baud = int(query.get("baud", ["115200"])[-1])
        if parts.netloc == "pty":
            line = PtyLine(baud=baud).open()
            path = line.server_path
        else:
            path = parts.path
        server = SimServer(units, kind="rtu", serial_path=path, baud=baud, log=_log_line)
    else:
        raise click.BadParameter(f"expected modbus+tcp://HOST:PORT or modbus+rtu:///dev/PORT, got {listen!r}",
                                 param_hint="--listen")
    try:
        try:
            await server.start()
        except OSError as exc:
            raise MeshagentError(f"cannot listen on {listen}: {exc}") from None
        client_url = (lambda uid: f"modbus+rtu://{line.client_path}?baud={baud}&unit={uid}") if line else server.url
        click.echo(f"emulator: mode iso15118-20, {n} vehicle(s), grid {frequency_hz:g} Hz; Ctrl-C to stop", err=False)
        click.echo(f"site meter: {client_url(1)}")
        for i, v in enumerate(vehicles):
            click.echo(f"charger {i + 1}: {client_url(11 + i)}  vehicle {v.vehicle_id} "
                       f"({v.spec.battery_kwh:g} kWh, charge {v.spec.charge_kw:g} kW, "
                       f"EVMaximumDischargePower {v.max_discharge_w() / 1e3:g} kW, MinimumSOC {v.minimum_soc_pct:g}%)")
        if visits is not None:
            click.echo(f"arrivals: each vehicle stays {visits.stay_s:g} s, the next arrives {visits.away_s:g} s "
                       "after it leaves")
        import sys

        sys.stdout.flush()

        def said(visit: Any, arrived: VehicleConfig | None) -> None:
            what = f"vehicle {arrived.vehicle_id} arrived" if arrived is not None else "vehicle left"
            _log_line(f"charger {visit.charger_index + 1}: {what}")

        with trio.move_on_after(math.inf if duration_s is None else duration_s):
            async with trio.open_nursery() as nursery:
                if visits is not None:
                    from hardware.simulated.visits import drive_visits

                    await nursery.start(functools.partial(drive_visits, site, visits, vehicle, on_visit=said))
                await trio.sleep_forever()
    finally:
        await server.stop()
        if line is not None:
            line.close()
