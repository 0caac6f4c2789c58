"""`ctrctl stats` and `ctrctl system info` tell what /v1/metrics tells: the same cgroup readers
(`supervisor.runtime.metrics`) behind Tasks.Metrics and the containers' families, the same
tasks and images behind `system info` and ctrd's own gauges."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_metrics import metrics_ctrd, scrape  # noqa: F401 - a fixture
from tests.integration.test_tasks import pull

pytestmark = pytest.mark.integration


def test_stats_and_system_info_read_what_the_metrics_endpoint_reads(
    metrics_ctrd,  # noqa: F811 - the fixture imported above
    busybox_image,
):
    ref = pull(metrics_ctrd, busybox_image)
    started = ctrctl(
        metrics_ctrd, "run", "-d", "--network", "none", "--memory", "64m", "--name", "agree",
        ref, "sleep", "1000",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    stopped = ctrctl(metrics_ctrd, "create", "--network", "none", "--name", "idle", ref, "true")
    assert stopped.returncode == 0, stopped.stderr
    # One on the bridge that sends and receives something (pings its gateway), then idles.
    pinged = ctrctl(metrics_ctrd, "run", "-d", "--name", "net", ref, "sleep", "1000")
    assert pinged.returncode == 0, pinged.stderr
    [inspected] = json.loads(ctrctl(metrics_ctrd, "inspect", "net").stdout)
    gateway = inspected["NetworkSettings"]["Gateway"]
    ping = ctrctl(
        metrics_ctrd, "exec", "net", "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", gateway
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr

    out = ctrctl(metrics_ctrd, "stats", "--no-stream", "--format", "json", "agree", "net")
    assert out.returncode == 0, out.stderr
    row, net = json.loads(out.stdout)
    info = json.loads(ctrctl(metrics_ctrd, "system", "info", "--format", "json").stdout)
    samples = scrape(metrics_ctrd)

    def value(name: str, *, absent: float | None = None, **labels: str) -> float:
        wanted = {"namespace": "default", **labels}.items()
        found = [v for (n, ls), v in samples.items() if n == name and wanted <= dict(ls).items()]
        assert found or absent is not None, f"{name} {labels} not in the scrape"
        return sum(found) if found else float(absent or 0)

    cid = {"container_id": row["id"]}
    assert row["pids"] == value("container_pids_current", **cid) == 1
    assert row["memoryLimit"] == value("container_memory_usage_limit_bytes", **cid) == 64 << 20
    usage = value("container_memory_usage_usage_bytes", **cid) - value(
        "container_memory_total_inactive_file_bytes", **cid
    )
    assert abs(row["memoryUsage"] - usage) <= 256 << 10  # an idle sleep, read twice
    # (a family without samples is left out, as Go's client does: a device not used yet)
    blkio = "container_blkio_io_service_bytes_recursive_bytes"
    read = value(blkio, absent=0, op="Read", **cid)
    written = value(blkio, absent=0, op="Write", **cid)
    assert (row["blockRead"], row["blockWrite"]) == (read, written)

    # The network: stats sums the container's interfaces but lo; the families are per interface.
    for column, family in (("netRx", "receive"), ("netTx", "transmit")):
        counted = sum(
            v for (n, ls), v in samples.items()
            if n == f"container_network_{family}_bytes_total"
            and dict(ls)["container_id"] == "net" and dict(ls)["interface"] != "lo"
        )  # fmt: skip
        assert counted > 3 * 84  # three pings of 84 bytes each way, at least
        assert abs(net[column] - counted) <= 512, (column, net[column], counted)

    assert info["containers"] == 3
    assert info["containersRunning"] == value("ctrd_tasks", state="running") == 2
    assert info["containersPaused"] == 0
    assert info["images"] == value("ctrd_images")
