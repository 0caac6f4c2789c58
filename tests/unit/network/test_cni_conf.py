"""supervisor.network.cni.conf and result: the conf dir as go-cni loads it, CNI results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supervisor.network.cni import conf, result

BRIDGE = {"type": "bridge", "bridge": "b0", "ipam": {"type": "host-local"}}
LIST = {"cniVersion": "1.0.0", "name": "net", "plugins": [BRIDGE]}


def write(path: Path, data: object) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_an_empty_or_missing_dir_is_not_initialized_in_containerds_words(tmp_path: Path):
    missing = conf.ConfDir(str(tmp_path / "nope")).load()
    empty = conf.ConfDir(str(tmp_path)).load()
    assert not missing.ready
    assert not empty.ready
    assert empty.message == f"cni plugin not initialized: no network config found in {tmp_path}"


def test_the_first_file_by_name_is_the_network_behind_loopback(tmp_path: Path):
    write(tmp_path / "20-b.conflist", {**LIST, "name": "second"})
    write(tmp_path / "10-a.conflist", LIST)
    write(tmp_path / "05-notes.txt", "not a config")
    (tmp_path / "00-dir.conf").mkdir()
    loaded = conf.ConfDir(str(tmp_path)).load()
    assert loaded.ready
    assert loaded.message == ""
    assert [(n.name, n.ifname) for n in loaded.networks] == [
        ("cni-loopback", "lo"),
        ("net", "eth0"),
    ]
    assert loaded.networks[1].source == (tmp_path / "10-a.conflist").read_bytes()


def test_a_single_plugin_conf_is_wrapped_into_a_list(tmp_path: Path):
    write(tmp_path / "10-one.conf", {"cniVersion": "0.4.0", "name": "single", **BRIDGE})
    network = conf.ConfDir(str(tmp_path)).load().networks[1]
    assert (network.name, network.cni_version, len(network.plugins)) == ("single", "0.4.0", 1)
    assert json.loads(network.source)["plugins"][0]["bridge"] == "b0"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("10-x.conflist", "{not json", "error parsing configuration list"),
        ("10-x.conflist", {"cniVersion": "1.0.0", "plugins": [BRIDGE]}, "no name"),
        ("10-x.conflist", {"name": "n", "plugins": []}, "no plugins in list"),
        ("10-x.conflist", {"name": "n", "plugins": [{"bridge": "b"}]}, "missing 'type'"),
        ("10-x.conf", {"name": "n", "cniVersion": "0.4.0"}, "missing 'type'"),
    ],
)
def test_a_broken_first_file_says_which_and_why(
    tmp_path: Path, name: str, text: object, words: str
):
    write(tmp_path / name, text)
    write(tmp_path / "20-good.conflist", LIST)  # later files do not save it (go-cni)
    loaded = conf.ConfDir(str(tmp_path)).load()
    assert not loaded.ready
    assert loaded.message.startswith("cni plugin not initialized: failed to load CNI config")
    assert str(tmp_path / name) in loaded.message
    assert words in loaded.message


def test_readiness_follows_the_dir_without_a_new_instance(tmp_path: Path):
    directory = conf.ConfDir(str(tmp_path))
    assert not directory.load().ready
    write(tmp_path / "10-a.conflist", "{partial")  # a DaemonSet's write, half done
    assert "error parsing" in directory.load().message
    write(tmp_path / "10-a.conflist", LIST)
    assert directory.load().ready
    (tmp_path / "10-a.conflist").unlink()
    assert not directory.load().ready


def test_an_unchanged_dir_is_not_parsed_again(tmp_path: Path):
    write(tmp_path / "10-a.conflist", LIST)
    directory = conf.ConfDir(str(tmp_path))
    first = directory.load()
    assert directory.load() is first
    path = tmp_path / "10-a.conflist"
    write(path, {**LIST, "name": "renamed"})
    os.utime(path, ns=(1, 1))  # another mtime, whatever the clock's granularity
    assert directory.load().networks[1].name == "renamed"


def test_capabilities_are_those_declared_true():
    plugin = conf.parse_list(
        json.dumps(
            {
                "name": "n",
                "plugins": [
                    {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}
                ],
            }
        ).encode(),
        "eth0",
    ).plugins[0]
    assert plugin.capabilities == {"portMappings"}


RESULT_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa"},
        {"name": "eth0", "mac": "bb"},  # an eth0 outside the sandbox (the host's, say)
        {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "10.0.0.9/24", "interface": 1},
        {"address": "fd00::5/64", "interface": 2},
        {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
        {"address": "10.2.0.5/16", "interface": 2},
    ],
}


def test_the_pod_ip_is_the_first_ipv4_of_eth0_in_the_sandbox():
    parsed = result.from_raw(RESULT_1_0)
    assert result.select(result.pod_ips([parsed])) == ("10.1.0.5", ("fd00::5", "10.2.0.5"))


@pytest.mark.parametrize(
    ("raw", "ips"),
    [
        (
            {
                "cniVersion": "0.3.1",
                "interfaces": [{"name": "eth0", "sandbox": "/n"}],
                "ips": [{"version": "4", "address": "10.3.0.2/24", "interface": 0}],
            },
            ["10.3.0.2"],
        ),
        (
            {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "fd00::7/64"}]},
            ["fd00::7"],  # no interface named: eth0's (go-cni)
        ),
        ({"cniVersion": "0.2.0", "ip4": {"ip": "10.4.0.2/16"}}, ["10.4.0.2"]),
        (
            {
                "cniVersion": "0.3.1",
                "interfaces": [{"name": "lo", "sandbox": "/n"}],
                "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
            },
            [],  # loopback's
        ),
    ],
)
def test_results_of_every_version_give_their_eth0_ips(raw: dict[str, object], ips: list[str]):
    assert result.pod_ips([result.from_raw(raw)]) == ips


def test_a_result_without_version_takes_its_configs():
    parsed = result.parse(b'{"ips": [{"address": "10.5.0.2/24"}]}', "1.0.0")
    assert parsed.cni_version == "1.0.0"
    assert parsed.raw["cniVersion"] == "1.0.0"


@pytest.mark.parametrize(
    "text",
    [
        b"[1]",
        b"{bad",
        b'{"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}',
        b'{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 3}]}',
        b'{"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}',
    ],
)
def test_a_result_that_is_not_one_raises_result_error(text: bytes):
    with pytest.raises(result.ResultError):
        result.parse(text, "1.0.0")
