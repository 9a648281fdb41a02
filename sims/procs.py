"""Helper processes that speak one line at a time over their stdin and stdout.

A benchmark or a simulation runner that spreads agents, stations, a site or a CSMS over several
OS processes drives each one as a ``Child`` (the parent's side, here): it writes a command line to the child's stdin and reads the child's answer
lines from its stdout, every wait bounded by a deadline (``time.monotonic``). Timestamps the
children report are ``time.monotonic()`` values: CLOCK_MONOTONIC is one clock for the whole
machine on Linux, so the parent can subtract one child's timestamp from another's.

Children exit when their stdin closes, so a parent that dies does not leave them running;
``stop_all`` closes their stdin, waits a moment and kills whatever is still alive. A child's stderr
goes to a temporary file whose tail is quoted when it misbehaves.

The child's side is here too: ``say`` writes one answer line, ``command_lines`` reads the
commands from stdin in a trio process (and ends when stdin closes), ``slices`` splits N agents
over W workers. ``sims.bench.allocation_mesh`` (``bench allocation``) and ``sims.realnet``
(``meshagent sim --real-network``/``--netns``) both drive their workers with these.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]


class ChildFailed(RuntimeError):
    """A child did not answer in time, answered out of protocol, or exited."""


class TimedOut(ChildFailed):
    """A child did not answer by the deadline (it may still answer later)."""


class Child:
    """``python -m MODULE ARGS`` as a child; ``prefix`` runs it under another command first
    (``ip netns exec NS``: a worker inside a network namespace)."""

    def __init__(self, name: str, module: str, args: Sequence[str], prefix: Sequence[str] = ()) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile(prefix=f"child-{name}-")  # noqa: SIM115 (lives as long as the child; closed in reap)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env={**os.environ, "PYTHONPATH": str(REPO)}, bufsize=0,
        )
        self._buffer = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
        except BrokenPipeError as exc:
            raise ChildFailed(f"{self.name} exited: {self.stderr_tail()}") from exc

    def read_line(self, deadline: float) -> str:
        """The next line; TimedOut at ``deadline`` (monotonic), ChildFailed if the child exits."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                if left <= 0:
                    raise TimedOut(f"{self.name} did not answer in time")
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ChildFailed(f"{self.name} exited: {self.stderr_tail()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def expect(self, word: str, deadline: float) -> list[str]:
        """Read lines until one starts with ``word``; its other fields. Other lines are errors."""
        fields = self.read_line(deadline).split()
        if not fields or fields[0] != word:
            raise ChildFailed(f"{self.name}: expected {word!r}, got {' '.join(fields)!r}: {self.stderr_tail()}")
        return fields[1:]

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    def close_stdin(self) -> None:
        """The child's signal to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def reap(self, deadline: float) -> None:
        """Wait for the child until ``deadline`` (monotonic), then kill it."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def stop_all(children: Iterable[Child], grace_s: float = 5.0) -> None:
    """Ask every child to exit (stdin closed), give them ``grace_s`` together, kill the rest."""
    children = list(children)
    for child in children:
        child.close_stdin()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.reap(deadline)


# --- the child's side ------------------------------------------------------------------------


def say(line: str) -> None:
    """One answer line to the parent (unbuffered: the parent may be timing it)."""
    os.write(sys.stdout.fileno(), line.encode() + b"\n")


async def command_lines() -> AsyncIterator[list[str]]:
    """The parent's commands, one list of words per line, until stdin closes."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stream:
        while True:
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                yield line.decode().split()
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk


def slices(n: int, workers: int) -> list[range]:
    """N agents over ``workers`` processes: contiguous, sizes differing by at most one."""
    bounds = [round(n * w / workers) for w in range(workers + 1)]
    return [range(bounds[w], bounds[w + 1]) for w in range(workers)]
