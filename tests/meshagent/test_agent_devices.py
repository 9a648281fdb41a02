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
