"""The UDP transport between real processes in two network namespaces, through a cut link.

Proves ``tests/netns.py``: two namespaces on a private bridge (10.77.0.0/24 exists only
inside them), an echo process in one, a client process in the other, both using
``UdpTransport`` on port 7946; then the link is cut (nftables) and restored.
"""

from __future__ import annotations

import sys

import pytest

from tests.netns import NetnsLab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ECHO = """
import sys, trio
from meshagent.transport.udp import UdpTransport

async def main():
    async with await UdpTransport.bind((sys.argv[1], 7946)) as t:
        print("ready", flush=True)
        with trio.move_on_after(30):  # bounded: the lab kills it earlier anyway
            while True:
                d = await t.receive_datagram()
                await t.send_datagram(d.source, b"echo:" + d.packet)

trio.run(main)
"""

CLIENT = """
import sys, trio
from meshagent.transport.udp import UdpTransport

async def main():
    async with await UdpTransport.bind((sys.argv[1], 7946)) as t:
        for _ in range(int(sys.argv[3])):
            await t.send_datagram((sys.argv[2], 7946), b"hello")
            with trio.move_on_after(0.1):
                d = await t.receive_datagram()
                print(d.packet.decode(), d.source[0], d.source[1])
                return
        print("no answer")

trio.run(main)
"""


def test_udp_transport_between_namespaces_cut_and_restored() -> None:
    with NetnsLab() as lab:
        a, b = lab.node("a"), lab.node("b")
        echo = lab.popen(b, [sys.executable, "-c", ECHO, b.address], stdout=-1)
        assert echo.stdout is not None
        assert echo.stdout.readline() == b"ready\n"

        def ask(tries: int) -> str:
            done = lab.run(a, [sys.executable, "-c", CLIENT, a.address, b.address, str(tries)])
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert ask(tries=20) == f"echo:hello {b.address} 7946"
        lab.cut(a, b)
        assert ask(tries=5) == "no answer"
        lab.restore(a, b)
        assert ask(tries=20) == f"echo:hello {b.address} 7946"
    assert lab.leftovers() == []
