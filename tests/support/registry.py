"""A real distribution registry (Debian's docker-registry) on 127.0.0.1, and pushes to it.

This module owns the registry child process, started with a generated YAML config (filesystem
storage in a temporary directory, deletes enabled, errors only, log in a file) and stopped by
pid; its temporary directory, removed at stop when we made it; and a small urllib client of the
v2 API that pushes `images.Image` / `images.Index` values (blobs monolithic after a HEAD check,
then manifests by digest, then the tag) and lets tests read back what the registry serves.
Nothing here uses a proxy or leaves loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.images import Image, Index, sha256

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class PushedImage:
    host: str
    repo: str
    tag: str
    digest: str  # of the manifest (or index) the tag names, as the registry reported it
    image: Image | Index

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config_yaml(root: Path, port: int) -> str:
    """The registry's config; JSON strings are YAML strings, so paths are quoted with json."""
    return f"""\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {json.dumps(str(root))}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: ctrd-tests-only
  draintimeout: 1s
"""


class Registry:
    """`docker-registry serve` on a free loopback port; a context manager that starts and stops."""

    def __init__(self, base: Path | None = None, binary: str = "docker-registry") -> None:
        self._owns_base = base is None
        self.base = base or Path(tempfile.mkdtemp(prefix="ctrd-registry-"))
        self.binary = binary
        self.config_path = self.base / "config.yml"
        self.log_path = self.base / "registry.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0, attempts: int = 3) -> None:
        """Start and wait until `GET /v2/` answers 200; retries if the free port got taken."""
        for _ in range(attempts):
            self.port = _free_port()
            self.config_path.write_text(config_yaml(self.base / "storage", self.port))
            # REGISTRY_* variables would override the config file.
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    start_new_session=True,
                )  # fmt: skip
            if self._wait_ready(self.proc, timeout):
                return
            if "address already in use" not in self.log():
                break
        self.stop()
        raise RegistryError(f"docker-registry did not start:\n{self.log()}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if self.request("GET", "/v2/", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the registry by pid (SIGTERM, then SIGKILL); returns its exit status."""
        proc, self.proc = self.proc, None
        status = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            status = proc.returncode
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)
        return status

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- the v2 API ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        """One HTTP request; `path` is absolute on the registry or a full URL (a Location)."""
        url = path if path.startswith("http") else self.url + path
        req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return Response(resp.status, _lower(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Response(err.code, _lower(err.headers.items()), err.read())

    def _expect(self, resp: Response, status: int, what: str) -> Response:
        if resp.status != status:
            raise RegistryError(f"{what}: HTTP {resp.status} {resp.body[:500]!r}")
        return resp

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        """Upload one blob unless the registry has it: POST an upload, PUT it whole."""
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
            return
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"")
        location = self._expect(started, 202, f"start upload of {digest}").headers["location"]
        parts = urllib.parse.urlsplit(location)
        query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("digest", digest)])
        headers = {"Content-Type": "application/octet-stream"}
        done = self.request("PUT", parts._replace(query=query).geturl(), data=data, headers=headers)
        self._expect(done, 201, f"upload of {digest}")

    def push_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> str:
        """PUT a manifest or index under a tag or digest; returns the digest the registry saw."""
        resp = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", data=data,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        digest = self._expect(resp, 201, f"manifest {repo}:{reference}").headers.get(
            "docker-content-digest"
        )
        if digest != sha256(data):
            raise RegistryError(f"registry says {digest} for a manifest of {sha256(data)}")
        return digest

    def push(self, repo: str, tag: str, target: Image | Index) -> PushedImage:
        """Push an image (or an index, its images first by digest) and tag it."""
        images = target.images if isinstance(target, Index) else (target,)
        for image in images:
            for digest, data in image.blobs.items():
                self.push_blob(repo, digest, data)
        for image in images if isinstance(target, Index) else ():
            self.push_manifest(repo, image.digest, image.descriptor.media_type, image.manifest)
        body = target.index if isinstance(target, Index) else target.manifest
        digest = self.push_manifest(repo, tag, target.descriptor.media_type, body)
        return PushedImage(self.host, repo, tag, digest, target)


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}
