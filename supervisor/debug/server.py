"""The `[debug] address` socket: HTTP on a unix socket answering what SIGUSR1 logs, on demand.

As containerd's debug socket, it is off unless configured, made with mode 0660 and the
configured owner, and speaks plain HTTP, so `ctr pprof -d SOCKET goroutines` (which asks for
`/debug/pprof/goroutine?debug=2`) prints ctrd's stacks. Paths:

    /debug/pprof/goroutine, /debug/stacks   the stacks as text (`stacks.render`)
    /debug/stacks?format=json               the same as JSON (`stacks.as_json`)

Only a unix socket (an absolute path): stacks show paths, ids and arguments, not for a network.
The server runs on a thread of its own, not on the event loop: a loop stuck in a callback is
what one most wants to look at, and it still answers then.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import structlog

from supervisor.debug import stacks
from supervisor.errors import InvalidArgument
from supervisor.sockets import clear_stale_socket

log = structlog.get_logger("ctrd.debug")

TEXT_PATHS = frozenset({"/debug/pprof/goroutine", "/debug/stacks"})


class _Handler(BaseHTTPRequestHandler):
    server_version = "ctrd-debug"
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path not in TEXT_PATHS:
            self._answer(404, "text/plain", f"{url.path}: not found\n".encode())
            return
        dump = stacks.snapshot()
        if parse_qs(url.query).get("format") == ["json"]:
            body = json.dumps(stacks.as_json(dump)).encode()
            self._answer(200, "application/json", body)
        else:
            self._answer(200, "text/plain; charset=utf-8", stacks.render(dump).encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("debug_request", request=format % args)

    def address_string(self) -> str:  # a unix socket's peer has no address
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class DebugServer:
    """Serves on `address` until `close`."""

    def __init__(self, address: str, uid: int = 0, gid: int = 0) -> None:
        if not os.path.isabs(address):
            raise InvalidArgument(
                f'[debug] address "{address}" must be an absolute path (a unix socket)'
            )
        clear_stale_socket(address, "[debug] address")
        os.makedirs(os.path.dirname(address), mode=0o711, exist_ok=True)
        old_umask = os.umask(0o117)  # born 0660, never briefly wider
        try:
            self._server = _Server(address, _Handler)
        finally:
            os.umask(old_umask)
        self.address = address
        try:
            os.chown(address, uid, gid)
        except OSError:
            self._server.server_close()
            os.unlink(address)
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="debug-server", daemon=True
        )
        self._thread.start()
        log.info("debug_serving", address=address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
