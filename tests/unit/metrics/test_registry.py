"""The registry seam: what a part registers is served, and removed again when it stops."""

from collections.abc import Iterable

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import DuplicateTimeseries

from supervisor.metrics import registry


class _Gauge:
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, "test")

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, "test", value=7)


def test_registered_collector_is_served_until_unregistered() -> None:
    unregister = registry.register(_Gauge("ctrd_test_seam"))
    try:
        assert b"ctrd_test_seam 7.0" in generate_latest(registry.REGISTRY)
    finally:
        unregister()
    assert b"ctrd_test_seam" not in generate_latest(registry.REGISTRY)
    unregister()  # a second call is harmless


def test_a_name_served_twice_is_refused() -> None:
    unregister = registry.register(_Gauge("ctrd_test_clash"))
    try:
        with pytest.raises(DuplicateTimeseries):
            registry.register(_Gauge("ctrd_test_clash"))
    finally:
        unregister()
