"""The daemon's one Prometheus registry and the seam through which every part adds to it.

`/v1/metrics` serves `REGISTRY` and nothing else. A part of the daemon contributes either

- instruments made once at import, bound to the registry:
  ``STARTS = Counter("ctrd_...", "...", registry=REGISTRY)`` (counters and histograms that are
  incremented where things happen), or
- a collector (any object with ``collect() -> Iterable[Metric]``) for values computed at scrape
  time from what the daemon holds in memory: ``unregister = register(collector)``.

A collector bound to one daemon's state (a task manager, a store) is registered when that
daemon is built and removed, through the function `register` returns, when it stops: tests
build several daemons in one process, one after the other, and none may see another's state.

Invariants: a name is served by one collector only (`register` refuses a clash, as
prometheus_client does, when the collector says its names through ``describe()``); a
collector's ``collect`` runs on the scrape's worker thread, never on the event loop, so it
must only read (plain attribute reads and copies of dicts are safe there under the GIL) and
must not await or call into asyncio.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

__all__ = ["REGISTRY", "Collector", "register"]

# Not prometheus_client's default REGISTRY: that one carries the process and platform
# collectors of whatever imported the library, and tests must be able to read ctrd's own.
REGISTRY = CollectorRegistry(auto_describe=False)


def register(collector: Collector) -> Callable[[], None]:
    """Adds `collector` to the daemon's registry; returns the function that removes it.

    The returned function may be called more than once (a stop after a failed start).
    """
    REGISTRY.register(collector)
    lock = threading.Lock()
    registered = [True]

    def unregister() -> None:
        with lock:
            if registered[0]:
                registered[0] = False
                REGISTRY.unregister(collector)

    return unregister
