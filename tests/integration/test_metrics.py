"""/v1/metrics with real containers: the containers' families hold what their cgroup files
and Tasks.Metrics hold, for exactly the tasks that exist, read by prometheus_client's own
text parser; and the endpoint is off unless configured."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Ctrd
from tests.support.registry import PushedImage

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MEMORY_LIMIT = 64 << 20


@pytest.fixture
def metrics_ctrd(short_tmp: Path) -> Iterator[Ctrd]:
    """A daemon serving /v1/metrics on a loopback port the kernel picks."""
    table = f"ctrdt{os.getpid()}_m"
    config = short_tmp / "metrics.toml"
    config.write_text(f'[network]\nnft_table = "{table}"\n\n[metrics]\naddress = "127.0.0.1:0"\n')
    daemon = Ctrd(short_tmp, ("--config", str(config)))
    daemon.nft_table = table  # removed by cleanup
    daemon.start()
    readers: list[int] = []
    try:
        yield daemon
        readers = reader_pids(daemon)
    finally:
        status = daemon.stop()
        daemon.cleanup()
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]
    assert "metrics_reader_failed" not in daemon.log()
    assert not [pid for pid in readers if Path(f"/proc/{pid}").exists()]  # ended with it


def reader_pids(ctrd: Ctrd) -> list[int]:
    """The daemon's metrics reader processes (supervisor.metrics.reader)."""
    assert ctrd.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == ctrd.proc.pid and b"supervisor.metrics.reader" in argv:
            found.append(int(entry.name))
    return found


def metrics_url(ctrd: Ctrd) -> str:
    """The endpoint's address, from the daemon's `metrics_serving` log line (it follows
    `ctrd_started`: the endpoint starts once the daemon serves)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in reversed(ctrd.log().splitlines()):
            if "metrics_serving" in line:
                return f"http://{json.loads(line)['address']}/v1/metrics"
        time.sleep(0.05)
    pytest.fail(f"no metrics_serving in the log:\n{ctrd.log()[-3000:]}")


def scrape(ctrd: Ctrd) -> Samples:
    with urllib.request.urlopen(metrics_url(ctrd), timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def containers_in(samples: Samples) -> set[tuple[str, str]]:
    return {
        (labels["namespace"], labels["container_id"])
        for _, label_set in samples
        if "container_id" in (labels := dict(label_set))
    }


def cgroup_dir(ns: str, cid: str, controller: str) -> Path:
    """The container's cgroup (ctr's default path /<ns>/<id>) for a v1 controller, or its
    unified directory."""
    v1 = Path("/sys/fs/cgroup") / controller / ns / cid
    return v1 if v1.is_dir() else Path("/sys/fs/cgroup") / ns / cid


def number(path: Path, key: str | None = None) -> int:
    text = path.read_text()
    if key is None:
        return 2**64 - 1 if text.strip() == "max" else int(text)
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}[key]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_scrape_holds_each_running_containers_cgroup_numbers(
    metrics_ctrd: Ctrd, busybox_image: PushedImage
) -> None:
    ctrd = metrics_ctrd
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref, ns="other")
    a, b = f"m{os.getpid()}a", f"m{os.getpid()}b"
    # a: 4 MiB in its /dev/shm (charged to its memory cgroup), then idle; b: elsewhere, idle.
    ctrd.ctr("run", "-d", "--fifo-dir", ctrd.fifo_dir(), "--memory-limit", str(MEMORY_LIMIT),
             busybox_image.ref, a, "sh", "-c",
             "head -c 4194304 /dev/zero > /dev/shm/f && exec sleep 1000")  # fmt: skip
    ctrd.ctr("run", "-d", "--fifo-dir", ctrd.fifo_dir(), busybox_image.ref, b, "sleep", "1000",
             ns="other")  # fmt: skip
    memory = cgroup_dir("default", a, "memory")
    v1 = (memory / "memory.usage_in_bytes").exists()
    shmem_key = "total_shmem" if v1 else "shmem"
    pids = cgroup_dir("default", a, "pids") / "pids.current"
    # Written, and `head` gone: the sleep is the container's one process from now on.
    wait_for(lambda: number(memory / "memory.stat", shmem_key) >= 4 << 20 and number(pids) == 1)
    cpu_file = (
        (cgroup_dir("default", a, "cpuacct") / "cpuacct.usage", None)
        if v1
        else (memory / "cpu.stat", "usage_usec")
    )

    cpu_before = number(*cpu_file)
    samples = scrape(ctrd)
    cpu_after = number(*cpu_file)
    assert reader_pids(ctrd)  # the scrape was made by the daemon's reader processes

    assert containers_in(samples) == {("default", a), ("other", b)}
    at_a = frozenset({"container_id": a, "namespace": "default"}.items())
    assert samples[("container_pids_current", at_a)] == number(pids) == 1  # sleep alone
    if v1:
        cpu = samples[("container_cpu_total_nanoseconds", at_a)]
        limit = number(memory / "memory.limit_in_bytes")
        shmem = number(memory / "memory.stat", shmem_key)
        assert samples[("container_memory_usage_limit_bytes", at_a)] == limit == MEMORY_LIMIT
        assert samples[("container_memory_total_cache_bytes", at_a)] >= shmem >= 4 << 20
    else:
        cpu = samples[("container_cpu_usage_usec_microseconds", at_a)]
        limit = number(memory / "memory.max")
        shmem = number(memory / "memory.stat", shmem_key)
        assert samples[("container_memory_usage_limit_bytes", at_a)] == limit == MEMORY_LIMIT
        assert samples[("container_memory_shmem_bytes", at_a)] == shmem >= 4 << 20
    assert cpu_before <= cpu <= cpu_after

    # The same numbers as Tasks.Metrics gives `ctr tasks metrics`.
    rpc = json.loads(ctrd.ctr("tasks", "metrics", "--format", "json", a).stdout)
    data = rpc.get("Data", rpc)
    if v1:
        assert data["memory"]["usage"]["limit"] == MEMORY_LIMIT
    else:
        assert data["memory"]["usage_limit"] == MEMORY_LIMIT
    assert data["pids"]["current"] == samples[("container_pids_current", at_a)]

    # A deleted task leaves the scrape; a stopped one stays until then, as containerd's.
    ctrd.ctr("tasks", "kill", "-s", "KILL", b, ns="other")
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls", ns="other").stdout)
    assert ("other", b) in containers_in(scrape(ctrd))
    ctrd.ctr("tasks", "delete", b, ns="other")
    assert containers_in(scrape(ctrd)) == {("default", a)}

    ctrd.ctr("tasks", "kill", "-s", "KILL", a)
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
    ctrd.ctr("tasks", "delete", a)
    assert containers_in(scrape(ctrd)) == set()


def test_only_v1_metrics_is_served(metrics_ctrd: Ctrd) -> None:
    url = metrics_url(metrics_ctrd)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace("/v1/metrics", "/metrics"), timeout=10)
    refused.value.close()
    assert refused.value.code == 404


def test_a_non_loopback_address_stops_the_start_in_plain_words(short_tmp: Path) -> None:
    config = short_tmp / "remote.toml"
    config.write_text('[metrics]\naddress = "0.0.0.0:1338"\n')
    daemon = Ctrd(short_tmp, ("--config", str(config)))
    out = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "allow_remote" in out.stdout + out.stderr
    assert not Path(daemon.address).exists()
