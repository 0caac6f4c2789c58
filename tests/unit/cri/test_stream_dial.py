"""The port-forward dialer: connections made inside a pod's network namespace, no helper."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from supervisor.cri.streaming.dial import DialError, Target, dial

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Netns:
    pin: str  # the namespace's file, valid while the thread holding it lives
    listeners: dict[int, socket.socket]


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


@contextmanager
def netns_listening(*listen: tuple[int, str]) -> Iterator[Netns]:
    """A new network namespace (lo up) held by a thread, with a TCP listener on each
    (family, address); its pin is the thread's /proc/.../ns/net."""
    ready = threading.Event()
    done = threading.Event()
    held: list[Netns] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if _libc.unshare(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            _lo_up()
            listeners = {}
            for family, address in listen:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.bind((address, 0))
                sock.listen(8)
                listeners[sock.getsockname()[1]] = sock
            held.append(
                Netns(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net", listeners)
            )
        except BaseException as e:
            failure.append(e)
        ready.set()
        done.wait()

    thread = threading.Thread(target=run)
    thread.start()
    ready.wait()
    try:
        if failure:
            raise failure[0]
        yield held[0]
    finally:
        for sock in held[0].listeners.values() if held else ():
            sock.close()
        done.set()
        thread.join()


def test_a_port_listening_only_inside_the_pod_namespace_is_reached():
    with netns_listening((socket.AF_INET, "127.0.0.1")) as ns:
        (port,) = ns.listeners
        with socket.socket() as host:  # the host's own loopback has nothing there
            assert host.connect_ex(("127.0.0.1", port)) != 0

        async def run() -> tuple[str, int]:
            sock = await dial(Target(ns.pin, port))
            with sock:
                accepted, _ = ns.listeners[port].accept()
                with accepted:
                    await asyncio.get_running_loop().sock_sendall(sock, b"ping")
                    assert accepted.recv(4) == b"ping"
                    return accepted.getpeername()[:2]

        peer = asyncio.run(run())
        assert peer[0] == "127.0.0.1"


def test_ipv6_loopback_is_tried_when_ipv4_is_refused():
    with netns_listening((socket.AF_INET6, "::1")) as ns:
        (port,) = ns.listeners

        async def run() -> int:
            sock = await dial(Target(ns.pin, port))
            with sock:
                return sock.family

        assert asyncio.run(run()) == socket.AF_INET6


def test_a_port_nobody_listens_on_is_reported_in_plain_words():
    with netns_listening() as ns, pytest.raises(DialError) as caught:
        asyncio.run(dial(Target(ns.pin, 9)))
    assert str(caught.value) == (
        "nothing listens on port 9 inside the pod's network namespace "
        "(127.0.0.1:9: connection refused; [::1]:9: connection refused)"
    )


def test_a_gone_namespace_is_a_dial_error():
    with pytest.raises(DialError, match="network namespace is gone"):
        asyncio.run(dial(Target("/nonexistent/netns", 80)))


def test_the_host_namespace_when_the_pod_uses_the_host_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        async def run() -> None:
            sock = await dial(Target("", port))
            sock.close()

        asyncio.run(run())
        listener.accept()[0].close()


def test_no_thread_or_fd_is_left_behind():
    before_fds = len(os.listdir("/proc/self/fd"))
    before_threads = threading.active_count()
    with netns_listening((socket.AF_INET, "127.0.0.1")) as ns:
        (port,) = ns.listeners

        async def run() -> None:
            for _ in range(20):
                (await dial(Target(ns.pin, port))).close()
                ns.listeners[port].accept()[0].close()
            with pytest.raises(DialError):
                await dial(Target(ns.pin, 9))

        asyncio.run(run())
    assert threading.active_count() == before_threads
    assert len(os.listdir("/proc/self/fd")) == before_fds
