"""Endpoints: mirrors first, the registry last; plain HTTP only to loopback or insecure hosts."""

from __future__ import annotations

import pytest

from supervisor.distribution.hosts import Endpoint, HostConfig, endpoints, is_loopback
from supervisor.errors import InvalidArgument


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("[::2]:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool):
    assert is_loopback(host) is loopback


def test_docker_io_goes_to_registry_1_over_https():
    assert endpoints("docker.io", {}) == [Endpoint("https", "registry-1.docker.io")]


def test_loopback_and_insecure_hosts_use_plain_http():
    hosts = {"registry.lan:5000": HostConfig(insecure=True)}
    assert endpoints("127.0.0.1:5000", {}) == [Endpoint("http", "127.0.0.1:5000")]
    assert endpoints("localhost", {}) == [Endpoint("http", "localhost")]
    assert endpoints("registry.lan:5000", hosts) == [Endpoint("http", "registry.lan:5000")]
    assert endpoints("registry.lan:5001", hosts) == [Endpoint("https", "registry.lan:5001")]


def test_mirrors_come_first_in_order_and_name_the_registry_they_stand_in_for():
    hosts = {
        "quay.io": HostConfig(mirrors=("127.0.0.1:5001", "https://mirror.example")),
        "docker.io": HostConfig(mirrors=("mirror.example:443",)),
    }

    assert endpoints("quay.io", hosts) == [
        Endpoint("http", "127.0.0.1:5001", mirror=True, ns="quay.io"),
        Endpoint("https", "mirror.example", mirror=True, ns="quay.io"),
        Endpoint("https", "quay.io"),
    ]
    assert endpoints("quay.io", hosts)[0].url("/v2/") == "http://127.0.0.1:5001/v2/?ns=quay.io"
    # docker.io's mirrors are asked as docker asks them, with no ns
    assert endpoints("docker.io", hosts)[0] == Endpoint("https", "mirror.example:443", True)


def test_plain_http_mirror_needs_loopback_or_insecure():
    with pytest.raises(InvalidArgument, match="plain HTTP"):
        endpoints("quay.io", {"quay.io": HostConfig(mirrors=("http://mirror.example",))})
    allowed = {
        "quay.io": HostConfig(mirrors=("http://mirror.lan",)),
        "mirror.lan": HostConfig(insecure=True),
    }
    assert endpoints("quay.io", allowed)[0] == Endpoint("http", "mirror.lan", True, "quay.io")


@pytest.mark.parametrize("mirror", ["ftp://m.example", "https://m.example/v2/prefix", "", "m/x"])
def test_malformed_mirrors_are_refused(mirror: str):
    with pytest.raises(InvalidArgument, match="registry endpoint"):
        endpoints("quay.io", {"quay.io": HostConfig(mirrors=(mirror,))})
