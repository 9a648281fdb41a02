"""A minimal HTTP client for the CLI and tests: one request to a node's API, the JSON answer.

The server side is ``meshagent.api.app`` (starlette) served by ``meshagent.api.server``
(hypercorn, trio worker). This client stays on h11 (sans-IO, already a dependency of
hypercorn) so a command-line call costs no extra import.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio


async def get_json(host: str, port: int, path: str, *, method: str = "GET", timeout_s: float = 5.0,
                   token: str | None = None) -> tuple[int, Any]:
    """One request; ``token`` is sent as ``Authorization: Bearer``."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            headers = [("host", host), ("content-length", "0"), ("connection", "close")]
            if token:
                headers.append(("authorization", f"Bearer {token}"))
            req = h11.Request(method=method, target=path, headers=headers)
            await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
            status = 0
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")
