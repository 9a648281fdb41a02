"""Network namespaces for tests: a private LAN of nodes, real processes in them, cuttable links.

Theory of operation
-------------------
``NetnsLab`` (a context manager; or the ``netns_lab`` fixture) builds, as root:

* a private "hub" namespace holding a bridge ``br0``: the LAN's switch;
* one namespace per node (``lab.node("a")``), with ``lo`` up and an ``eth0`` whose veth peer
  sits in the hub on ``br0``; node k gets ``10.77.0.k/24``.

Every interface is created directly inside the lab's namespaces (``ip -n NS link add ...
netns ...``), so nothing appears in the host's namespace and traffic between nodes never
leaves the lab. Multicast (zeroconf's mDNS) floods across the bridge like on a real LAN.

``lab.popen(node, argv)`` / ``lab.run(node, argv)`` run real processes inside a node
(``ip netns exec``). ``lab.cut(a, b)`` drops everything between two nodes, both ways, with
an nftables set in each node's namespace (``ip saddr @cut drop`` on input, ``ip daddr @cut
drop`` on output); ``lab.restore(a, b)`` removes it. Without ``nft`` it falls back to
``ip link set eth0 down`` on both nodes, which cuts them from everyone (``lab.cut_mode``
says which is in use). On exit the lab kills the processes it started and deletes its
namespaces (which deletes their interfaces), even if the test failed half-way through.

Tests that need it are skipped, with the reason, when not root, when ``ip`` is missing, or
when the kernel refuses to create a namespace (an unprivileged container).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import attrs
import pytest

SUBNET = "10.77.0"  # only ever configured inside the lab's namespaces
_NFT_TABLE = "meshagent_lab"
_labs = itertools.count(1)
_COMMAND_TIMEOUT_S = 10


def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network namespace tests need the 'ip' command (iproute2)"
    return None


@attrs.define
class Node:
    name: str  # short name in the test
    netns: str  # the namespace's name
    address: str  # 10.77.0.k
    hub_port: str  # its veth peer's name in the hub


class NetnsLab:
    """A private LAN of network namespaces; see the module docstring."""

    def __init__(self) -> None:
        reason = skip_reason()
        if reason:
            pytest.skip(reason)
        self.prefix = f"malab{os.getpid()}x{next(_labs)}"
        self.hub = f"{self.prefix}-hub"
        self.nodes: dict[str, Node] = {}
        self.cut_mode = "nftables" if shutil.which("nft") else "link-down"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._cuts: set[frozenset[str]] = set()

    # --- building ---------------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        try:
            self._add_netns(self.hub)
        except subprocess.CalledProcessError as exc:
            self.close()
            pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
        try:
            self._ip(self.hub, "link", "add", "br0", "type", "bridge")
            self._ip(self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def node(self, name: str) -> Node:
        """A new namespace on the lab's LAN, with address 10.77.0.<k>."""
        index = len(self.nodes) + 1
        if index > 250:
            raise ValueError("a lab has at most 250 nodes")
        node = Node(name, f"{self.prefix}-{index}", f"{SUBNET}.{index}", f"p{index}")
        self._add_netns(node.netns)
        self.nodes[name] = node
        self._ip(
            self.hub, "link", "add", node.hub_port, "type", "veth",
            "peer", "name", "eth0", "netns", node.netns,
        )  # fmt: skip
        self._ip(self.hub, "link", "set", node.hub_port, "master", "br0", "up")
        self._ip(node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        self._ip(node.netns, "link", "set", "eth0", "up")
        if self.cut_mode == "nftables":
            self.nft(
                node,
                f"add table inet {_NFT_TABLE}\n"
                f"add set inet {_NFT_TABLE} cut {{ type ipv4_addr; }}\n"
                f"add chain inet {_NFT_TABLE} input {{ type filter hook input priority 0; }}\n"
                f"add chain inet {_NFT_TABLE} output {{ type filter hook output priority 0; }}\n"
                f"add rule inet {_NFT_TABLE} input ip saddr @cut drop\n"
                f"add rule inet {_NFT_TABLE} output ip daddr @cut drop\n",
            )
        return node

    def _add_netns(self, name: str) -> None:
        subprocess.run(
            ["ip", "netns", "add", name],
            check=True, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
        )  # fmt: skip
        self._namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")

    def _ip(self, netns: str, *args: str) -> None:
        subprocess.run(
            ["ip", "-n", netns, *args],
            check=True, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
        )  # fmt: skip

    def nft(self, node: Node, script: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", node.netns, "nft", "-f", "-"],
            input=script, check=True, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
        )  # fmt: skip

    # --- faults -----------------------------------------------------------------------------

    def cut(self, a: Node, b: Node) -> None:
        """Drop all traffic between ``a`` and ``b``, both ways, until ``restore``."""
        self._cuts.add(frozenset((a.name, b.name)))
        if self.cut_mode == "nftables":
            self.nft(a, f"add element inet {_NFT_TABLE} cut {{ {b.address} }}\n")
            self.nft(b, f"add element inet {_NFT_TABLE} cut {{ {a.address} }}\n")
        else:
            for n in (a, b):
                self._ip(n.netns, "link", "set", "eth0", "down")

    def restore(self, a: Node, b: Node) -> None:
        self._cuts.discard(frozenset((a.name, b.name)))
        if self.cut_mode == "nftables":
            self.nft(a, f"delete element inet {_NFT_TABLE} cut {{ {b.address} }}\n")
            self.nft(b, f"delete element inet {_NFT_TABLE} cut {{ {a.address} }}\n")
        else:
            for n in (a, b):
                self._ip(n.netns, "link", "set", "eth0", "up")

    # --- processes --------------------------------------------------------------------------

    def command(self, node: Node, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", node.netns, *argv]

    def popen(self, node: Node, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside ``node``; the lab kills it on exit if it still runs."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.command(node, argv), **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def run(
        self, node: Node, argv: Sequence[str], *, timeout_s: float = 30, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a process inside ``node`` to completion (text output captured)."""
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.command(node, argv),
            capture_output=True, text=True, timeout=timeout_s, **kwargs,
        )  # fmt: skip

    # --- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_COMMAND_TIMEOUT_S)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        for name in reversed(self._namespaces):
            subprocess.run(
                ["ip", "netns", "del", name],
                capture_output=True, timeout=_COMMAND_TIMEOUT_S, check=False,
            )  # fmt: skip
        self._namespaces.clear()

    def leftovers(self) -> list[str]:
        """This lab's namespaces that still exist (empty after ``close``)."""
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True,
            timeout=_COMMAND_TIMEOUT_S,
        ).stdout  # fmt: skip
        return [line.split()[0] for line in out.splitlines() if line.startswith(self.prefix + "-")]


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A fresh lab per test (import this fixture into a test module, or use ``NetnsLab()``)."""
    with NetnsLab() as lab:
        yield lab
