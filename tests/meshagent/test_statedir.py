from __future__ import annotations

import subprocess
import sys

from meshagent.statedir import next_boot_epoch


def test_epochs_increase_across_starts(tmp_path):
    first = next_boot_epoch(tmp_path / "state", wall_clock_s=1_700_000_000)
    second = next_boot_epoch(tmp_path / "state", wall_clock_s=1_600_000_000)  # clock went back
    assert second == first + 1
    assert (tmp_path / "state" / "boot_epoch").read_text() == f"{second}\n"


def test_corrupt_file_restarts_above_any_counter(tmp_path):
    (tmp_path / "boot_epoch").write_text("garbage")
    epoch = next_boot_epoch(tmp_path, wall_clock_s=1_700_000_000)
    assert epoch == 1_700_000_000 - 1_577_836_800 + 1


def test_separate_processes_never_reuse_an_epoch(tmp_path):
    code = "import sys; from pathlib import Path; from meshagent.statedir import next_boot_epoch; print(next_boot_epoch(Path(sys.argv[1])))"
    seen = [int(subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout) for _ in range(3)]
    assert seen == sorted(set(seen)) and seen[2] - seen[0] == 2
