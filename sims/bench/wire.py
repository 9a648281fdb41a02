"""``meshagent bench wire``: cost of the signed envelope.

Measures, on one core, the median microseconds per message to sign+encode and to
verify+decode a message with a 200-byte msgpack body, the envelope overhead in bytes, and
beside them the floor set by libsodium's Ed25519 alone (sign + verify of the same bytes
through PyNaCl's bindings), so the Python overhead is visible.

Method: seal batches of 200 distinct messages (distinct sequence numbers, as on the wire),
then open them; time each batch with ``perf_counter_ns``; report the median over batches.
"""

from __future__ import annotations

import os
import time

import nacl.bindings as sodium

from protocol import codec
from protocol.identity import TrustStore
from protocol.messages import Revoke
from protocol.stats import percentile
from protocol.wire import Opener, Sealer, overhead_bytes
from sims.bench import BenchResult, machine
from sims.testpki import Pki

BODY_BYTES = 200
NOW_MS = 1_764_000_000_000


def _median_us(samples_ns: list[float], per: int) -> float:
    return percentile(samples_ns, 0.5) / per / 1000.0


def run(quick: bool = False) -> BenchResult:
    batches, batch = (20, 100) if quick else (200, 200)
    pki = Pki(seed=1, now_ms=NOW_MS)
    ident = pki.identity("charger-0001", site_id="site-a", roles=("detector",))
    ca_pub = pki.ca_public_key
    sealer = Sealer(ident, boot_epoch=1)
    trust = TrustStore([ca_pub])
    trust.add_certificate(ident.certificate)
    opener = Opener(trust)
    # A 200-byte body: msgpack array header (1) + bin8 header (2) + 197 bytes.
    msg = Revoke(revocation=os.urandom(BODY_BYTES - 3))
    assert len(codec.encode(msg)) == BODY_BYTES

    seal_ns: list[float] = []
    open_ns: list[float] = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        packets = [sealer.seal(msg, NOW_MS) for _ in range(batch)]
        t1 = time.perf_counter_ns()
        for p in packets:
            opener.open_untrusted(p, NOW_MS)
        t2 = time.perf_counter_ns()
        seal_ns.append(t1 - t0)
        open_ns.append(t2 - t1)
    if opener.statistics().accepted != batches * batch:
        raise RuntimeError("benchmark packets were dropped")

    # The floor: libsodium sign and verify of the same signed bytes, no Python around them.
    signed = packets[0][:-64]
    sk, pk = ident.key.secret, ident.key.public_key
    sm = sodium.crypto_sign(signed, sk)
    floor_sign: list[float] = []
    floor_open: list[float] = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            sodium.crypto_sign(signed, sk)
        t1 = time.perf_counter_ns()
        for _ in range(batch):
            sodium.crypto_sign_open(sm, pk)
        t2 = time.perf_counter_ns()
        floor_sign.append(t1 - t0)
        floor_open.append(t2 - t1)

    sign_us = _median_us(seal_ns, batch)
    verify_us = _median_us(open_ns, batch)
    floor_us = _median_us(floor_sign, batch) + _median_us(floor_open, batch)
    overhead = overhead_bytes(len(ident.node_id))
    with_cert = overhead_bytes(len(ident.node_id), len(ident.certificate_bytes))
    data = {
        "sign_encode_us": round(sign_us, 2),
        "verify_decode_us": round(verify_us, 2),
        "round_trip_us": round(sign_us + verify_us, 2),
        "target_round_trip_us": 90,
        "libsodium_floor_us": round(floor_us, 2),
        "python_overhead_us": round(sign_us + verify_us - floor_us, 2),
        "overhead_bytes": overhead,
        "overhead_with_certificate_bytes": with_cert,
        "body_bytes": BODY_BYTES,
        "packet_bytes": len(packets[0]),
        "messages": batches * batch,
        "node_id_len": len(ident.node_id),
        "machine": machine(),
    }
    rows = [
        ("sign+encode (median)", f"{sign_us:.1f} us/msg"),
        ("verify+decode (median)", f"{verify_us:.1f} us/msg"),
        ("round trip", f"{sign_us + verify_us:.1f} us/msg (target <= 90)"),
        ("libsodium floor", f"{floor_us:.1f} us (sign + verify alone)"),
        ("python overhead", f"{sign_us + verify_us - floor_us:.1f} us"),
        ("envelope overhead", f"{overhead} bytes (12-char node id; target <= 100)"),
        ("  with certificate", f"{with_cert} bytes"),
        ("packet size", f"{len(packets[0])} bytes for a {BODY_BYTES}-byte body"),
        ("messages", f"{batches * batch}"),
    ]
    return BenchResult(name="wire", rows=rows, data=data)
