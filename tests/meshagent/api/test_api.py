"""The node's HTTP API over a real TCP socket on loopback."""

from __future__ import annotations

import trio

from meshagent.api.http import Api, get_json


async def test_routes_errors_and_limits():
    api = Api()

    @api.route("GET", "/v1/echo")
    def echo(params):
        if "bad" in params:
            raise ValueError("bad parameter")
        return 200, {"params": params}

    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(api.serve, "127.0.0.1", 0)
        assert await get_json(host, port, "/v1/echo?a=1&b=x") == (200, {"params": {"a": "1", "b": "x"}})
        assert (await get_json(host, port, "/v1/echo?bad=1"))[0] == 400
        assert (await get_json(host, port, "/nope"))[0] == 404
        assert (await get_json(host, port, "/v1/echo", method="POST"))[0] == 405
        # garbage and oversized requests get a 400 and a closed connection, the server lives on
        for junk in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n"):
            s = await trio.open_tcp_stream(host, port)
            await s.send_all(junk)
            reply = b""
            with trio.fail_after(5):
                while chunk := await s.receive_some(4096):
                    reply += chunk
            await s.aclose()
            assert reply.startswith(b"HTTP/1.1 400")
        assert (await get_json(host, port, "/v1/echo"))[0] == 200
        assert api.errors == 2
        nursery.cancel_scope.cancel()
