"""The containers' families: containerd's names and labels, values from the cgroup files, and
the fast text rendering equal to prometheus_client's own."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.metrics import containers
from supervisor.metrics.containers import ContainerMetrics, Reading, metrics_of, render
from supervisor.runtime import metrics as cgroups

NET_DEV = """Inter-|   Receive                            |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
"""  # noqa: E501


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def v1_tree(base: Path) -> dict[str, Path]:
    return {
        "memory": _write(base / "memory", {
            "memory.stat": "cache 4096\nrss 8192\ntotal_cache 4096\ntotal_rss 8192\n"
                           "pgfault 11\nhierarchical_memory_limit 67108864\n",
            "memory.usage_in_bytes": "12288\n",
            "memory.limit_in_bytes": "67108864\n",
            "memory.max_usage_in_bytes": "20480\n",
            "memory.failcnt": "0\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        }),
        "cpuacct": _write(base / "cpuacct", {
            "cpuacct.usage": "123456789\n",
            "cpuacct.usage_percpu": "100 200 \n",
            "cpuacct.stat": "user 10\nsystem 5\n",
        }),
        "cpu": _write(base / "cpu", {
            "cpu.stat": "nr_periods 3\nnr_throttled 1\nthrottled_time 77\n",
        }),
        "pids": _write(base / "pids", {"pids.current": "4\n", "pids.max": "max\n"}),
        "blkio": _write(base / "blkio", {
            "blkio.throttle.io_service_bytes": "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n",
            "blkio.throttle.io_serviced": "8:0 Read 1\n8:0 Write 1\nTotal 2\n",
        }),
    }  # fmt: skip


def v2_tree(base: Path) -> Path:
    return _write(base, {
        "cpu.stat": "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 0\n"
                    "nr_throttled 0\nthrottled_usec 0\n",
        "memory.current": "65536\n",
        "memory.max": "max\n",
        "memory.stat": "anon 4096\nfile 8192\npgfault 7\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 3\noom_kill 1\n",
        "pids.current": "2\n",
        "pids.max": "50\n",
        "io.stat": "8:16 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n",
    })  # fmt: skip


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(cid: str, ns: str = "default", **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({"container_id": cid, "namespace": ns, **more}.items())


def without_empty_families(text: str) -> str:
    """generate_latest's output without the HELP/TYPE of families that have no sample."""
    lines, out, i = text.splitlines(keepends=True), [], 0
    while i < len(lines):
        if lines[i].startswith("# HELP") and (i + 2 >= len(lines) or lines[i + 2][0] == "#"):
            i += 2
            continue
        out.append(lines[i])
        i += 1
    return "".join(out)


class _Readings:
    def __init__(self, readings: list[Reading]) -> None:
        self.readings = readings

    def collect(self) -> Any:
        return metrics_of(self.readings)


def test_v1_families_carry_containerds_names_labels_and_the_files_values(tmp_path: Path) -> None:
    reading = Reading("default", "c1", cgroups.v1_metrics(v1_tree(tmp_path)))
    got = samples(render([reading]))
    c1 = labels("c1")
    assert got[("container_cpu_total_nanoseconds", c1)] == 123456789
    assert got[("container_cpu_user_nanoseconds", c1)] == 10 * 10**9 // os.sysconf("SC_CLK_TCK")
    assert got[("container_per_cpu_nanoseconds", labels("c1", cpu="1"))] == 200
    assert got[("container_cpu_throttled_periods_total", c1)] == 1
    assert got[("container_cpu_throttled_time_nanoseconds", c1)] == 77
    assert got[("container_memory_cache_bytes", c1)] == 4096
    assert got[("container_memory_total_rss_bytes", c1)] == 8192
    assert got[("container_memory_pgfault_bytes", c1)] == 11
    assert got[("container_memory_usage_usage_bytes", c1)] == 12288
    assert got[("container_memory_usage_limit_bytes", c1)] == 67108864
    assert got[("container_memory_usage_max_bytes", c1)] == 20480
    assert got[("container_memory_oom_total", c1)] == 2
    assert got[("container_pids_current", c1)] == 4
    assert got[("container_pids_limit", c1)] == 0  # "max", as containerd reads it on v1
    read = labels("c1", op="Read", major="8", minor="0", device=reading.cgroup.blkio
                  .io_service_bytes_recursive[0].device)  # fmt: skip
    assert got[("container_blkio_io_service_bytes_recursive_bytes", read)] == 4096
    assert not any(name.startswith("container_io_") for name, _ in got)  # v2's are not here


