"""Registry authentication, the pure parts: challenges, credentials and tokens.

- `parse_challenges` reads `WWW-Authenticate` headers (RFC 7235: several challenges, each a
  scheme with `name=value` or `name="quoted"` parameters, or a token68); it never raises,
  whatever a registry sends: what cannot be read is skipped.
- `Credentials` come from docker's `config.json`: `auths` maps a registry (a host, or a URL
  such as `https://index.docker.io/v1/`) to a base64 `auth` ("user:password") or to `username`
  and `password`. Keys are normalized with `host_key`, under which every docker.io alias is
  `docker.io`.
- `parse_token` reads a token server's answer (`token` or `access_token`, `expires_in`).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor.errors import InvalidArgument, PermissionDenied

_DOCKER_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)
_TOKEN68_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/")
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when a token server does not say (the spec's default)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    token68: str = ""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_separators(self) -> None:
        while self.peek() in (" ", "\t", ","):
            self.pos += 1

    def take(self, chars: frozenset[str]) -> str:
        start = self.pos
        while self.peek() and self.peek() in chars:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string whose opening quote is next; an unterminated one runs to the end."""
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == '"':
                break
            if c == "\\" and self.pos < len(self.text):
                c = self.text[self.pos]
                self.pos += 1
            out.append(c)
        return "".join(out)


def _param(scanner: _Scanner) -> tuple[str, str] | None:
    """`name = value` at the scanner, or None (and the scanner unmoved) if there is none."""
    start = scanner.pos
    name = scanner.take(_TOKEN_CHARS)
    scanner.skip_space()
    if not name or scanner.peek() != "=":
        scanner.pos = start
        return None
    scanner.pos += 1
    scanner.skip_space()
    value = scanner.quoted() if scanner.peek() == '"' else scanner.take(_TOKEN_CHARS)
    return name.lower(), value


def _token68(scanner: _Scanner) -> str:
    """A token68 (`abc==`) if one stands alone at the scanner, else "" (scanner unmoved)."""
    start = scanner.pos
    value = scanner.take(_TOKEN68_CHARS) + scanner.take(frozenset("="))
    scanner.skip_space()
    if value and scanner.peek() in ("", ","):
        return value
    scanner.pos = start
    return ""


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given `WWW-Authenticate` header values, in order."""
    out: list[Challenge] = []
    for header in headers:
        scanner = _Scanner(header)
        while True:
            scanner.skip_separators()
            if not scanner.peek():
                break
            scheme = scanner.take(_TOKEN_CHARS)
            if not scheme:
                scanner.pos += 1  # garbage: skip a character and look again
                continue
            scanner.skip_space()
            params: dict[str, str] = {}
            token68 = ""
            if scanner.peek() not in ("", ","):
                token68 = _token68(scanner)
            if not token68:
                while True:
                    scanner.skip_separators()
                    param = _param(scanner)
                    if param is None:
                        break
                    params.setdefault(*param)
            out.append(Challenge(scheme.lower(), params, token68))
    return out


# -- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token

    def basic(self) -> str:
        """The value of an `Authorization` header for HTTP basic authentication."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def host_key(registry: str) -> str:
    """The key credentials are kept under: the host[:port] alone, docker.io for its aliases."""
    text = registry.strip()
    host = urlsplit(text).netloc if "://" in text else text.partition("/")[0]
    host = host.lower()
    return "docker.io" if host in _DOCKER_HOSTS else host


def parse_docker_config(text: str, where: str = "docker config") -> dict[str, Credentials]:
    """The credentials in a docker `config.json`'s `auths`, by `host_key`.

    Credential helpers (`credsStore`, `credHelpers`) are not run: entries naming none of
    `auth`, `username`, `identitytoken` are skipped.
    """
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{where}: not JSON: {e}") from None
    auths = value.get("auths", {}) if isinstance(value, dict) else None
    if not isinstance(auths, dict):
        raise InvalidArgument(f'{where}: "auths" must be an object')
    out: dict[str, Credentials] = {}
    for registry, entry in auths.items():
        if not isinstance(entry, dict):
            raise InvalidArgument(f'{where}: the entry for "{registry}" must be an object')
        username, password = _str(entry, "username"), _str(entry, "password")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(_str(entry, "auth"), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument(
                    f'{where}: the "auth" of "{registry}" is not base64'
                ) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument(f'{where}: the "auth" of "{registry}" is not user:password')
        token = _str(entry, "identitytoken")
        if username or password or token:
            out[host_key(registry)] = Credentials(username, password, token)
    return out


def _str(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key, "")
    return value if isinstance(value, str) else ""


def load_docker_config(path: Path) -> dict[str, Credentials]:
    """Read a docker config.json; a missing file holds no credentials."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return parse_docker_config(text, str(path))


# -- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic()

    def fresh(self, now: float | None = None, margin: float = 5.0) -> bool:
        return (time.monotonic() if now is None else now) + margin < self.expires_at


def parse_token(body: bytes, realm: str, now: float | None = None) -> Token:
    """A token server's answer; PermissionDenied names the realm when it holds no token."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise PermissionDenied(f"token server {realm} answered without a JSON object")
    token = value.get("token") or value.get("access_token")
    if not isinstance(token, str) or not token:
        raise PermissionDenied(f"token server {realm} answered without a token")
    lifetime = value.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return Token(token, (time.monotonic() if now is None else now) + float(lifetime))


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """Scopes with the actions on one resource joined (`repository:a:pull` and
    `repository:a:push` are `repository:a:pull,push`), sorted; what is not
    `type:name:actions` is kept as it is."""
    actions: dict[tuple[str, str], set[str]] = {}
    others: set[str] = set()
    for scope in scopes:
        kind, sep, rest = scope.partition(":")
        name, sep2, wanted = rest.rpartition(":")
        if not (sep and sep2 and kind and name):
            others.add(scope)
            continue
        actions.setdefault((kind, name), set()).update(a for a in wanted.split(",") if a)
    merged = {f"{kind}:{name}:{','.join(sorted(a))}" for (kind, name), a in actions.items()}
    return sorted(merged | others)
