"""Where a CRI pull goes and with which credentials."""

from __future__ import annotations

import base64

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.config import CriConfig, RegistryConfig
from supervisor.cri import registry
from supervisor.distribution.hosts import HostConfig
from supervisor.errors import InvalidArgument


def test_cri_mirrors_come_before_the_registry_sections_own():
    merged = registry.hosts_config(
        CriConfig(mirrors={"registry.k8s.io": ["http://127.0.0.1:5000"], "gcr.io": ["m2"]}),
        RegistryConfig(mirrors={"gcr.io": ["m1", "m2"]}, insecure=["reg.lan"]),
    )
    assert merged.mirrors == {"registry.k8s.io": ["http://127.0.0.1:5000"], "gcr.io": ["m2", "m1"]}
    assert merged.insecure == ["reg.lan"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (("u", "p", "", ""), ("u", "p")),
        (("", "", "", "tok"), ("", "tok")),
        (("", "", base64.b64encode(b"a:b:c").decode(), ""), ("a", "b:c")),
        (("", "", "", ""), None),
    ],
)
def test_auth_fields_in_containerds_order(fields: tuple[str, str, str, str], expected: object):
    assert registry.parse_auth(*fields) == expected


def test_a_broken_auth_is_invalid():
    with pytest.raises(InvalidArgument):
        registry.parse_auth("", "", "%%%", "")
    with pytest.raises(InvalidArgument):
        registry.parse_auth("", "", base64.b64encode(b"nocolon").decode(), "")


def test_request_auth_goes_to_the_registry_and_its_mirrors_unless_it_names_a_server():
    hosts = {"registry.k8s.io": HostConfig(("http://127.0.0.1:5000",))}
    auth = cri.AuthConfig(username="u", password="p")
    got = registry.request_credentials(auth, "registry.k8s.io", hosts, {})
    assert set(got) == {"127.0.0.1:5000", "registry.k8s.io"}
    auth.server_address = "https://other.io"
    got = registry.request_credentials(auth, "registry.k8s.io", hosts, {"x": "kept"})
    assert set(got) == {"other.io", "x"}
    assert registry.request_credentials(None, "registry.k8s.io", hosts, {}) == {}
