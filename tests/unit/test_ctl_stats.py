"""`ctrctl stats`: a metric of a type it cannot read leaves that container out, not the command."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from ctl.stats import decode
from supervisor.api.io.containerd.cgroups.v2 import metrics_pb2 as v2


def test_cgroup_v2_metrics_decode():
    metrics = v2.Metrics(pids=v2.PidsStat(current=3), memory=v2.MemoryStat(usage=10))
    data = any_pb2.Any(type_url="io.containerd.cgroups.v2.Metrics",
                       value=metrics.SerializeToString())  # fmt: skip
    sample = decode(data, system=1, host_memory=100)
    assert sample is not None
    assert (sample.pids, sample.memory, sample.memory_limit) == (3, 10, 100)


@pytest.mark.parametrize(
    ("url", "value"),
    [
        ("example.com/made.Up", b"\x08\x01"),
        ("io.containerd.cgroups.v1.Metrics", b"\xff\xff"),
        ("io.containerd.cgroups.v2.Metrics", b"\x0a"),
    ],
)
def test_metrics_of_another_type_or_broken_bytes_give_no_sample(url, value):
    assert decode(any_pb2.Any(type_url=url, value=value), system=1, host_memory=100) is None
