"""A minimal HTTP client for the CLI and tests: one request to a node's API, the JSON answer.

The server side is ``meshagent.api.app`` (starlette) served by ``meshagent.api.server``
(hypercorn, trio worker). This client stays on h11 (sans-IO, already a dependency of
hypercorn) so a command-line call costs no extra import.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import h11
import trio


async def get_json(host: str, port: int, path: str, *, method: str = "GET", timeout_s: float = 5.0,
                   token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """One request; ``token`` is sent as ``Authorization: Bearer``; with ``ssl_context`` over
    TLS (with the client certificate loaded in it, for the API's TLS listener)."""
    with trio.fail_after(timeout_s):
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
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
                    conn.receive_data(bytes(await stream.receive_some(65536)))
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
