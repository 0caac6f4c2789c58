"""Registries with manners, for the distribution client's tests: auth, range, cut-offs.

- `HtpasswdRegistry`: the real docker-registry with its htpasswd (basic) authentication. The
  htpasswd line is a fixed bcrypt hash (cost 4) of `PASSWORD`, made once with the `bcrypt`
  module: docker-registry checks it itself, so neither bcrypt nor apache2-utils is needed here.
- `Proxy`: a stdlib HTTP server on 127.0.0.1 in front of a registry, in a thread of the test
  process. It passes requests on (pushes too: bodies, and the Host header, so that the
  registry's upload Locations name the proxy) and can be told to demand a bearer token (which
  its own `/token` endpoint issues; `pull,push` in the challenge of a write), to ignore Range
  headers, to break off blob bodies after N bytes, to corrupt them, to redirect them
  elsewhere, or to make upload Locations relative.
  It records what it was asked (with the size of each request body). `stop()` closes its
  socket; `Proxy(upstream, port=p)` starts one again on the same port.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from unittest import mock

from tests.support import registry as registry_module
from tests.support.registry import Registry, Response

USERNAME = "ctrd"
PASSWORD = "ctrd-secret"
HTPASSWD = f"{USERNAME}:$2b$04$uc0Ft4rxTOf4ihwOHnNujuh0vGsPRR83.CXb0EuyH7KDMEwNgZLlq\n"
TOKEN = "opaque-token-issued-by-the-test"
SERVICE = "ctrd-test-registry"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class HtpasswdRegistry(Registry):
    """docker-registry demanding basic auth; its own requests (pushes, readiness) send it."""

    def start(self, timeout: float = 20.0, attempts: int = 3) -> None:
        htpasswd = self.base / "htpasswd"
        htpasswd.write_text(HTPASSWD)
        plain = registry_module.config_yaml

        def with_auth(root: Path, port: int) -> str:
            return plain(root, port) + (
                f"auth:\n  htpasswd:\n    realm: ctrd-test\n    path: {json.dumps(str(htpasswd))}\n"
            )

        with mock.patch.object(registry_module, "config_yaml", with_auth):
            super().start(timeout, attempts)

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        sent = {"Authorization": basic(USERNAME, PASSWORD), **(headers or {})}
        return super().request(method, path, data=data, headers=sent, timeout=timeout)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body_size: int = 0


@dataclass
class ProxySettings:
    require_token: bool = False
    token_credentials: tuple[str, str] | None = None  # basic credentials /token demands
    # an OAuth2 refresh token /token demands: POSTed as the refresh_token grant (GETs refused)
    refresh_token: str | None = None
    oauth_posts: list[dict[str, list[str]]] = field(default_factory=list)  # their forms
    ignore_range: bool = False
    cut_after: int | None = None  # blob bodies stop after this many bytes, then the socket
    corrupt: bool = False  # blob bodies have their last byte flipped
    redirect_blobs: str = ""  # blob GETs answer 307 to this base URL (as to a CDN)
    relative_locations: bool = False  # upload Locations as a path (+ query), without the origin
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)


class Proxy:
    def __init__(self, upstream: str, port: int = 0, settings: ProxySettings | None = None) -> None:
        self.upstream = upstream  # http://host:port
        self.settings = settings or ProxySettings()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def blob_gets(self) -> list[Seen]:
        return [s for s in self.settings.seen if s.method == "GET" and "/blobs/" in s.path]

    def uploads(self) -> list[Seen]:
        """The PUTs that closed a blob upload (the bytes went with them)."""
        return [s for s in self.settings.seen if s.method == "PUT" and "/blobs/uploads/" in s.path]

    def mounts(self) -> list[Seen]:
        """The POSTs that asked to mount a blob from another repository."""
        return [s for s in self.settings.seen if s.method == "POST" and "mount=" in s.query]


def repository(path: str) -> str:
    """The repository a /v2/ path is about ("" for /v2/ itself)."""
    rest = path.removeprefix("/v2/")
    for marker in ("/blobs/", "/manifests/", "/tags/"):
        if marker in rest:
            return rest[: rest.rindex(marker)]
    return ""


class _Handler(BaseHTTPRequestHandler):
    owner: Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(data)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _handle(self) -> None:
        settings = self.owner.settings
        parts = urllib.parse.urlsplit(self.path)
        data = self._body()
        settings.seen.append(
            Seen(
                self.command, parts.path, parts.query, dict(self.headers.items()), len(data or b"")
            )
        )
        if parts.path == "/token" and self.command == "POST":
            self._oauth_token(urllib.parse.parse_qs((data or b"").decode()))
            return
        if parts.path == "/token":
            self._token(urllib.parse.parse_qs(parts.query))
            return
        if settings.require_token and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            repo = repository(parts.path)
            actions = "pull" if self.command in ("GET", "HEAD") else "pull,push"
            challenge = f'Bearer realm="http://{self.owner.host}/token",service="{SERVICE}"' + (
                f',scope="repository:{repo}:{actions}"' if repo else ""
            )
            self._reply(
                401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
            )
            return
        if settings.redirect_blobs and "/blobs/" in parts.path and self.command == "GET":
            self._reply(307, {"Location": settings.redirect_blobs + self.path}, b"")
            return
        passed = ("accept", "range", "content-type", "host")
        forwarded = {k: v for k, v in self.headers.items() if k.lower() in passed}
        if settings.ignore_range:
            forwarded.pop("Range", None)
        request = urllib.request.Request(
            self.owner.upstream + self.path, data=data, headers=forwarded, method=self.command
        )
        try:
            with _OPENER.open(request, timeout=30) as resp:
                status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                status, headers, body = err.code, err.headers, err.read()
        kept = {
            k: v
            for k, v in headers.items()
            if k.lower()
            in (
                "content-type", "docker-content-digest", "content-range", "location",
                "docker-upload-uuid", "range",
            )
        }  # fmt: skip
        if settings.relative_locations and "Location" in kept:
            location = urllib.parse.urlsplit(kept["Location"])
            kept["Location"] = urllib.parse.urlunsplit(("", "", *location[2:]))
        length = int(headers.get("Content-Length", len(body)))
        blob = "/blobs/" in parts.path and self.command == "GET" and status == 200
        if blob and settings.corrupt and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        cut = settings.cut_after if blob else None
        self._reply(status, kept, body, length, cut)

    def _token(self, query: dict[str, list[str]]) -> None:
        settings = self.owner.settings
        settings.token_requests.append(query)
        wanted = settings.token_credentials
        if wanted is not None and self.headers.get("Authorization") != basic(*wanted):
            self._reply(401, {}, b'{"details":"bad credentials"}')
            return
        if settings.refresh_token is not None:
            self._reply(401, {}, b'{"details":"this server wants a refresh token"}')
            return
        self._grant("token")

    def _oauth_token(self, form: dict[str, list[str]]) -> None:
        """The OAuth2 endpoint: a refresh_token grant with the expected token gets an
        access token; no refresh token configured is 404 (a registry without the endpoint)."""
        settings = self.owner.settings
        settings.oauth_posts.append(form)
        if settings.refresh_token is None:
            self._reply(404, {}, b"")
            return
        grant = form.get("grant_type", [""])[0], form.get("refresh_token", [""])[0]
        if grant != ("refresh_token", settings.refresh_token):
            self._reply(401, {}, b'{"details":"bad refresh token"}')
            return
        self._grant("access_token")

    def _grant(self, field: str) -> None:
        """A token server's answer: TOKEN under `field` (docker's GET: token; OAuth2's POST:
        access_token), for 300 s."""
        body = json.dumps({field: TOKEN, "expires_in": 300}).encode()
        self._reply(200, {"Content-Type": "application/json"}, body)

    def _reply(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        length: int | None = None,
        cut: int | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
