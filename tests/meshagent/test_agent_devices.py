"""An agent builds a simulated world only when a device is simulated (``sim://``)."""

from __future__ import annotations

import subprocess
import sys

from meshagent.agent import open_devices, sim_world_for


def test_real_devices_get_no_simulated_world():
    assert sim_world_for("modbus+tcp://127.0.0.1:5020/1", "modbus+tcp://127.0.0.1:5020/11",
                         nominal_frequency_hz=50.0) is None


def test_real_devices_do_not_import_the_simulator():
    code = (
        "import sys; from meshagent.agent import sim_world_for; "
        "sim_world_for('modbus+tcp://127.0.0.1:5020/1', nominal_frequency_hz=60.0); "
        "print('hardware.simulated' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_sim_devices_share_one_world_at_the_nominal_frequency():
    world = sim_world_for("sim://site-a/meter", "modbus+tcp://127.0.0.1:5020/11", nominal_frequency_hz=60.0)
    assert world is not None and list(world.sites) == ["site-a"]
    assert world.site("site-a").frequency_hz == 60.0


async def test_agents_given_one_world_act_on_its_one_site(tmp_path):
    """``run_agent(sim_world=...)``: two agents in one process on one simulated site, both
    reading its one meter; no agent builds a world of its own (the demo's spike split is
    tested end to end by ``tests/meshagent/test_cli.py``'s demo test)."""
    import os

    import trio

    from hardware.simulated.site import SimulatedSite, SimWorld
    from hardware.simulated.vehicles import VehicleConfig
    from meshagent.agent import run_agent
    from meshagent.config import load_config
    from meshagent.transport.udp import port_free
    from meshagent.trust import keystore

    host = f"127.82.{os.getpid() % 250}"
    hosts = [f"{host}.1", f"{host}.2"]
    port = 7946 if all(port_free(h, 7946) for h in hosts) else 0
    world = SimWorld(clock=trio.current_time)
    site = world.add(SimulatedSite.with_chargers(trio.current_time, 2, name="shared", base_load_w=20_000.0,
                                                 vehicles=[VehicleConfig.of("nissan-leaf-40")] * 2))
    site.set_grid(frequency_hz=60.0)
    ca = keystore.ca_init(tmp_path / "ca")
    async with trio.open_nursery() as nursery:
        nodes = []
        for i, h in enumerate(hosts, start=1):
            bundle = keystore.enroll(ca, f"c{i}", tmp_path / f"c{i}", site_id="shared", transformer_id="tx-1")
            cfg = bundle.directory / "node.toml"
            cfg.write_text(f'[node]\nid = "c{i}"\n\n[mesh]\npreset = "local"\nbind = "{h}:{port}"\napi = "{h}:0"\n\n'
                           f'[devices]\nmeter = "sim://shared/meter"\ncharger = "sim://shared/charger-{i}"\n')
            nodes.append(await nursery.start(lambda c=cfg, **kw: run_agent(load_config(c), sim_world=world, **kw)))
        with trio.fail_after(10):
            while site.sample_count < 20:  # noqa: ASYNC110 (both loops read the one meter; polled from outside)
                await trio.sleep(0.05)
        assert world.sites == {"shared": site}  # nothing built a world of its own
        assert site.snapshot().active_power_w == 20_000.0
        nursery.cancel_scope.cancel()


async def test_a_session_started_at_boot_is_not_ended_as_left_by_a_previous_life(tmp_path):
    """A vehicle plugged in when the agent starts: its transaction starts with this life and
    must not be ended (PowerLoss) as one a crash left open; its periodic updates then go on."""
    import os

    import trio

    from hardware.simulated.site import SimulatedSite, SimWorld
    from hardware.simulated.vehicles import VehicleConfig
    from meshagent.agent import run_agent
    from meshagent.config import load_config
    from meshagent.csms.store import CsmsStore
    from meshagent.trust import keystore

    host = f"127.82.{os.getpid() % 250}.9"
    world = SimWorld(clock=trio.current_time)
    world.add(SimulatedSite.with_chargers(trio.current_time, 1, name="s", vehicles=[VehicleConfig.of("nissan-leaf-40")]))
    world.site("s").set_grid(frequency_hz=60.0)
    bundle = keystore.enroll(keystore.ca_init(tmp_path / "ca"), "c1", tmp_path / "c1", site_id="s", transformer_id="tx-1")
    cfg = bundle.directory / "node.toml"
    cfg.write_text(f'[node]\nid = "c1"\n\n[mesh]\npreset = "local"\nbind = "{host}:0"\napi = "{host}:0"\n\n'
                   '[devices]\nmeter = "sim://s/meter"\ncharger = "sim://s/charger-1"\n\n'
                   # no CSMS listens there: events wait in the durable queue
                   '[csms]\nurl = "ws://127.0.0.1:9/ocpp"\nsession_poll = "50ms"\nsampled_data_interval = "200ms"\n')
    config = load_config(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda **kw: run_agent(config, sim_world=world, **kw))
        await trio.sleep(1.5)  # several periodic updates: each is refused once the transaction has ended
        nursery.cancel_scope.cancel()
    store = CsmsStore(config.section("csms").queue)
    try:
        assert len(store.open_transactions()) == 1
    finally:
        store.close()


async def test_modbus_timeout_is_how_long_the_agent_waits_for_a_slow_device():
    """``[devices] modbus_timeout``: a meter on a slow line (every reply 0.7 s late, a real
    pymodbus server on loopback) times out at the default 500 ms and is read with "1s"."""
    import time

    import pytest

    from hardware.interfaces import DeviceFault, FaultKind
    from hardware.simulated import SimulatedSite
    from hardware.simulated.serve import SimServer, site_units
    from meshagent.config import config_from_dict

    site = SimulatedSite.with_chargers(time.monotonic, 1, name="slow", base_load_w=30_000.0)
    server = SimServer(site_units(site))
    async with server:
        server.faults.delay_s = 0.7
        cfgs = {}
        for timeout in (None, "1s"):
            devices = {"meter": server.url(1), "charger": server.url(11)}
            if timeout:
                devices["modbus_timeout"] = timeout
            cfgs[timeout] = config_from_dict({"node": {"id": "c1"}, "devices": devices}).section("devices")
        assert cfgs[None].modbus_timeout_s == 0.5 and cfgs["1s"].modbus_timeout_s == 1.0

        meter, charger = open_devices(cfgs[None])
        try:
            with pytest.raises(DeviceFault) as info:
                await meter.read()
            assert info.value.kind is FaultKind.TIMEOUT and "500 ms" in str(info.value)
        finally:
            await meter.aclose()
            await charger.aclose()
        meter, charger = open_devices(cfgs["1s"])
        try:
            reading = await meter.read()
            assert reading.active_power_w == 30_000.0
        finally:
            await meter.aclose()
            await charger.aclose()


def test_modbus_timeout_out_of_range_is_one_line_naming_the_key():
    import pytest

    from meshagent.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as info:
        config_from_dict({"node": {"id": "c1"}, "devices": {"modbus_timeout": "1ms"}})
    assert "modbus_timeout" in str(info.value) and "\n" not in str(info.value)
