"""Operator clear-faults requests and their answers, for the control loop.

Theory of operation
-------------------
A clear reaches the loop three ways: in process (``request``, or ``wait_answer`` to await
the answer), through the agent's API (``request(request_id)``, answer kept in
``answers[request_id]`` for its GET, ``operator.py``), or as the file
``clear-faults.request`` in the state directory (``journal.request_clear``), which the loop
looks for every telemetry period (``poll_file``) and answers in ``clear-faults.answer``.
The loop's next cycle takes the request (``take``), clears the inverter's own latches first
(``clear_inverter``: the tamper latch lives there), lets the logic decide each code, and
hands the decision to ``answer``, which fills in every waiter at once. A request is answered
once; a refused clear is not remembered (the logic's rule).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import trio

from hardware.interfaces import DeviceFault, Inverter
from meshagent.control import journal
from meshagent.control.logic import Decision

CLEAR_ANSWERS_KEPT = 32  # answers to API clear-faults requests kept for their GET


class ClearRequests:
    def __init__(self, node_id: str, state_dir: Path | None) -> None:
        self.node_id = node_id
        self.state_dir = state_dir
        self.requested = False
        self._file_request_id: str | None = None  # of a file request, echoed in the answer file
        self.pending_ids: list[str] = []  # API requests waiting for the next cycle
        self.answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.last: dict[str, Any] | None = None  # the answer to the last clear-faults
        self._done = trio.Event()

    def request(self, request_id: str | None = None) -> None:
        """Carried out at the next cycle. Idempotent; with ``request_id`` the answer is kept."""
        self.requested = True
        if request_id is not None:
            self.pending_ids.append(request_id)

    async def wait_answer(self) -> dict[str, Any]:
        """Request a clear and wait for its answer (wrap in ``trio.fail_after``)."""
        self.requested = True
        done = self._done
        await done.wait()
        assert self.last is not None
        return self.last

    def poll_file(self) -> None:
        """Take ``clear-faults.request`` from the state directory, if one is there."""
        if self.state_dir is None:
            return
        request = journal.take_clear_request(self.state_dir)
        if request is not None:
            self.requested = True
            rid = request.get("id")
            self._file_request_id = rid if isinstance(rid, str) else ""

    def take(self) -> bool:
        """Is a clear due this cycle? (It is then no longer requested.)"""
        due, self.requested = self.requested, False
        return due

    def answer(self, decision: Decision, inverter: dict[str, Any], now: float) -> None:
        """The answer to a clear-faults: each active code cleared, or refused with its cause.

        What the inverter did rides on the cleared / clear_refused lines; with nothing of
        ours active a clear logs nothing (clear-faults is idempotent).
        """
        outcomes = [o.as_json() for o in decision.clear_outcomes]
        self.last = {
            "node": self.node_id, "t_s": round(now, 3), "codes": outcomes, **inverter,
            "still_active": list(decision.faults), "ok": all(o["cleared"] for o in outcomes),
        }
        if self.state_dir is not None and self._file_request_id is not None:
            journal.write_clear_answer(self.state_dir, {"id": self._file_request_id, **self.last})
        self._file_request_id = None
        for rid in self.pending_ids:
            self.answers[rid] = self.last
        self.pending_ids.clear()
        while len(self.answers) > CLEAR_ANSWERS_KEPT:
            self.answers.popitem(last=False)
        done, self._done = self._done, trio.Event()
        done.set()


async def clear_inverter(inverter: Inverter) -> dict[str, Any]:
    """The inverter's own latches (the tamper latch lives there): what it cleared or why not."""
    figures: dict[str, Any] = {}
    try:
        result = await inverter.clear_faults()
        figures["inverter_cleared"] = list(result.cleared)
    except DeviceFault as fault:
        figures["inverter_refused"] = str(fault)
    return figures
