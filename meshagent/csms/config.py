"""The ``[csms]`` section: where the CSMS is, how to reach it, and how hard to try.

Registered with ``meshagent.config`` at import (the module is listed in ``SECTION_MODULES``).
An empty ``url`` means the node runs without a CSMS client. The retry keys carry OCPP's
names in their docs (MessageAttemptsTransactionEvent, MessageAttemptIntervalTransactionEvent)
so that an operator who knows OCPP finds them.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from meshagent.config import register_section, setting
from meshagent.config.units import parse_duration_s, parse_size_bytes


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a ws:// or wss:// URL, got {value!r}")
    if value and not value.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {value!r}")
    return value


def _text(max_len: int):  # type: ignore[no-untyped-def]
    def parse(value: object) -> str:
        if not isinstance(value, str) or len(value) > max_len:
            raise ValueError(f"expected text of at most {max_len} characters, got {value!r}")
        return value

    return parse


@attrs.frozen
class CsmsSection:
    url: str = setting("", parse=_url, shown='""',
                       doc="CSMS WebSocket URL, `ws://` (security profile 1) or `wss://` (profile 2); "
                           "the station id is appended as the last path segment. Empty: no CSMS client.")
    station_id: str = setting("", parse=_text(48), shown='""',
                              doc="Station id presented to the CSMS; empty means `[node].id`.")
    password: str = setting("", parse=_text(64), shown='""',
                            doc="HTTP basic-auth password (profiles 1 and 2); empty sends no credentials.")
    ca_bundle: Path | None = setting(None, path=True, shown="none",
                                     doc="PEM file of the CAs allowed to sign the CSMS certificate (`wss://`); "
                                         "none: the system's CAs.")
    queue: Path = setting(Path("state/csms.sqlite3"), path=True, shown='"state/csms.sqlite3"',
                          doc="SQLite file of the durable event queue, dead letters and local auth list.")
    max_queue_bytes: int = setting(256 * 1024 * 1024, key="max_queue", parse=parse_size_bytes,
                                   min_value=1024 * 1024, shown='"256MiB"',
                                   doc="Largest queue file; past 90% new transactions are refused.")
    call_timeout_s: float = setting(30.0, key="call_timeout", parse=parse_duration_s, min_value=0.01,
                                    max_value=600, shown='"30s"',
                                    doc="How long to wait for the CSMS to answer one call.")
    message_attempts: int = setting(3, min_value=1, max_value=1000,
                                    doc="MessageAttemptsTransactionEvent: tries before an event is dead-lettered.")
    message_attempt_interval_s: float = setting(
        60.0, key="message_attempt_interval", parse=parse_duration_s, min_value=0.001, max_value=86400,
        shown='"60s"', doc="MessageAttemptIntervalTransactionEvent: wait after the n-th failed try is n times this.")
    reconnect_min_s: float = setting(1.0, key="reconnect_min", parse=parse_duration_s, min_value=0.001,
                                     max_value=3600, shown='"1s"', doc="First reconnect delay (doubles, with jitter).")
    reconnect_max_s: float = setting(300.0, key="reconnect_max", parse=parse_duration_s, min_value=0.001,
                                     max_value=86400, shown='"300s"', doc="Longest reconnect delay.")
    heartbeat_interval_s: float = setting(300.0, key="heartbeat_interval", parse=parse_duration_s,
                                          min_value=1, max_value=86400, shown='"300s"',
                                          doc="Heartbeat interval until the CSMS sets one (BootNotification, SetVariables).")
    sampled_data_interval_s: float = setting(
        60.0, key="sampled_data_interval", parse=parse_duration_s, min_value=0.1, max_value=86400, shown='"60s"',
        doc="SampledDataCtrlr.TxUpdatedInterval: a TransactionEvent Updated with both energy registers this often "
            "while a vehicle is plugged in (needs [devices]).")
    session_poll_s: float = setting(
        1.0, key="session_poll", parse=parse_duration_s, min_value=0.01, max_value=60, shown='"1s"',
        doc="How often the connector's devices are read for plug-in, unplug, faults and StatusNotification.")


register_section("csms", CsmsSection)
