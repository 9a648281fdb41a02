"""Key files, the CA directory and node bundles on a real filesystem."""

from __future__ import annotations

import os
import stat

import pytest

from meshagent.config import load_config
from meshagent.errors import MeshagentError
from meshagent.trust import keystore
from protocol.identity import TrustStore


def test_private_key_is_0600_and_never_overwritten(tmp_path):
    path = tmp_path / "k.key"
    key = keystore.new_key()
    keystore.write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keystore.read_private_key(path).public_key == key.public_key
    with pytest.raises(MeshagentError, match="refusing to overwrite"):
        keystore.write_private_key(path, keystore.new_key())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_key_is_refused(tmp_path, mode):
    path = tmp_path / "k.key"
    keystore.write_private_key(path, keystore.new_key())
    os.chmod(path, mode)
    with pytest.raises(MeshagentError, match=r"can be read by group or others.*chmod 600"):
        keystore.read_private_key(path)


def test_corrupt_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("hello")
    os.chmod(bad, 0o600)
    with pytest.raises(MeshagentError, match="not a meshagent ed25519 private key file"):
        keystore.read_private_key(bad)
    with pytest.raises(MeshagentError, match="not found"):
        keystore.read_public_key(tmp_path / "missing.pub")


def test_enroll_bundle_loads_and_checks(tmp_path):
    ca = keystore.ca_init(tmp_path / "ca")
    bundle = keystore.enroll(ca, "charger-7", tmp_path / "b", site_id="s", transformer_id="t", roles=("detector",))
    assert bundle.key_written
    cfg = load_config(tmp_path / "b" / "node.toml")
    ident = keystore.load_identity(cfg.node.key, cfg.node.certificate, cfg.node.ca, cfg.node.id)
    assert ident.certificate.roles == ("detector",)
    with pytest.raises(MeshagentError, match="issued to 'charger-7'"):
        keystore.load_identity(cfg.node.key, cfg.node.certificate, cfg.node.ca, "charger-8")


def test_enroll_with_key_made_on_the_charger(tmp_path):
    ca = keystore.ca_init(tmp_path / "ca")
    key = keystore.new_key()
    bundle = keystore.enroll(ca, "c1", tmp_path / "b", site_id="s", transformer_id="t", public_key=key.public_key)
    assert not bundle.key_written and not (tmp_path / "b" / "node.key").exists()
    assert bundle.certificate.public_key == key.public_key


def test_enroll_refuses_unknown_role_and_bad_ids(tmp_path):
    ca = keystore.ca_init(tmp_path / "ca")
    with pytest.raises(MeshagentError, match="unknown role 'detecter'"):
        keystore.enroll(ca, "c1", tmp_path / "b", site_id="s", transformer_id="t", roles=("detecter",))
    with pytest.raises(MeshagentError, match="site id"):
        keystore.enroll(ca, "c1", tmp_path / "b", site_id="bad site", transformer_id="t")


def test_revoke_all_certificates_of_a_node(tmp_path):
    ca = keystore.ca_init(tmp_path / "ca")
    k = keystore.new_key()
    first = keystore.enroll(ca, "c1", tmp_path / "b1", site_id="s", transformer_id="t", public_key=k.public_key)
    second = keystore.enroll(ca, "c1", tmp_path / "b2", site_id="s", transformer_id="t", public_key=k.public_key)
    written = keystore.revoke(ca, "c1")
    assert len(written) == 2
    assert keystore.revoke(ca, "c1") == []  # idempotent
    store = TrustStore([ca.public_key])
    for raw in keystore.read_revocations(tmp_path / "ca" / "revoked"):
        store.add_revocation_untrusted(raw)
    assert store.is_revoked(first.certificate) and store.is_revoked(second.certificate)
    with pytest.raises(MeshagentError, match="no certificate"):
        keystore.revoke(ca, "never-enrolled")


def test_ca_init_twice_and_load_missing(tmp_path):
    keystore.ca_init(tmp_path / "ca")
    with pytest.raises(MeshagentError, match="already exists"):
        keystore.ca_init(tmp_path / "ca")
    with pytest.raises(MeshagentError, match="no CA in"):
        keystore.ca_load(tmp_path / "elsewhere")
