"""Run the API app with hypercorn's trio worker, inside the caller's nursery.

``serve_api`` binds ``host:port`` (0: any free port), starts the event hub and hypercorn, and
reports the bound ``(host, port)`` through ``task_status``; cancelling its scope stops both.
No thread, no second process: the handlers run on the agent's own trio loop.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshagent.api.app import AgentView, EventHub, build_app, client_cert_app
from meshagent.errors import MeshagentError


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    bracketed = f"[{host}]" if ":" in host else host
    config.bind = [f"{bracketed}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("meshagent.api.hypercorn")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    config.h11_max_incomplete_size = 16 * 1024  # headers larger than this are a 400
    config.backlog = 4096
    return config


def tls_config(host: str, port: int, tls: Any) -> Config:
    """TLS that requires a client certificate from ``tls.client_ca``."""
    import ssl

    config = hypercorn_config(host, port)
    config.certfile = str(tls.tls_certificate)
    config.keyfile = str(tls.tls_key)
    config.ca_certs = str(tls.client_ca)
    config.verify_mode = ssl.CERT_REQUIRED
    config.ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"
    return config


async def serve_app(app: Any, host: str, port: int, *, config: Config | None = None,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve any ASGI ``app`` on ``host:port``; reports the bound address once listening."""

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve, app, config or hypercorn_config(host, port))
        parts = urlsplit(binds[0])
        assert parts.hostname is not None and parts.port is not None
        task_status.started((parts.hostname, parts.port))


async def _serve(app: Any, config: Config, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, config, task_status=task_status)


async def serve_api(view: AgentView, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """The agent's API: the event hub and the app, in one nursery."""
    hub = EventHub()
    app = build_app(view, hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run, view)
        address = await nursery.start(serve_app, app, host, port)
        if view.tls is not None and view.tls.tls_address is not None:
            tls_host, tls_port = view.tls.tls_address
            try:
                config = tls_config(tls_host, tls_port, view.tls)
                config.create_ssl_context()  # unreadable or mismatched files: one clear error
            except (OSError, ValueError) as exc:
                raise MeshagentError(f"api.tls: cannot use the certificate, key or client CA: {exc}") from None
            await nursery.start(functools.partial(serve_app, client_cert_app(app), tls_host, tls_port, config=config))
        task_status.started(address)
