"""A namespace per node: veth pairs to one bridge, and nftables for loss and partitions.

Theory of operation
-------------------
``NetnsLab(n)`` (as root) makes, under one prefix unique to this lab (``ms<pid>x<k>``):

* a hub namespace ``<prefix>hub`` holding a bridge ``br0`` (the site's switch) with the
  lab's first address, 10.78.0.1/24: the simulated site (Modbus TCP) is served there, as a
  device on the site's network would be;
* per node i a namespace ``<prefix>n<i>`` with its loopback up and an ``eth0``,
  10.78.0.(10+i)/24, whose veth peer is a port of ``br0`` in the hub.

Every interface is made inside the lab's namespaces (``ip -n NS link add ... netns ...``), so
nothing appears in the host's namespace, no route of the host can clash with the lab's
addresses, and the lab's traffic never leaves it (``tests/netns.py`` builds its LANs the same
way for the mesh's own namespace tests).

Faults are nftables rules inside each node's namespace, in a table ``<prefix>`` of family
``inet`` (one table per namespace, so deleting the namespace deletes its rules):

* ``loss(percent)``: ``udp dport 7946 numgen random mod 100 < percent drop``: a random drop
  of the mesh's datagrams only (its TCP push-pull and the Modbus reads are left alone: a lost
  TCP segment is a retransmission, not a lost message);
* ``partition(group_of)``: each namespace drops every packet from the namespaces of the other
  groups; ``heal()`` flushes those rules.

Both are on the *input* hook, at the receiver: a drop on output would fail the sender's
``sendto`` with EPERM and a TCP connect at once, which no switch does; dropped on arrival,
the packet is simply gone, and a connect across the cut times out as it would.

``close()`` deletes every namespace (their veth ends and nftables tables go with them); it
runs from ``__exit__`` and from a failed ``__enter__``, so a failed run cleans up too, and
it tolerates what a half-made lab lacks. ``available()`` says why the lab cannot run here
(not root, no ``ip``, no ``nft``), or ``None``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

MESH_PORT = 7946
_labs = itertools.count(1)
SUBNET = "10.78.0.0/24"  # only ever configured inside the lab's namespaces


class NetnsError(RuntimeError):
    """A command that builds or changes the lab failed (its stderr in the message)."""


def available() -> str | None:
    """Why the namespace runner cannot run here, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "--netns needs root (network namespaces, veth pairs, a bridge)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"--netns needs the '{tool}' command (apt-get install -y {package})"
    return None


def _run(args: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class NetnsLab:
    def __init__(self, n: int) -> None:
        if n > 240:
            raise NetnsError("at most 240 namespaces in one lab (one /24)")
        self.n = n
        self.prefix = f"ms{os.getpid()}x{next(_labs)}"
        self.hub = f"{self.prefix}hub"
        self.namespaces = [f"{self.prefix}n{i}" for i in range(n)]
        self.subnet = SUBNET
        self.gateway = f"{SUBNET[:-5]}.1"  # br0 in the hub: the site lives here
        self.addresses = [f"{SUBNET[:-5]}.{10 + i}" for i in range(n)]
        self._made: list[str] = []
        self._partitioned = False

    def __enter__(self) -> NetnsLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_netns(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "addr", "add", f"{self.gateway}/24", "dev", "br0"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
            self._add_netns(ns)
            _run(["ip", "-n", self.hub, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            self._nft(ns, f"add table inet {self.prefix}\n"
                          f"add chain inet {self.prefix} in {{ type filter hook input priority 0 ; }}\n"
                          f"add chain inet {self.prefix} loss\n"
                          f"add chain inet {self.prefix} cut\n"
                          f"add rule inet {self.prefix} in jump cut\n"
                          f"add rule inet {self.prefix} in jump loss\n")

    def _nft(self, ns: str, script: str) -> None:
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a process inside node i's namespace."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def hub_prefix(self) -> list[str]:
        """The command prefix that runs a process in the hub (on the bridge: the site)."""
        return ["ip", "netns", "exec", self.hub]

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of the mesh's datagrams arriving in every namespace, at random."""
        whole = min(100, max(0, round(percent)))
        chance = f"numgen random mod 100 < {whole} " if whole < 100 else ""
        for ns in self.namespaces:
            self._nft(ns, f"flush chain inet {self.prefix} loss\n"
                      + (f"add rule inet {self.prefix} loss udp dport {MESH_PORT} {chance}counter drop\n"
                         if whole > 0 else ""))

    def partition(self, group_of: Sequence[int]) -> None:
        """Cut the lab: node i can reach only nodes j with ``group_of[j] == group_of[i]``
        (and the site on the bridge)."""
        for i, ns in enumerate(self.namespaces):
            others = [a for j, a in enumerate(self.addresses) if group_of[j] != group_of[i]]
            script = f"flush chain inet {self.prefix} cut\n"
            if others:
                peers = ", ".join(others)
                script += f"add rule inet {self.prefix} cut ip saddr {{ {peers} }} counter drop\n"
            self._nft(ns, script)
        self._partitioned = True

    def heal(self) -> None:
        for ns in self.namespaces:
            self._nft(ns, f"flush chain inet {self.prefix} cut\n")
        self._partitioned = False

    def dropped(self) -> dict[str, int]:
        """Packets the lab's rules dropped so far, all namespaces: ``{"loss": k, "cut": m}``
        (the rules' counters: proof that the faults acted, for reports and tests)."""
        totals = {"loss": 0, "cut": 0}
        for i in range(self.n):
            for chain, body in re.findall(r"chain (\w+) \{(.*?)\}", self.rules(i), flags=re.S):
                if chain in totals:
                    totals[chain] += sum(int(m) for m in re.findall(r"counter packets (\d+)", body))
        return totals

    def rules(self, i: int) -> str:
        """Node i's nftables table as ``nft list`` prints it (for tests and reports)."""
        return _run(["ip", "netns", "exec", self.namespaces[i], "nft", "list", "table", "inet", self.prefix]).stdout

    def close(self) -> None:
        """Delete the namespaces, last first (their interfaces and rules go with them);
        never raises (a half-made lab cleans up too)."""
        for name in reversed(self._made):
            _run(["ip", "netns", "del", name], check=False)
        self._made.clear()

    @staticmethod
    def leftovers(prefix: str) -> list[str]:
        """Namespaces whose names start with ``prefix`` (a test's cleanup check)."""
        names = _run(["ip", "netns", "list"], check=False).stdout.split()
        return [n for n in names if n.startswith(prefix)]
