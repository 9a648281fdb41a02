"""Figure for the notes (not a test): memory under a spoofed-source flood of unknown-signer
datagrams fed straight to the endpoint's receive path (the socket path is too slow for 10^6).

    .venv/bin/python -m tests.meshagent.trust.flood_memory 1000000

Prints the traced memory growth after each quarter of the flood; flat means bounded. To see
the figure before the tables were bounded, run it against commit ea59d84's endpoint.
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc

import trio

from meshagent.transport.memory import open_memory_network
from meshagent.trust.endpoint import SecureEndpoint
from protocol.messages import Revoke
from protocol.wire import Sealer
from tests.conftest import NOW_MS, Pki


async def main(n: int) -> None:
    pki = Pki()
    a_id, b_id = pki.identity("charger-a"), pki.identity("charger-b")
    packet = Sealer(a_id, 1).seal(Revoke(revocation=b"f" * 400), NOW_MS)
    async with open_memory_network(random.Random(1)) as net:
        ep = SecureEndpoint(net.endpoint(), Sealer(b_id, 1), pki.trust(b_id), wall_clock_ms=lambda: NOW_MS)

        def feed(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                ep.open(packet, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946))
                ep.core.outgoing()  # what the shell would send

        feed(0, 1000)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        marks = []
        for k in range(4):
            feed(1000 + k * n // 4, 1000 + (k + 1) * n // 4)
            marks.append(tracemalloc.get_traced_memory()[0] - base)
        print(f"{n} packets from {n} spoofed sources in {time.perf_counter() - t0:.0f} s; traced memory "
              f"growth after each quarter: {[f'{m / 1e6:.2f} MB' for m in marks]}; "
              f"peak {(tracemalloc.get_traced_memory()[1] - base) / 1e6:.2f} MB; "
              f"table entries {ep.core.statistics().table_entries}")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
