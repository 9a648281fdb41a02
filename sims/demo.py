"""``meshagent demo``: the largest real thing this build can show, on embedded defaults.

Today that is the trust layer end to end, over real UDP sockets on loopback:

1. an operator CA is created and two chargers are enrolled (in a temporary directory,
   through the same code as ``meshagent ca init`` and ``meshagent enroll``);
2. charger-a asks charger-b for its certificate, attaching its own; charger-b verifies the
   packet, learns charger-a's certificate and answers; charger-a verifies the answer;
3. the same packet sent again is refused as a replay; a packet signed by a key the CA never
   certified, and one with a single byte changed, are refused as bad signatures;
4. the CA revokes charger-a; once charger-b has the revocation, charger-a is refused.

Each node binds its own loopback address on port 7946 (127.0.0.1 and 127.0.0.2) when it
can, else an ephemeral port, and says which.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import trio

from meshagent import keystore
from protocol.errors import BadPacket
from protocol.identity import TrustStore
from protocol.messages import CertificateRequest, Certificates, Revoke
from protocol.wire import Opener, Sealer, overhead_bytes

PORT = 7946


async def _bind(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    try:
        await sock.bind((host, PORT))
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        await sock.bind(("127.0.0.1", 0))
    return sock


def _line(text: str) -> None:
    print(text, flush=True)


async def _demo(workdir: Path) -> int:
    _line(f"meshagent demo: signed messages between two chargers over real UDP (in {workdir})")
    ca = keystore.ca_init(workdir / "ca")
    _line(f"  CA created, issuer id {ca.issuer_id.hex()}")
    bundles = {}
    for node_id, roles in (("charger-a", ("detector",)), ("charger-b", ())):
        b = keystore.enroll(ca, node_id, workdir / node_id, site_id="site-1", transformer_id="tx-1", roles=roles)
        bundles[node_id] = b
        _line(f"  enrolled {node_id}: site-1 / tx-1, roles {','.join(roles) or '-'}, bundle {b.directory.name}/")

    def load(node_id: str) -> tuple[Sealer, Opener]:
        d = bundles[node_id].directory
        ident = keystore.load_identity(d / "node.key", d / "node.cert", d / "ca.pub", node_id)
        trust = TrustStore([keystore.read_public_key(d / "ca.pub")])
        trust.add_certificate(ident.certificate)
        return Sealer(ident, boot_epoch=1), Opener(trust)

    seal_a, open_a = load("charger-a")
    seal_b, open_b = load("charger-b")
    sock_a = await _bind("127.0.0.1")
    sock_b = await _bind("127.0.0.2")
    addr_a, addr_b = sock_a.getsockname(), sock_b.getsockname()
    _line(f"  charger-a on udp://{addr_a[0]}:{addr_a[1]}, charger-b on udp://{addr_b[0]}:{addr_b[1]}")

    async def deliver(packet: bytes, opener: Opener, src: trio.socket.SocketType, dst_addr: tuple[str, int], dst: trio.socket.SocketType) -> str:
        await src.sendto(packet, dst_addr)
        with trio.fail_after(2):
            data, _ = await dst.recvfrom(65536)
        try:
            env = opener.open_untrusted(data, keystore.now_ms())
        except BadPacket as exc:
            return f"REFUSED ({exc.reason.value})"
        return f"verified: {type(env.message).__name__} from {env.sender_id} (site {env.certificate.site_id}, roles {','.join(env.certificate.roles) or '-'}, {env.size} bytes)"

    failures = 0

    def expect(label: str, outcome: str, accepted: bool) -> None:
        nonlocal failures
        ok = outcome.startswith("verified") == accepted
        failures += not ok
        _line(f"  {'ok ' if ok else 'BAD'} {label:<44} {outcome}")

    # 2. a first contact with the certificate attached, and the answer
    hello = seal_a.seal(CertificateRequest(node_ids=("charger-b",)), keystore.now_ms(), attach_certificate=True)
    expect("charger-a -> charger-b, certificate attached", await deliver(hello, open_b, sock_a, addr_b, sock_b), True)
    answer = seal_b.seal(Certificates(certificates=(seal_b.identity.certificate_bytes,)), keystore.now_ms())
    out = await deliver(answer, open_a, sock_b, addr_a, sock_a)
    # charger-a does not know charger-b yet: the answer must carry b's certificate to verify
    expect("charger-b -> charger-a, no certificate", out, False)
    answer = seal_b.seal(Certificates(certificates=(seal_b.identity.certificate_bytes,)), keystore.now_ms(), attach_certificate=True)
    expect("charger-b -> charger-a, certificate attached", await deliver(answer, open_a, sock_b, addr_a, sock_a), True)

    # 3. replay, forgery, tampering
    expect("the same packet again (replay)", await deliver(hello, open_b, sock_a, addr_b, sock_b), False)
    mallory = keystore.new_key()
    forged_sealer = Sealer(
        seal_a.identity.__class__(key=mallory, certificate=seal_a.identity.certificate,
                                  certificate_bytes=seal_a.identity.certificate_bytes),
        boot_epoch=2,
    )
    forged = forged_sealer.seal(CertificateRequest(node_ids=()), keystore.now_ms())
    expect("claims charger-a, signed by another key", await deliver(forged, open_b, sock_a, addr_b, sock_b), False)
    good = seal_a.seal(CertificateRequest(node_ids=()), keystore.now_ms())
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0x01
    expect("one byte changed in transit", await deliver(bytes(tampered), open_b, sock_a, addr_b, sock_b), False)
    expect("the untouched packet", await deliver(good, open_b, sock_a, addr_b, sock_b), True)

    # 4. revocation travels as a message; after it charger-a is refused
    (rev_path,) = keystore.revoke(ca, "charger-a")
    (rev,) = keystore.read_revocations(rev_path.parent)
    notice = seal_b.seal(Revoke(revocation=rev), keystore.now_ms())
    expect("revocation of charger-a (signed by the CA)", await deliver(notice, open_a, sock_b, addr_a, sock_a), True)
    open_b.trust.add_revocation_untrusted(rev)
    after = seal_a.seal(CertificateRequest(node_ids=()), keystore.now_ms())
    expect("charger-a after its revocation", await deliver(after, open_b, sock_a, addr_b, sock_b), False)

    stats = open_b.statistics()
    drops = ", ".join(f"{k} {v}" for k, v in stats.dropped.items() if v) or "none"
    _line(f"  charger-b: accepted {stats.accepted}, dropped {stats.dropped_total} ({drops})")
    _line(f"  envelope overhead: {overhead_bytes(len('charger-a'))} bytes (node id of 9 characters)")
    sock_a.close()
    sock_b.close()
    _line("demo passed" if failures == 0 else f"demo FAILED: {failures} unexpected outcomes")
    return 0 if failures == 0 else 1


def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="meshagent-demo-") as tmp:
        return trio.run(_demo, Path(tmp))
