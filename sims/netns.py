"""A namespace per node: veth pairs to one bridge, and nftables for loss and partitions.

Theory of operation
-------------------
``NetnsLab(n)`` (as root) makes, under one prefix unique to this process (``ms<pid>``):

* a bridge ``<prefix>br`` in the root namespace with the lab's first address, 10.X.Y.1/24,
  where X.Y come from the pid and are checked against the routes already present;
* per node i a namespace ``<prefix>n<i>`` with its loopback up and one end of a veth pair,
  10.X.Y.(10+i)/24; the other end is a port of the bridge.

The root namespace sits on the bridge too: the simulated site (Modbus TCP) is served there,
at 10.X.Y.1, as a device on the site's network would be.

Faults are nftables rules inside each node's namespace, in a table ``<prefix>`` of family
``inet`` (one table per namespace, so deleting the namespace deletes its rules):

* ``loss(percent)``: ``udp dport 7946 numgen random mod 100 < percent drop`` on output: a
  random drop of the mesh's datagrams only (its TCP push-pull and the Modbus reads are left
  alone: a lost TCP segment is a retransmission, not a lost message);
* ``partition(groups)``: each namespace drops (output and input) every packet to or from the
  namespaces of the other groups; ``heal()`` flushes those rules.

``close()`` deletes every namespace (their veth ends and nftables tables go with them) and
the bridge; it runs from ``__exit__``, so a failed run cleans up too, and it tolerates what a
half-made lab lacks. ``available()`` says why the lab cannot run here (not root, no ``ip``,
no ``nft``), or ``None``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

MESH_PORT = 7946


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


def _free_subnet(pid: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 chosen from the pid that overlaps no route of the root namespace."""
    routes = _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    taken = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole"):
            word = line.split()[1]
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for k in range(64):
        x, y = 200 + (pid + k) % 50, (pid // 50 + k) % 250
        net = ipaddress.ip_network(f"10.{x}.{y}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net  # type: ignore[return-value]
    raise NetnsError("no free 10.x.y.0/24 for the lab")


class NetnsLab:
    def __init__(self, n: int) -> None:
        if n > 240:
            raise NetnsError("at most 240 namespaces in one lab (one /24)")
        self.n = n
        self.prefix = f"ms{os.getpid()}"[:9]
        self.bridge = f"{self.prefix}br"
        self.namespaces = [f"{self.prefix}n{i}" for i in range(n)]
        self.subnet = _free_subnet(os.getpid())
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])  # the bridge, in the root namespace: the site lives here
        self.addresses = [str(hosts[9 + i]) for i in range(n)]
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

    def _build(self) -> None:
        plen = self.subnet.prefixlen
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._made.append(f"link:{self.bridge}")
        _run(["ip", "addr", "add", f"{self.gateway}/{plen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
            _run(["ip", "netns", "add", ns])
            self._made.append(f"netns:{ns}")
            host_end, ns_end = f"{self.prefix}h{i}", f"{self.prefix}v{i}"
            _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end])
            self._made.append(f"link:{host_end}")
            _run(["ip", "link", "set", ns_end, "netns", ns])
            _run(["ip", "link", "set", host_end, "master", self.bridge, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{plen}", "dev", ns_end])
            _run(["ip", "-n", ns, "link", "set", ns_end, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._nft(ns, f"add table inet {self.prefix}\n"
                          f"add chain inet {self.prefix} out {{ type filter hook output priority 0 ; }}\n"
                          f"add chain inet {self.prefix} in {{ type filter hook input priority 0 ; }}\n"
                          f"add chain inet {self.prefix} loss\n"
                          f"add chain inet {self.prefix} cut\n"
                          f"add rule inet {self.prefix} out jump loss\n"
                          f"add rule inet {self.prefix} out jump cut\n"
                          f"add rule inet {self.prefix} in jump cut\n")

    def _nft(self, ns: str, script: str) -> None:
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a process inside node i's namespace."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of the mesh's outgoing datagrams in every namespace, at random."""
        whole = round(percent)
        for ns in self.namespaces:
            self._nft(ns, f"flush chain inet {self.prefix} loss\n"
                      + (f"add rule inet {self.prefix} loss udp dport {MESH_PORT} numgen random mod 100 < {whole} drop\n"
                         if whole > 0 else ""))

    def partition(self, group_of: Sequence[int]) -> None:
        """Cut the lab: node i can reach only nodes j with ``group_of[j] == group_of[i]``
        (and the site on the bridge)."""
        for i, ns in enumerate(self.namespaces):
            others = [a for j, a in enumerate(self.addresses) if group_of[j] != group_of[i]]
            script = f"flush chain inet {self.prefix} cut\n"
            if others:
                peers = ", ".join(others)
                script += (f"add rule inet {self.prefix} cut ip daddr {{ {peers} }} drop\n"
                           f"add rule inet {self.prefix} cut ip saddr {{ {peers} }} drop\n")
            self._nft(ns, script)
        self._partitioned = True

    def heal(self) -> None:
        for ns in self.namespaces:
            self._nft(ns, f"flush chain inet {self.prefix} cut\n")
        self._partitioned = False

    def rules(self, i: int) -> str:
        """Node i's nftables table as ``nft list`` prints it (for tests and reports)."""
        return _run(["ip", "netns", "exec", self.namespaces[i], "nft", "list", "table", "inet", self.prefix]).stdout

    def close(self) -> None:
        """Delete what was made, last first; never raises (a half-made lab cleans up too)."""
        for item in reversed(self._made):
            kind, name = item.split(":", 1)
            if kind == "netns":
                _run(["ip", "netns", "del", name], check=False)
            else:
                _run(["ip", "link", "del", name], check=False)
        self._made.clear()

    @staticmethod
    def leftovers(prefix: str) -> list[str]:
        """Namespaces and links whose names start with ``prefix`` (a test's cleanup check)."""
        names = _run(["ip", "netns", "list"], check=False).stdout.split()
        links = _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines()
        found = [n for n in names if n.startswith(prefix)]
        for line in links:
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(prefix):
                found.append(parts[1].strip())
        return found
