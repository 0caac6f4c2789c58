"""WWW-Authenticate challenges, docker config credentials and token answers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.distribution.auth import (
    Challenge,
    Credentials,
    host_key,
    load_docker_config,
    parse_challenges,
    parse_docker_config,
    parse_token,
    pull_scope,
)
from supervisor.errors import InvalidArgument, PermissionDenied


def test_docker_hub_bearer_challenge():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )

    assert parse_challenges([header]) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_several_challenges_in_one_header_and_across_headers():
    headers = [
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
        'BEARER Realm = "http://127.0.0.1:1/token" , Service=svc',
    ]

    parsed = parse_challenges(headers)

    assert [c.scheme for c in parsed] == ["newauth", "basic", "bearer"]
    assert parsed[0].params == {"realm": "apps", "type": "1", "title": 'Login to "apps"'}
    assert parsed[1].params == {"realm": "simple"}
    assert parsed[2].params == {"realm": "http://127.0.0.1:1/token", "service": "svc"}


def test_token68_challenges_and_bare_schemes():
    assert parse_challenges(["Basic", "Negotiate abc+/==, Basic realm=x"]) == [
        Challenge("basic"),
        Challenge("negotiate", token68="abc+/=="),
        Challenge("basic", {"realm": "x"}),
    ]


def test_a_repeated_parameter_keeps_its_first_value():
    (challenge,) = parse_challenges(['Bearer realm="a", realm="b"'])
    assert challenge.params == {"realm": "a"}


def test_garbage_and_unterminated_quotes_are_tolerated():
    assert parse_challenges(["", ",,, ", '"', "=", "=="]) == []
    (challenge,) = parse_challenges(['Bearer realm="https://unterminated'])
    assert challenge.params == {"realm": "https://unterminated"}


@given(st.lists(st.text(max_size=60), max_size=3))
def test_challenge_parsing_never_raises(headers: list[str]):
    for challenge in parse_challenges(headers):
        assert challenge.scheme == challenge.scheme.lower()
        assert all(name == name.lower() for name in challenge.params)


@given(
    st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True),
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        max_size=4,
    ),
)
def test_quoted_parameters_round_trip(scheme: str, params: dict[str, str]):
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = f"{scheme} " + ", ".join(f"{name}={quote(value)}" for name, value in params.items())
    assert parse_challenges([header]) == [Challenge(scheme.lower(), params)]


# -- credentials ------------------------------------------------------------------------------


def config(auths: dict[str, object]) -> str:
    return json.dumps({"auths": auths, "credsStore": "desktop"})


def test_docker_config_auth_and_username_password_entries():
    encoded = base64.b64encode(b"alice:pa:ss").decode()

    creds = parse_docker_config(
        config(
            {
                "https://index.docker.io/v1/": {"auth": encoded},
                "127.0.0.1:5000": {"username": "bob", "password": "pw"},
                "https://Registry.Example.com:8443/v2/": {"username": "carol", "password": "x"},
                "quay.io": {},  # kept by a credential helper: nothing here
            }
        )
    )

    assert creds == {
        "docker.io": Credentials("alice", "pa:ss"),
        "127.0.0.1:5000": Credentials("bob", "pw"),
        "registry.example.com:8443": Credentials("carol", "x"),
    }
    assert "pa:ss" not in repr(creds["docker.io"])  # secrets stay out of logs


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("ghcr.io/some/path", "ghcr.io"),
    ],
)
def test_host_keys_are_normalized(key: str, host: str):
    assert host_key(key) == host


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not JSON"),
        ('{"auths": []}', '"auths" must be an object'),
        ('{"auths": {"h": "x"}}', "must be an object"),
        ('{"auths": {"h": {"auth": "%%%"}}}', "not base64"),
        ('{"auths": {"h": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}', "user:"),
    ],
)
def test_a_bad_docker_config_says_what_is_wrong(text: str, says: str):
    with pytest.raises(InvalidArgument, match=says):
        parse_docker_config(text, "config.json")


def test_load_docker_config_reads_a_file_and_a_missing_one_is_empty(tmp_path: Path):
    path = tmp_path / "config.json"
    assert load_docker_config(path) == {}
    path.write_text(config({"h:1": {"username": "u", "password": "p"}}))
    assert load_docker_config(path) == {"h:1": Credentials("u", "p")}


def test_basic_header():
    assert Credentials("u", "p").basic() == "Basic " + base64.b64encode(b"u:p").decode()


# -- tokens -----------------------------------------------------------------------------------


def test_token_answers():
    token = parse_token(b'{"token": "t1", "expires_in": 300}', "realm", now=1000.0)
    assert (token.value, token.expires_at) == ("t1", 1300.0)
    assert token.fresh(now=1200.0)
    assert not token.fresh(now=1296.0)  # a margin before it runs out

    oauth = parse_token(b'{"access_token": "t2"}', "realm", now=0.0)
    assert (oauth.value, oauth.expires_at) == ("t2", 60.0)  # the spec's default lifetime


@pytest.mark.parametrize("body", [b"", b"[]", b'{"token": ""}', b'{"expires_in": 5}'])
def test_a_token_answer_without_a_token_is_permission_denied(body: bytes):
    with pytest.raises(PermissionDenied, match=r"https://auth\.example/token"):
        parse_token(body, "https://auth.example/token")


def test_pull_scope():
    assert pull_scope("library/busybox") == "repository:library/busybox:pull"
