"""Notice when someone else changes the firewall, so that ctrd's table is rebuilt at once.

A firewall reload (`nft flush ruleset`, firewalld, `iptables-restore` on the nft backend) wipes
ctrd's table with everything else, and containers lose their published ports and their NAT
until someone notices. ctrd subscribes to nf_tables' netlink notifications (group
NFNLGRP_NFTABLES on a NETLINK_NETFILTER socket, the same messages `nft monitor` prints): every
ruleset change in the network namespace wakes it; after a short quiet time (a reload is many
messages) it asks its callback to check. The check compares the table's shape (its chains,
rules, maps and map elements, counted from netlink dumps: `nft.fingerprint`, well under a
millisecond with a thousand published ports) with what ctrd last wrote and rewrites it when
they differ; ctrd's own writes, element updates included, wake it too and find nothing to do.
No polling: an idle host costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger()

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
QUIET = 0.2  # seconds without a notification before checking
RETRY = 1.0  # seconds before checking again after a failed check


class FirewallWatch:
    """Calls `check()` after each burst of nf_tables changes, until `close()`."""

    def __init__(self, check: Callable[[], Awaitable[object]], quiet: float = QUIET) -> None:
        self._check = check
        self._quiet = quiet
        self._sock: socket.socket | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.setblocking(False)
        sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._task = asyncio.create_task(self._run(), name="firewall-watch")

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            while True:  # drain: only the fact of a change matters
                self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass  # ENOBUFS: notifications were lost while busy; a check covers them all
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            while self._wake.is_set():  # wait for the burst to end
                self._wake.clear()
                await asyncio.sleep(self._quiet)
            try:
                await self._check()
            except Exception:
                log.exception("firewall_check_failed")
                # no notification may come again: look once more, a little later
                asyncio.get_running_loop().call_later(RETRY, self._wake.set)

    async def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