def test_v2_families_carry_containerds_names_and_the_files_values(tmp_path: Path) -> None:
    got = samples(render([Reading("k8s.io", "c2", cgroups.v2_metrics(v2_tree(tmp_path)))]))
    c2 = labels("c2", "k8s.io")
    assert got[("container_cpu_usage_usec_microseconds", c2)] == 900
    assert got[("container_cpu_system_usec_microseconds", c2)] == 300
    assert got[("container_memory_usage_bytes", c2)] == 65536
    assert got[("container_memory_usage_limit_bytes", c2)] == float(2**64 - 1)  # "max"
    assert got[("container_memory_anon_bytes", c2)] == 4096
    assert got[("container_memory_oom_total", c2)] == 3
    assert got[("container_pids_limit", c2)] == 50
    assert got[("container_io_rbytes_bytes", labels("c2", "k8s.io", major="8", minor="16"))] == 1024
    assert got[("container_io_wios_total", labels("c2", "k8s.io", major="8", minor="16"))] == 4
    assert not any(name.startswith("container_blkio_") for name, _ in got)


def test_network_counters_per_interface_without_loopback() -> None:
    reading = Reading("default", "c1", cgroups.v2.Metrics(), containers.parse_net_dev(NET_DEV))
    got = samples(render([reading]))
    eth0 = labels("c1", interface="eth0")
    assert got[("container_network_receive_bytes_total", eth0)] == 5000
    assert got[("container_network_receive_packets_dropped_total", eth0)] == 2
    assert got[("container_network_transmit_packets_total", eth0)] == 30
    assert got[("container_network_transmit_errors_total", eth0)] == 3
    assert not any(dict(lbl).get("interface") == "lo" for _, lbl in got)


def test_render_writes_what_generate_latest_writes(tmp_path: Path) -> None:
    readings = [
        Reading("default", "c1", cgroups.v1_metrics(v1_tree(tmp_path / "a")),
                containers.parse_net_dev(NET_DEV)),
        # Label values the text format must escape: a quote, a backslash, a newline.
        Reading('odd"ns\\', "c\n2", cgroups.v1_metrics(v1_tree(tmp_path / "b"))),
    ]  # fmt: skip
    registry = CollectorRegistry()
    registry.register(_Readings(readings))
    expected = without_empty_families(generate_latest(registry).decode())
    assert render(readings) == expected
    assert samples(render(readings))[("container_pids_current", labels("c\n2", 'odd"ns\\'))] == 4


@dataclass
class _Task:
    namespace: str
    id: str
    pid: int
    dead: bool = False
    exits: dict[str, Any] = field(default_factory=dict)


def test_a_live_task_is_read_from_its_pids_cgroup_and_forgotten_once_gone() -> None:
    tasks = [_Task("default", "me", os.getpid()), _Task("default", "dead", os.getpid(), dead=True)]
    metrics = ContainerMetrics(lambda: tasks)
    [reading] = metrics.read()
    assert (reading.namespace, reading.id) == ("default", "me")
    own = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    where = cgroups.locate(own, Path("/proc/self/mountinfo").read_text())
    assert where is not None
    expected = (
        cgroups.v1_metrics(where.directories)
        if isinstance(where, cgroups.CgroupV1)
        else cgroups.v2_metrics(where.directory)
    )
    assert reading.cgroup.pids.current == expected.pids.current
    assert reading.network == ()  # the test runs in the host's network namespace
    tasks.pop(0)
    assert metrics.read() == []
    assert metrics._places == {}


def test_a_task_stopped_before_its_first_scrape_is_left_out() -> None:
    stopped = _Task("default", "s", os.getpid(), exits={"": object()})
    assert ContainerMetrics(lambda: [stopped]).read() == []
