"""Image references: docker's normalization, and clear errors for what is not a reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.distribution.reference import (
    InvalidReference,
    Reference,
    endpoint_host,
    parse,
)
from supervisor.errors import InvalidArgument

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("registry.hub.docker.com/user/app:v2", "docker.io/user/app:v2"),
        ("host:5000/a/b:tag", "host:5000/a/b:tag"),
        ("host.example.com/a", "host.example.com/a:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("127.0.0.1:5000/x/y/z", "127.0.0.1:5000/x/y/z:latest"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        ("a__b-c---d/e_f.g", "docker.io/a__b-c---d/e_f.g:latest"),
        ("user/app:V1.0_rc-2", "docker.io/user/app:V1.0_rc-2"),
    ],
)
def test_parse_normalizes_as_docker_does(text: str, expected: str):
    assert str(parse(text)) == expected


def test_parts_of_a_reference():
    ref = parse(f"host:5000/team/app:v1@{DIGEST}")

    assert ref == Reference("host:5000", "team/app", "v1", DIGEST)
    assert ref.name == "host:5000/team/app"
    assert ref.object == DIGEST  # the digest wins over the tag
    assert parse("busybox").object == "latest"


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("busybox", "busybox:latest"),
        ("docker.io/user/app:v1", "user/app:v1"),
        ("host:5000/library/x", "host:5000/library/x:latest"),
    ],
)
def test_familiar_form_drops_docker_io_and_library(text: str, familiar: str):
    assert parse(text).familiar() == familiar


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("user/App", "must be lowercase"),
        ("host:5000/App", "must be lowercase"),
        ("a" * 64, "64-byte hexadecimal"),
        ("busy box", "white space"),
        (" busybox", "white space"),
        ("busybox:", "invalid reference format"),
        (":latest", "invalid reference format"),
        ("/busybox", "invalid reference format"),
        ("a//b", "invalid reference format"),
        ("a-/b", "invalid reference format"),
        ("busybox:" + "t" * 129, "invalid reference format"),
        ("busybox@sha256:abc", "invalid reference format"),
        ("busybox@md5:" + "0" * 32, "unsupported algorithm"),
        ("host:port/x", "invalid reference format"),
        ("x/" + "a" * 260, "255 characters"),
    ],
)
def test_invalid_references_are_value_errors_that_say_why(text: str, says: str):
    with pytest.raises(InvalidReference, match=re.escape(says)) as caught:
        parse(text)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidArgument)  # the API maps it to INVALID_ARGUMENT


def test_an_uppercase_first_component_is_a_domain():
    assert parse("Registry/app") == Reference("Registry", "app", "latest")


@pytest.mark.parametrize(
    ("domain", "host"),
    [
        ("docker.io", "registry-1.docker.io"),
        ("index.docker.io", "registry-1.docker.io"),
        ("registry.hub.docker.com", "registry-1.docker.io"),
        ("quay.io", "quay.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_docker_io_is_served_by_registry_1(domain: str, host: str):
    assert endpoint_host(domain) == host
    assert endpoint_host(parse(f"{domain}/x/y").domain) == host


@given(st.text(max_size=80))
def test_parse_raises_nothing_but_invalid_reference(text: str):
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert parse(str(ref)) == ref  # and what it gives back parses to itself


@given(
    st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
)
def test_familiar_names_round_trip(path: str, tag: str):
    ref = parse(f"{path}:{tag}")
    assert ref.tag == tag
    assert parse(ref.familiar()) == ref
    assert parse(str(ref)) == ref
