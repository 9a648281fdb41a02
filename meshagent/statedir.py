"""The node's state directory: what must survive a restart.

Today: the boot epoch. A sender must never reuse a ``(boot_epoch, seq)`` pair, or peers
would refuse its fresh packets as replays (and, worse, a recorded old packet could pass as
new). So every start takes the next epoch from ``boot_epoch`` in the state directory,
written atomically (temporary file, fsync, rename, fsync of the directory) *before* the
first packet is sent. A corrupt or missing file starts from an epoch derived from the wall
clock (seconds since 2020), which is above any counter a real node reaches by restarting.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from meshagent.errors import MeshagentError

EPOCH_FILE = "boot_epoch"
_EPOCH_2020_S = 1_577_836_800
U32_MAX = 2**32 - 1


def ensure_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise MeshagentError(f"cannot create state directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise MeshagentError(f"state directory {path} is not writable")
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def next_boot_epoch(state_dir: Path, *, wall_clock_s: float | None = None) -> int:
    """Take, persist and return this start's boot epoch."""
    ensure_state_dir(state_dir)
    path = state_dir / EPOCH_FILE
    now_s = time.time() if wall_clock_s is None else wall_clock_s
    floor = max(0, int(now_s) - _EPOCH_2020_S)
    try:
        previous = int(path.read_text("ascii").strip())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        previous = floor
    epoch = previous + 1
    if epoch > U32_MAX:
        raise MeshagentError(f"{path}: boot epoch space exhausted; remove the file to restart the count")
    try:
        _write_atomic(path, f"{epoch}\n")
    except OSError as exc:
        raise MeshagentError(f"cannot write {path}: {exc.strerror}") from None
    return epoch
