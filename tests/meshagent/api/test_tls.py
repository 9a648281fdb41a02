"""The API's TLS listener: a client certificate from the operator's X.509 CA is an operator;
no certificate, or one from another CA, gets no connection. Certificates made with openssl."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from meshagent.agent import run_agent
from meshagent.api.http import get_json
from meshagent.config import load_config
from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import make_bundle

HOST = f"127.87.{os.getpid() % 250}.1"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))
    return key, cert


def issue(d: Path, ca: tuple[Path, Path], name: str, *, server_ip: str | None = None) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr))
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth\n" if server_ip
                   else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(cert))
    key.chmod(0o600)
    return key, cert


async def test_client_certificate_is_an_operator(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test's certificates)")
    if not (port_free(HOST) and port_free(HOST, 7947) and port_free(HOST, 7948)):
        pytest.skip(f"ports 7946-7948 are taken on {HOST}")
    pki = tmp_path / "pki"
    pki.mkdir()
    operators = make_ca(pki, "operators-ca")
    server = issue(pki, operators, "agent", server_ip=HOST)
    alice = issue(pki, operators, "alice")
    mallory = issue(pki, make_ca(pki, "other-ca"), "mallory")
    ca = keystore.ca_init(tmp_path / "ca")
    cfg = make_bundle(tmp_path, ca, "tls-1", HOST, [], devices=False)
    cfg.write_text(cfg.read_text() + f'\n[api]\ntls = "{HOST}:7948"\ntls_certificate = "{server[1]}"\n'
                   f'tls_key = "{server[0]}"\nclient_ca = "{operators[1]}"\n')

    def context(client: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(operators[1]))
        if client is not None:
            ctx.load_cert_chain(str(client[1]), str(client[0]))
        return ctx

    async with trio.open_nursery() as nursery:
        await nursery.start(run_agent, load_config(cfg))
        # an operator's certificate: reads and writes without a token
        status, body = await get_json(HOST, 7948, "/v1/members", ssl_context=context(alice))
        assert status == 200 and body["node_id"] == "tls-1"
        status, body = await get_json(HOST, 7948, "/v1/join?seeds=bad:x:y", method="POST", ssl_context=context(alice))
        assert status == 400 and body["field"] == "seeds"  # got past the role check
        # no certificate, or one from another CA: the handshake fails, no HTTP at all
        for client in (None, mallory):
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
                await get_json(HOST, 7948, "/v1/members", ssl_context=context(client))
        # the plain listener still asks for a token
        assert (await get_json(HOST, 7947, "/v1/members"))[0] == 401
        nursery.cancel_scope.cancel()


def test_cli_with_a_client_certificate(tmp_path):
    """`meshagent members --client-cert ...` against a real agent process's TLS listener."""
    import socket
    import sys
    import time

    from tests.meshagent.api.agents import start

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test's certificates)")
    host = f"127.87.{os.getpid() % 250}.2"
    if not (port_free(host) and port_free(host, 7947) and port_free(host, 7948)):
        pytest.skip(f"ports 7946-7948 are taken on {host}")
    pki = tmp_path / "pki"
    pki.mkdir()
    operators = make_ca(pki, "operators-ca")
    server = issue(pki, operators, "agent", server_ip=host)
    alice = issue(pki, operators, "alice")
    ca = keystore.ca_init(tmp_path / "ca")
    cfg = make_bundle(tmp_path, ca, "tls-2", host, [], devices=False)
    cfg.write_text(cfg.read_text() + f'\n[api]\ntls = "{host}:7948"\ntls_certificate = "{server[1]}"\n'
                   f'tls_key = "{server[0]}"\nclient_ca = "{operators[1]}"\n')
    proc = start(cfg, tmp_path / "agent.log")
    script = str(Path(sys.executable).with_name("meshagent"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHAGENT_")}
    try:
        deadline = time.monotonic() + 20
        # the agent listens on its TLS port first (a connect costs nothing; each command start-up ~1 s)
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, 7948), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        while True:
            r = subprocess.run([script, "members", "--api", f"{host}:7948", "--json", "--client-cert", str(alice[1]),
                                "--client-key", str(alice[0]), "--server-ca", str(operators[1])],
                               capture_output=True, text=True, timeout=20, env=env)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr + (tmp_path / "agent.log").read_text()[-2000:]
        assert '"node_id": "tls-2"' in r.stdout
        r = subprocess.run([script, "members", "--api", f"{host}:7948", "--client-cert", str(alice[1])],
                           capture_output=True, text=True, timeout=20, env=env)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--client-key" in r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=15)
