"""/v1/metrics over HTTP: the text format on its path only, scrapes off the event loop and
shared when they overlap; the [metrics] address rules."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.config import MetricsConfig
from supervisor.errors import FailedPrecondition, InvalidArgument
from supervisor.metrics import server
from supervisor.metrics.containers import ContainerMetrics


@dataclass
class _Task:
    namespace: str
    id: str
    pid: int
    dead: bool = False
    exits: dict[str, Any] = field(default_factory=dict)


async def _get(address: str, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def test_serves_the_text_format_on_v1_metrics_only() -> None:
    async def main() -> None:
        tasks = [_Task("default", "me", os.getpid())]
        endpoint = server.MetricsServer("127.0.0.1", 0, ContainerMetrics(lambda: tasks))
        await endpoint.start()
        try:
            status, kind, text = await _get(endpoint.address, "/v1/metrics")
            assert status == 200
            assert kind.startswith("text/plain; version=0.0.4")
            ours = {
                s.name
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.labels == {"container_id": "me", "namespace": "default"}
            }
            assert "container_memory_oom_total" in ours
            status, _, _ = await _get(endpoint.address, "/metrics")
            assert status == 404
        finally:
            await endpoint.stop()

    asyncio.run(main())


def test_a_slow_scrape_leaves_the_loop_free_and_overlapping_scrapes_share_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def slow(containers: Any) -> bytes:
        calls.append(threading.current_thread().name)
        time.sleep(0.4)  # a long collection, on the endpoint's thread
        return b"# nothing\n"

    monkeypatch.setattr(server, "scrape", slow)

    async def main() -> None:
        endpoint = server.MetricsServer("127.0.0.1", 0, None)
        await endpoint.start()
        lag = 0.0

        async def heartbeat() -> None:
            nonlocal lag
            for _ in range(30):
                before = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - before - 0.01)

        try:
            results = await asyncio.gather(
                *(_get(endpoint.address, "/v1/metrics") for _ in range(3)), heartbeat()
            )
        finally:
            await endpoint.stop()
        assert [r[0] for r in results[:3]] == [200, 200, 200]
        assert len(calls) == 1
        assert calls[0].startswith("scrape")
        assert lag < 0.1, f"the event loop was held {lag:.3f} s"

    asyncio.run(main())


def test_a_port_in_use_is_refused_in_plain_words() -> None:
    async def main() -> None:
        first = server.MetricsServer("127.0.0.1", 0, None)
        await first.start()
        try:
            port = int(first.address.rsplit(":", 1)[1])
            with pytest.raises(FailedPrecondition, match=r"\[metrics\] address 127.0.0.1:\d+: "):
                await server.MetricsServer("127.0.0.1", port, None).start()
        finally:
            await first.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("address", "listen"),
    [
        ("127.0.0.1:1338", ("127.0.0.1", 1338)),
        ("localhost:9000", ("127.0.0.1", 9000)),
        ("[::1]:1338", ("::1", 1338)),
        ("127.0.0.2:0", ("127.0.0.2", 0)),
    ],
)
def test_loopback_addresses_are_served(address: str, listen: tuple[str, int]) -> None:
    assert MetricsConfig(address=address).listen() == listen


@pytest.mark.parametrize("address", ["0.0.0.0:1338", "10.1.2.3:1338", "[::]:1338"])
def test_other_addresses_need_allow_remote(address: str) -> None:
    with pytest.raises(InvalidArgument, match="allow_remote"):
        MetricsConfig(address=address).listen()
    assert MetricsConfig(address=address, allow_remote=True).listen()[1] == 1338


@pytest.mark.parametrize("address", ["1338", "127.0.0.1", "127.0.0.1:http", "example.com:80",
                                     "127.0.0.1:70000"])  # fmt: skip
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match=r"\[metrics\] address"):
        MetricsConfig(address=address, allow_remote=True).listen()


class _Renderer:
    """Records when the scrape hands the containers out and takes their parts back."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def submit(self, targets: list[Any]) -> Any:
        self.calls.append(f"submit {len(targets)}")

        def collect() -> list[Any]:
            self.calls.append("collect")
            return []

        return collect


def test_the_registry_is_rendered_while_the_readers_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    tasks = [_Task("default", "me", os.getpid())]
    metrics = ContainerMetrics(lambda: tasks, _Renderer(calls))

    def registry(_: Any) -> bytes:
        calls.append("registry")
        return b"# registry\n"

    monkeypatch.setattr(server, "generate_latest", registry)
    assert server.scrape(metrics) == b"# registry\n"  # the fake readers gave no samples
    assert calls == ["submit 1", "registry", "collect"]

    def failing(_: Any) -> bytes:
        calls.append("registry failed")
        raise RuntimeError("boom")

    calls.clear()
    monkeypatch.setattr(server, "generate_latest", failing)
    with pytest.raises(RuntimeError):
        server.scrape(metrics)
    assert calls == ["submit 1", "registry failed", "collect"]  # the readers are released
