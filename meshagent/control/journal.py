"""What the control loop leaves in the node's state directory.

Theory of operation
-------------------
Four files, all under ``[node] state_dir``:

``telemetry.jsonl``
    One JSON object per ``telemetry_period`` (100 ms): load, frequency, setpoint, SoC,
    allocation share, active faults. Each line is written whole and flushed, so
    ``tail -f telemetry.jsonl | jq`` follows it live.
``errors.jsonl``
    One JSON object per fault event (``codes.FaultEvent``): the stable code, ``raised`` /
    ``cleared`` / ``reported`` / ``clear_requested``, the figures.
``faults.json``
    The latched codes, rewritten atomically whenever the set changes, so a restart cannot
    clear a latched fault: the loop raises them again when it starts.
``clear-faults.request``
    Written by ``request_clear`` (the ``meshagent clear-faults`` command, another process);
    the running loop consumes it within one telemetry period and deletes it. Several
    requests before the loop looks are one request (clearing is idempotent anyway).

Writes are small appends to local files, done synchronously from the loop: one line per
100 ms costs microseconds, far less than a thread hop would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from meshagent.control.codes import FaultEvent

TELEMETRY_FILE = "telemetry.jsonl"
ERRORS_FILE = "errors.jsonl"
FAULTS_FILE = "faults.json"
CLEAR_REQUEST_FILE = "clear-faults.request"
CLEAR_ANSWER_FILE = "clear-faults.answer"


class JsonLines:
    """An append-only JSON-lines file, line-flushed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8")
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RotatingJsonLines(JsonLines):
    """A JSON-lines file rotated by size and by age, ``keep`` rotated files kept.

    Before a line that would take the file past ``max_bytes``, or once the file is older
    than ``max_age_s`` (on the caller's clock: ``write(record, now_s)``), it is renamed
    ``NAME.1`` (``NAME.1`` to ``NAME.2``..., the oldest past ``keep`` deleted) and a new one
    opened. ``reopen()`` (the loop calls it on SIGHUP) closes and reopens the path, so an
    external logrotate that moved the file is followed too.
    """

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float, keep: int) -> None:
        super().__init__(path)
        self.max_bytes, self.max_age_s, self.keep = max_bytes, max_age_s, keep
        self.rotations = 0
        self._opened_s: float | None = None
        self._size = path.stat().st_size

    def write(self, record: dict[str, Any], now_s: float | None = None) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        if now_s is not None and self._opened_s is None:
            self._opened_s = now_s
        too_old = now_s is not None and self._opened_s is not None and now_s - self._opened_s >= self.max_age_s
        if self._size and (self._size + len(line) > self.max_bytes or too_old):
            self.rotate(now_s)
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(line)
        self._file.flush()
        self._size += len(line.encode("utf-8"))
        self.lines += 1

    def rotate(self, now_s: float | None = None) -> None:
        self.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest.unlink(missing_ok=True)
            for i in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0
        self._opened_s = now_s

    def reopen(self) -> None:
        self.close()
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self.path.stat().st_size
        self._opened_s = None


class ErrorLog(JsonLines):
    def __init__(self, path: Path, node_id: str) -> None:
        super().__init__(path)
        self.node_id = node_id

    def event(self, event: FaultEvent, wall_s: float) -> None:
        self.write({"wall": round(wall_s, 3), "node": self.node_id, **event.as_json()})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_latched(state_dir: Path, codes: list[str] | tuple[str, ...]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(state_dir / FAULTS_FILE, json.dumps({"latched": sorted(codes)}) + "\n")


def load_latched(state_dir: Path) -> tuple[str, ...]:
    """The latched codes a previous run left; an unreadable file counts as none (logged by the caller)."""
    try:
        data = json.loads((state_dir / FAULTS_FILE).read_text("utf-8"))
        codes = data["latched"]
        if isinstance(codes, list) and all(isinstance(c, str) for c in codes):
            return tuple(codes)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ()


def request_clear(state_dir: Path, *, by: str = "operator", wall_s: float | None = None,
                  request_id: str | None = None) -> Path:
    """Ask the node's running control loop to clear its latched faults (idempotent).

    The loop answers in ``clear-faults.answer`` (``read_clear_answer``) with ``request_id``.
    """
    import time

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / CLEAR_REQUEST_FILE
    record: dict[str, Any] = {"by": by, "wall": time.time() if wall_s is None else wall_s}
    if request_id is not None:
        record["id"] = request_id
    _write_atomic(path, json.dumps(record) + "\n")
    return path


def write_clear_answer(state_dir: Path, answer: dict[str, Any]) -> None:
    _write_atomic(state_dir / CLEAR_ANSWER_FILE, json.dumps(answer) + "\n")


def read_clear_answer(state_dir: Path, request_id: str) -> dict[str, Any] | None:
    """The loop's answer to the request ``request_id``, or None while there is none."""
    try:
        data = json.loads((state_dir / CLEAR_ANSWER_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("id") == request_id else None


def take_clear_request(state_dir: Path) -> dict[str, Any] | None:
    """Consume a pending request: its content, or None when there is none."""
    path = state_dir / CLEAR_REQUEST_FILE
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    try:
        data = json.loads(text)
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}
