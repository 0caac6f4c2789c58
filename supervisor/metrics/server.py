"""`/v1/metrics`: the daemon's Prometheus endpoint (`[metrics] address`), as containerd's.

It serves, in the Prometheus text format (0.0.4), what `registry.REGISTRY` holds (through
prometheus_client's `generate_latest`) followed by the containers' cgroup families
(`containers.ContainerMetrics.render`). Any other path is 404, as containerd's mux answers.

Invariants:
- Off unless `[metrics] address` is set; the address must be a loopback one unless
  `[metrics] allow_remote = true` (`supervisor.config` checks both before the daemon starts).
- A scrape never runs on the event loop: the HTTP side is aiohttp on the loop, the collection
  and formatting run on one thread of the endpoint's own (not the loop's default executor,
  which the RPCs use for their blocking work). Scrapes that arrive while one is being made
  share its result, so a burst of scrapers costs one collection.
- The containers' share of a large scrape is read and formatted by reader processes
  (`reader.ReaderPool`, started with the endpoint), so a scrape costs the daemon's own
  threads, and its RPCs, little more than joining their text.
- Stopping closes the listener, waits for a scrape in flight to finish and ends the readers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from supervisor.errors import FailedPrecondition
from supervisor.metrics import registry
from supervisor.metrics.containers import ContainerMetrics, TaskLike
from supervisor.metrics.reader import ReaderPool

log = structlog.get_logger("ctrd.metrics")

PATH = "/v1/metrics"


def scrape(containers: ContainerMetrics | None) -> bytes:
    """One exposition: the registry's families, then the containers' (blocking; the
    registry's are made while the readers make the containers')."""
    if containers is None:
        return generate_latest(registry.REGISTRY)
    finish = containers.render_later()
    try:
        text = generate_latest(registry.REGISTRY)
    finally:
        rest = finish()
    return text + rest.encode()


class MetricsServer:
    """The HTTP listener for /v1/metrics on one TCP address."""

    def __init__(
        self,
        host: str,
        port: int,
        containers: ContainerMetrics | None,
        readers: ReaderPool | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._containers = containers
        self._readers = readers  # the containers' renderer, closed with the endpoint
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrape")
        self._inflight: asyncio.Future[bytes] | None = None
        self._runner: web.AppRunner | None = None
        self.address = ""  # host:port once listening (the port the kernel chose for 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            self._executor.shutdown(wait=False)
            if self._readers is not None:
                self._readers.close()
            raise FailedPrecondition(
                f"[metrics] address {self._host}:{self._port}: {e.strerror or e}"
            ) from None
        self._runner = runner
        if self._readers is not None:  # warmed on the endpoint's thread: a scrape waits for it
            asyncio.get_running_loop().run_in_executor(self._executor, self._readers.start)
        sockets = runner.addresses
        host, port = (sockets[0][0], sockets[0][1]) if sockets else (self._host, self._port)
        self.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        log.info("metrics_serving", address=self.address, path=PATH)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.close)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await self._scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _scrape(self) -> bytes:
        """The exposition, made on the endpoint's thread; concurrent scrapes share one."""
        if self._inflight is None:
            loop = asyncio.get_running_loop()
            self._inflight = loop.run_in_executor(self._executor, self._timed)
            self._inflight.add_done_callback(self._done)
        return await asyncio.shield(self._inflight)

    def _done(self, future: asyncio.Future[bytes]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("metrics_scrape_failed", error=str(future.exception()))

    def _timed(self) -> bytes:
        started = time.perf_counter()
        body = scrape(self._containers)
        log.debug("metrics_scraped", ms=round((time.perf_counter() - started) * 1000, 1))
        return body


async def start(host: str, port: int, tasks: Callable[[], Sequence[TaskLike]]) -> MetricsServer:
    """The endpoint for a daemon whose tasks `tasks` lists (`TaskManager.all`), serving."""
    readers = ReaderPool()
    server = MetricsServer(host, port, ContainerMetrics(tasks, readers), readers)
    await server.start()
    return server
