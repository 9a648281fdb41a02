"""Transports for the mesh: one interface (``base``), real UDP/TCP (``udp``), simulated (``memory``)."""

from meshagent.transport.base import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    DEFAULT_PORT,
    Address,
    Datagram,
    DatagramTooLarge,
    FramedStream,
    StreamHandler,
    Transport,
    TransportStatistics,
)

__all__ = [
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_PORT",
    "Address",
    "Datagram",
    "DatagramTooLarge",
    "FramedStream",
    "StreamHandler",
    "Transport",
    "TransportStatistics",
]
