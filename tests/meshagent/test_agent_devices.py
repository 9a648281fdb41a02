"""An agent builds a simulated world only when a device is simulated (``sim://``)."""

from __future__ import annotations

import subprocess
import sys

from meshagent.agent import sim_world_for


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
