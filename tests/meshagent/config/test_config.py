"""Config files: validation names the key; docs/config.md is generated from the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.config import config_from_dict, load_config, reference_markdown
from meshagent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_minimal_file_gets_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, '[node]\nid = "charger-1"\n'))
    assert cfg.node.id == "charger-1"
    assert cfg.node.key == tmp_path / "node.key"
    assert cfg.node.state_dir == tmp_path / "state"
    assert cfg.wire.max_skew_s == 30.0
    assert cfg.wire.max_datagram_bytes == 1400


def test_units_are_parsed(tmp_path):
    cfg = load_config(write(tmp_path, '[node]\nid = "n"\n[wire]\nmax_skew = "500ms"\nmax_stream = "1MiB"\n'))
    assert cfg.wire.max_skew_s == 0.5
    assert cfg.wire.max_stream_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[node]\nid = "n"\n[wire]\nmax_skew = "30"\n', "wire.max_skew: expected a duration"),
        ('[node]\nid = "n"\n[wire]\nmax_skw = "30s"\n', "unknown key wire.max_skw (did you mean wire.max_skew?)"),
        ('[node]\nid = "n"\n[wier]\n', "unknown section [wier] (did you mean [wire]?)"),
        ("[wire]\n", "[node]: required section is missing"),
        ("[node]\n", "node.id: required key is missing"),
        ('[node]\nid = "bad id"\n', "node.id: node id must be"),
        ('[node]\nid = "n"\n[wire]\nmax_skew = "2h"\n', "wire.max_skew: must be at most 3600"),
        ('[node]\nid = "n"\n[wire]\nmax_datagram = 100\n', "wire.max_datagram: must be at least 512"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_config_from_dict_is_frozen():
    cfg = config_from_dict({"node": {"id": "n"}})
    with pytest.raises(AttributeError):
        cfg.node.id = "other"  # type: ignore[misc]


def test_docs_config_md_matches_the_code():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert doc == reference_markdown(), "regenerate with: meshagent config reference > docs/config.md"
