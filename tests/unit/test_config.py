from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor import config
from supervisor.errors import InvalidArgument


def test_defaults_follow_containerds_layout_under_ctrd_names():
    cfg = config.load(None)
    assert (cfg.root, cfg.state, cfg.grpc.address) == (
        "/var/lib/ctrd",
        "/run/ctrd",
        "/run/ctrd/ctrd.sock",
    )


def test_flags_override_the_file(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('root = "/r"\n[grpc]\naddress = "/file.sock"\ngid = 5\n')
    cfg = config.load(str(path)).with_overrides(address="/flag.sock", log_level="debug")
    assert (cfg.root, cfg.grpc.address, cfg.grpc.gid, cfg.debug.level) == (
        "/r",
        "/flag.sock",
        5,
        "debug",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rot = '/x'", "unknown key(s) rot"),
        ("[grpc]\nuid = 'root'", "uid must be a int"),
        ("[grpc]\nuid = true", "uid must be a int"),
        ("grpc = 1", "[grpc] must be a table"),
        ("[debug]\nlevel = 'loud'", "log level"),
        ("root = 'relative'", "absolute path"),
        ("root = ", "config file"),
        ("[debug]\naddress = 'debug.sock'", '[debug] address "debug.sock" must be an absolute'),
        ("[tracing]\nprotocol = 'udp'", '[tracing] protocol "udp"'),
        ("[tracing]\nsampling_ratio = 2.0", "sampling_ratio must be between 0 and 1"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        config.load(str(path))


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"))
