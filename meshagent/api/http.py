"""The node's small HTTP API for operators and local tools (``meshagent members``, ``leave``).

Theory of operation
-------------------
HTTP/1.1 parsed by h11 (sans-IO, the anchor of our protocol style) over trio TCP streams.
Routes are a table of ``(method, path) -> handler``; a handler is a plain function that
returns ``(status, json_body)`` and must not block (it reads the node's in-memory view).
Each connection serves one request and closes: the clients are command-line tools and
scrapers, not browsers, and one-shot connections keep the server free of keep-alive state.

Requests are bounded: 16 KiB of headers and body, 5 s to arrive; anything else is a 4xx
and a closed connection, never an exception in the node. By default the API listens on
127.0.0.1 only: it is unauthenticated, so exposing it is an operator's explicit choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio

Handler = Callable[[dict[str, str]], tuple[int, Any]]
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT_S = 5.0


@attrs.define
class Api:
    routes: dict[tuple[str, str], Handler] = attrs.field(factory=dict)
    requests: int = 0
    errors: int = 0

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def add(fn: Handler) -> Handler:
            self.routes[(method, path)] = fn
            return fn

        return add

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (port 0: any); reports the bound address when started."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            task_status.started((bound[0], bound[1]))
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                request = await self._read_request(conn, stream)
            status, body = self._dispatch(request)
            await self._respond(conn, stream, status, body)
        except (h11.RemoteProtocolError, _TooLarge):
            self.errors += 1
            await self._try_respond(conn, stream, 400, {"error": "bad request"})
        except trio.TooSlowError:
            self.errors += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.errors += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Request:
        request: h11.Request | None = None
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                received += len(data)
                if received > MAX_REQUEST_BYTES:
                    raise _TooLarge
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("client closed before the request was complete")

    def _dispatch(self, request: h11.Request) -> tuple[int, Any]:
        self.requests += 1
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        handler = self.routes.get((request.method.decode("ascii", "replace"), path))
        if handler is None:
            if any(p == path for _m, p in self.routes):
                return 405, {"error": "method not allowed"}
            return 404, {"error": f"no such path {path}"}
        try:
            return handler(params)
        except ValueError as exc:
            return 400, {"error": str(exc)}

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: Any) -> None:
        if isinstance(body, str):
            payload, ctype = body.encode(), "text/plain; version=0.0.4"
        else:
            payload, ctype = (json.dumps(body, sort_keys=True) + "\n").encode(), "application/json"
        headers = [("content-type", ctype), ("content-length", str(len(payload))), ("connection", "close")]
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=payload))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _try_respond(self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: Any) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._respond(conn, stream, status, body)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _TooLarge(Exception):
    pass


async def get_json(host: str, port: int, path: str, *, method: str = "GET", timeout_s: float = 5.0) -> tuple[int, Any]:
    """A minimal client for the CLI: one request, the JSON answer."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            req = h11.Request(method=method, target=path, headers=[("host", host), ("content-length", "0"), ("connection", "close")])
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
