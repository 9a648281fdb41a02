"""The operator's door to the running control loop, through the agent's HTTP API.

Theory of operation
-------------------
``meshagent clear-faults`` with neither ``--device`` nor ``--config`` asks the agent running
on this machine. Handlers of the API are synchronous and must not block, and a clear is
carried out by the loop's next cycle (it first asks the inverter to clear its own latches),
so a clear is two requests (declared in ``meshagent.api.app.ROUTES``, "write" access: an
operator token):

``POST /v1/control/clear-faults``
    asks the loop to clear; answers ``202 {"id": ...}``.
``GET /v1/control/clear-faults?id=ID``
    ``200`` with the answer once the loop has carried it out (within one cycle, 10 ms):
    each active code ``cleared`` or refused with its ``cause`` and what it ``needs``, what
    the inverter did, ``ok``; ``202 {"pending": true}`` before; ``404`` for an unknown id.

An agent with no ``[devices]`` section runs no control loop: ``409`` with that reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

NO_LOOP = {"error": "this agent runs no control loop (its config has no [devices] section)"}


def clear_request(get_loop: Callable[[], Any]) -> tuple[int, Any]:
    """``POST /v1/control/clear-faults``."""
    loop = get_loop()
    if loop is None:
        return 409, NO_LOOP
    request_id = secrets.token_hex(8)
    loop.request_clear_faults(request_id)
    return 202, {"id": request_id}


def clear_answer(get_loop: Callable[[], Any], request_id: str) -> tuple[int, Any]:
    """``GET /v1/control/clear-faults?id=ID``."""
    loop = get_loop()
    if loop is None:
        return 409, NO_LOOP
    answer = loop.clear_answers.get(request_id)
    if answer is not None:
        return 200, answer
    if request_id in loop.pending_clear_ids:
        return 202, {"pending": True}
    return 404, {"error": f"no clear-faults request {request_id!r}"}


def describe(answer: dict[str, Any]) -> tuple[list[str], bool]:
    """The lines ``meshagent clear-faults`` prints for a loop's answer, and whether all cleared."""
    lines: list[str] = []
    if "inverter_refused" in answer:
        lines.append(f"inverter: refused: {answer['inverter_refused']}")
    elif answer.get("inverter_cleared"):
        lines.append(f"inverter: cleared {', '.join(answer['inverter_cleared'])}")
    codes = answer.get("codes") or []
    for c in codes:
        if c.get("cleared"):
            lines.append(f"{c['code']}: cleared")
        else:
            lines.append(f"{c['code']}: refused, {c.get('cause', '')}; needs {c.get('needs', '')}")
    if not codes:
        lines.append("control loop: nothing latched, nothing to clear")
    return lines, bool(answer.get("ok", True)) and all(c.get("cleared") for c in codes)
