"""Connecting to a port inside a pod's network namespace, with no helper program.

A socket belongs to the network namespace of the thread that made it, for its whole life. So a
short-lived thread joins the namespace (setns on the fd of the pod's pin file), makes the
sockets there and ends; the event loop then connects them from its own thread, in the host's
namespace, and the connection is the pod's. The caller's threads never change namespace (a
pool thread that did would carry the pod's namespace to its next work).

`dial` tries `127.0.0.1` then `::1`, as kubelet's runtimes do (`localhost:PORT`, IPv4 first).
A pin of "" is the host's namespace (a pod on the host's network). What fails is a `DialError`
whose message says, in plain words, what was tried and what each attempt got.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from dataclasses import dataclass

from supervisor.network.netns import SetnsError, run_in

CONNECT_TIMEOUT = 10.0  # seconds; a loopback connect answers at once unless the pod is stuck


class DialError(Exception):
    """Nothing could be reached at the port inside the pod (the message says why)."""


@dataclass(frozen=True)
class Target:
    """Where to connect: a network namespace's pin ("" = the host's) and a TCP port."""

    netns: str
    port: int


_ADDRESSES = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def _make_sockets() -> list[socket.socket]:
    """Non-blocking TCP sockets for 127.0.0.1 and ::1, in the calling thread's namespace (an
    address family the kernel lacks is left out)."""
    made: list[socket.socket] = []
    for family, _ in _ADDRESSES:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                continue
            for done in made:
                done.close()
            raise
        sock.setblocking(False)
        made.append(sock)
    return made


def sockets_in(netns: str) -> list[socket.socket]:
    """Blocking: unconnected TCP sockets (IPv4 first) of the namespace pinned at `netns`."""
    if not netns:
        return _make_sockets()
    try:
        return run_in(netns, _make_sockets, name="netns-dial")
    except SetnsError:
        raise
    except OSError as e:  # the pin cannot be opened
        raise DialError(f"the pod's network namespace is gone ({netns})") from e


async def dial(target: Target, wait: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, non-blocking socket to `target.port` on the pod's loopback."""
    loop = asyncio.get_running_loop()
    made = await loop.run_in_executor(None, sockets_in, target.netns)
    tried: list[str] = []
    try:
        while made:
            sock = made.pop(0)
            host = _ADDRESSES[0][1] if sock.family == socket.AF_INET else _ADDRESSES[1][1]
            shown = f"{host}:{target.port}" if ":" not in host else f"[{host}]:{target.port}"
            try:
                async with asyncio.timeout(wait):
                    await loop.sock_connect(sock, (host, target.port))
            except TimeoutError:
                sock.close()
                tried.append(f"{shown}: no answer in {wait:g} s")
                continue
            except OSError as e:
                sock.close()
                tried.append(f"{shown}: {_words(e)}")
                continue
            return sock
    finally:
        for sock in made:
            sock.close()
    refused = all(t.endswith("connection refused") for t in tried)
    what = "nothing listens on" if refused else "cannot connect to"
    raise DialError(
        f"{what} port {target.port} inside the pod's network namespace ({'; '.join(tried)})"
    )


def _words(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return (os.strerror(e.errno) if e.errno else str(e)).lower()


def abort(sock: socket.socket) -> None:
    """Close `sock` with a reset (SO_LINGER 0), so the peer in the pod sees the client's
    reset rather than an orderly end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
