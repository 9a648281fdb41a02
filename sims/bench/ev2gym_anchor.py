"""The anchor of ``bench sim``: ev2gym stepping 1,000 chargers at 1-minute steps.

Run inside an interpreter that has ev2gym (``pip install ev2gym``: it pins its own numpy,
pandas, gymnasium, so ``bench sim`` runs this file in a separate interpreter when
``MESHAGENT_EV2GYM_PYTHON`` names one). Prints one JSON line: wall time, charger-steps,
microseconds per charger-step and simulated seconds per wall second. ev2gym models neither
communication nor area frequency. Its example config V2GProfitMax.yaml, changed to 1-minute
steps, one day, 1,000 chargers; actions: every charger at full charge (a constant vector).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main(chargers: int = 1000, steps: int = 1440) -> None:
    import ev2gym
    import numpy as np
    import yaml
    from ev2gym.models.ev2gym_env import EV2Gym

    base = os.path.join(os.path.dirname(ev2gym.__file__), "example_config_files", "V2GProfitMax.yaml")
    with open(base) as f:
        config = yaml.safe_load(f)
    config.update(timescale=1, simulation_length=steps, number_of_charging_stations=chargers,
                  number_of_transformers=10, random_day=False)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(config, tmp)
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(ev2gym.__file__)))  # its data paths are relative
    try:
        env = EV2Gym(config_file=tmp.name, seed=1, save_replay=False, save_plots=False)
        env.reset()
        action = np.ones(env.action_space.shape)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, done, _, _ = env.step(action)
            if done:
                break
        wall = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    print(json.dumps({"chargers": chargers, "steps": steps, "wall_s": wall,
                      "us_per_charger_step": wall / (chargers * steps) * 1e6,
                      "sim_s_per_wall_s": steps * 60 / wall}))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
