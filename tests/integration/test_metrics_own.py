"""ctrd's own metrics and the gRPC server's on /v1/metrics: each family is served, and moves
when its thing happens (an RPC, a pull, a push, a run, an exit while the daemon was down, a GC
run), read through prometheus_client's own text parser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.conftest import Ctrd, ns_metadata
from tests.support import images
from tests.support import registry as test_registry
from tests.support.registry import PushedImage

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TASKS = "containerd.services.tasks.v1.Tasks"


class Scraper:
    def __init__(self, ctrd: Ctrd) -> None:
        self.ctrd = ctrd

    def url(self) -> str:
        """The endpoint's address, from the daemon's `metrics_serving` log line (port 0),
        which follows `ctrd_started` (the endpoint starts once the daemon serves)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in reversed(self.ctrd.log().splitlines()):
                if "metrics_serving" in line:
                    return f"http://{json.loads(line)['address']}/v1/metrics"
            time.sleep(0.05)
        pytest.fail(f"no metrics_serving in the log:\n{self.ctrd.log()[-3000:]}")

    def __call__(self) -> Samples:
        with urllib.request.urlopen(self.url(), timeout=10) as answer:
            text = answer.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def blob_bytes(image: PushedImage) -> int:
    """The config's and the layers' bytes (what a pull fetches beside the manifest)."""
    assert isinstance(image.image, images.Image)
    return sum(len(data) for data in image.image.blobs.values())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def ctrctl(ctrd: Ctrd, *args: str, fails: bool = False) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode != 0) == fails, f"ctrctl {args}: {done.stderr}\n{ctrd.log()[-3000:]}"
    return done.stdout


def eventually(check: Callable[[], bool], timeout: float = 8.0) -> None:
    """Database figures are cached for a few seconds: wait for the next refresh."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the figure never changed"
        time.sleep(0.25)


@pytest.fixture
def served(short_tmp: Path) -> Iterator[tuple[Ctrd, Scraper]]:
    """A ctrd serving /v1/metrics on a loopback port of the kernel's choice."""
    table = f"ctrdt{os.getpid()}_{next(Ctrd._tables)}"
    config = short_tmp / "metrics.toml"
    config.write_text(f'[network]\nnft_table = "{table}"\n\n[metrics]\naddress = "127.0.0.1:0"\n')
    daemon = Ctrd(short_tmp, ("--config", str(config)))
    daemon.nft_table = table  # removed by cleanup
    daemon.start()
    try:
        yield daemon, Scraper(daemon)
    finally:
        status = daemon.stop()
        daemon.cleanup()
    assert status == 0, daemon.log()[-5000:]
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]


def test_own_and_grpc_families_move_with_what_happens(
    served: tuple[Ctrd, Scraper], busybox_image: PushedImage
) -> None:
    ctrd, scrape = served
    size = blob_bytes(busybox_image)
    before = scrape()
    create = {"grpc_type": "unary", "grpc_service": TASKS, "grpc_method": "Create"}
    assert (("grpc_server_started_total", frozenset(create.items()))) in before  # at zero
    assert value(before, "ctrd_shims_alive") == 0

    ctrctl(ctrd, "pull", busybox_image.ref)
    with test_registry.Registry() as other:
        ctrctl(ctrd, "push", busybox_image.ref, f"{other.host}/m2/busybox:v1")
    nowhere = "127.0.0.1:1/m2/busybox:v1"  # nothing listens on port 1
    ctrctl(ctrd, "pull", nowhere, fails=True)
    ctrctl(ctrd, "push", busybox_image.ref, nowhere, fails=True)
    ctrctl(ctrd, "run", "-d", "--name", "m2", busybox_image.ref, "sleep", "1000")
    stub = tasks_pb2_grpc.TasksStub(ctrd.channel)
    with pytest.raises(grpc.RpcError) as missing:
        stub.Get(tasks_pb2.GetRequest(container_id="nothing"), metadata=ns_metadata())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape()

    # gRPC, per service and method, in go-grpc-prometheus' names and codes
    assert moved(before, after, "grpc_server_started_total", **create) == 1
    assert moved(before, after, "grpc_server_handled_total", grpc_code="OK", **create) == 1
    assert moved(before, after, "grpc_server_handling_seconds_count", **create) == 1
    get = {"grpc_type": "unary", "grpc_service": TASKS, "grpc_method": "Get"}
    assert moved(before, after, "grpc_server_handled_total", grpc_code="NotFound", **get) == 1
    # the run: created and started, each step timed, its shim and task in the daemon's table
    assert moved(before, after, "ctrd_task_creates_total", result="ok") == 1
    assert moved(before, after, "ctrd_task_starts_total", result="ok") == 1
    for step in ("snapshot", "bundle", "shim", "network", "create", "start"):
        assert moved(before, after, "ctrd_task_start_step_seconds_count", step=step) == 1, step
    assert value(after, "ctrd_shims_alive") == 1
    assert value(after, "ctrd_tasks", namespace="default", state="running") == 1
    assert moved(before, after, "ctrd_events_published_total", topic="/tasks/start") == 1
    # the pull and the push, by ctrd itself
    assert moved(before, after, "ctrd_image_pulls_total", result="ok") == 1
    assert moved(before, after, "ctrd_image_pull_bytes_total") >= size
    assert moved(before, after, "ctrd_image_pushes_total", result="ok") == 1
    assert moved(before, after, "ctrd_image_push_bytes_total") >= size
    assert moved(before, after, "ctrd_image_pulls_total", result="error") == 1
    assert moved(before, after, "ctrd_image_pushes_total", result="error") == 1
    # what the databases hold, once the cached figures are read again
    net = {"namespace": "default", "network": "bridge"}
    eventually(lambda: value(scrape(), "ctrd_network_endpoints", **net) == 1)
    stored = scrape()
    assert value(stored, "ctrd_network_addresses_in_use", **net) == 1
    assert value(stored, "ctrd_content_bytes") >= size
    assert value(stored, "ctrd_images", namespace="default") == 1
    assert value(stored, "ctrd_snapshots", snapshotter="overlayfs", kind="active") == 1
    assert value(stored, "ctrd_snapshot_committed_bytes", snapshotter="overlayfs") > 0
    assert value(stored, "ctrd_event_journal_events") > 0

    # an exit while the daemon is down is recovered from the shim's journal at its start
    pid = stub.Get(tasks_pb2.GetRequest(container_id="m2"), metadata=ns_metadata()).process.pid
    assert ctrd.stop() == 0
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)  # the shim journals the exit
    ctrd.start()
    restarted = scrape()
    assert value(restarted, "ctrd_task_exits_recovered_total") == 1
    assert value(restarted, "ctrd_tasks", namespace="default", state="stopped") == 1

    # what the collector removes once the container and the image are gone
    ctrctl(ctrd, "rm", "m2")
    ctrd.ctr("images", "rm", "--sync", busybox_image.ref)
    collected = scrape()
    assert moved(restarted, collected, "ctrd_gc_runs_total") >= 1
    assert moved(restarted, collected, "ctrd_gc_duration_seconds_count") >= 1
    assert moved(restarted, collected, "ctrd_gc_removed_total", kind="blobs") >= 1
    assert moved(restarted, collected, "ctrd_gc_freed_content_bytes_total") >= size
    assert value(collected, "ctrd_shims_alive") == 0
