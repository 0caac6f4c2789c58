"""Health checks in the daemon: containers labelled `ctrd.io/healthcheck` (here by the real
ctr, `--label`), checked through their shims with docker's rules, kept across restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc

from supervisor.api.containerd.events import task_pb2 as task_events
from supervisor.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from supervisor.api.ctrd.services.events.v1 import log_pb2, log_pb2_grpc
from supervisor.api.ctrd.services.health.v1 import health_pb2, health_pb2_grpc
from supervisor.events import unpack
from tests.conftest import Ctrd, ns_metadata
from tests.integration.test_tasks import pull, run

MS = 1_000_000


def label(test: list[str], **timings: int) -> str:
    return "ctrd.io/healthcheck=" + json.dumps({"test": test, **timings})


def health(ctrd: Ctrd, cid: str) -> Any:
    stub = ctrd.stub(health_pb2_grpc.HealthStub)
    request = health_pb2.GetHealthRequest(container_id=cid)
    return stub.Get(request, metadata=ns_metadata(), timeout=5).health


def wait_for(what: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = what()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.05)


def status_is(ctrd: Ctrd, cid: str, status: str) -> Callable[[], Any]:
    def check() -> Any:
        found = health(ctrd, cid)
        return found if found.status == status else None

    return check


def health_events(ctrd: Ctrd) -> list[tuple[str, str, str]]:
    stub = ctrd.stub(log_pb2_grpc.EventLogStub)
    request = log_pb2.ReplayRequest(filters=['topic=="/containers/health"'], follow=False)
    out = []
    for logged in stub.Replay(request, timeout=10):
        event = unpack(logged.envelope.event)
        out.append((event.container_id, event.status, event.action))
    return out


def probes_running(ctrd: Ctrd, marker: str) -> list[int]:
    """Pids of processes whose command line holds `marker` (the probes of a test)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_labelled_container_turns_healthy_then_unhealthy_with_events(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    check = label(["CMD-SHELL", "cat /tmp/ok"], interval=150 * MS, retries=2)
    run(ctrd, "-d", "--label", check, ref, "c1", "sh", "-c", "echo fine > /tmp/ok; sleep 1000")
    healthy = wait_for(status_is(ctrd, "c1", "healthy"))
    assert healthy.failing_streak == 0
    assert healthy.log[-1].exit_code == 0
    assert healthy.log[-1].output == "fine\n"
    assert healthy.log[-1].end.ToNanoseconds() >= healthy.log[-1].start.ToNanoseconds()
    run(ctrd, "--rm", ref, "noop", "true")  # other containers are not checked
    forged = events_pb2.PublishRequest(topic="/tasks/exit")
    forged.event.Pack(task_events.TaskExit(container_id="c1", id="c1", exit_status=1))
    ctrd.stub(events_pb2_grpc.EventsStub).Publish(forged, metadata=ns_metadata(), timeout=5)
    last = health(ctrd, "c1").log[-1].start.ToNanoseconds()
    wait_for(lambda: health(ctrd, "c1").log[-1].start.ToNanoseconds() > last)  # checks go on
    ctrd.ctr("tasks", "exec", "--exec-id", "rm1", "c1", "rm", "/tmp/ok")
    unhealthy = wait_for(status_is(ctrd, "c1", "unhealthy"))
    assert unhealthy.failing_streak == 2
    assert unhealthy.log[-1].exit_code == 1
    assert "No such file" in unhealthy.log[-1].output
    time.sleep(1.2)  # more results than the log keeps
    assert len(health(ctrd, "c1").log) == 5
    assert health_events(ctrd) == [
        ("c1", "healthy", "health_status: healthy"),
        ("c1", "unhealthy", "health_status: unhealthy"),
    ]
    ctrd.ctr("tasks", "delete", "--force", "c1")  # killed, waited for, deleted
    ctrd.ctr("containers", "delete", "c1")
    with_code = None
    try:
        health(ctrd, "c1")
    except grpc.RpcError as e:
        with_code = e.code()
    assert with_code == grpc.StatusCode.NOT_FOUND


def test_a_probe_past_its_timeout_is_killed_and_fails_in_dockers_words(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    check = label(["CMD", "sleep", "31.25"], interval=100 * MS, timeout=300 * MS, retries=1)
    run(ctrd, "-d", "--label", check, ref, "slow", "sleep", "1000")
    unhealthy = wait_for(status_is(ctrd, "slow", "unhealthy"))
    [result] = unhealthy.log
    assert (result.exit_code, result.output) == (-1, "Health check exceeded timeout (300ms)")
    took = (result.end.ToNanoseconds() - result.start.ToNanoseconds()) / 1e9
    assert 0.3 <= took < 2
    time.sleep(0.2)
    assert len(probes_running(ctrd, "31.25")) <= 1  # the timed-out one is gone; the next runs
    ctrd.ctr("tasks", "delete", "--force", "slow")  # killed, waited for, deleted
    assert probes_running(ctrd, "31.25") == []


def test_failures_in_the_start_period_do_not_count(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    check = label(["CMD", "false"], interval=100 * MS, start_period=60_000 * MS, retries=1)
    run(ctrd, "-d", "--label", check, ref, "boot", "sleep", "1000")
    wait_for(lambda: len(health(ctrd, "boot").log) >= 3)
    starting = health(ctrd, "boot")
    assert (starting.status, starting.failing_streak) == ("starting", 0)
    assert {r.exit_code for r in starting.log} == {1}


def test_checks_go_on_after_a_restart_and_no_probe_outlives_its_container(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    check = label(["CMD-SHELL", "test -e /tmp/ok && sleep 0.0731"], interval=100 * MS, retries=1)
    run(ctrd, "-d", "--label", check, ref, "kept", "sh", "-c", "touch /tmp/ok; sleep 1000")
    before = wait_for(status_is(ctrd, "kept", "healthy"))
    ctrd.stop(signal.SIGKILL)
    ctrd.start()
    after = health(ctrd, "kept")  # the state came back as it was
    assert after.status == "healthy"
    assert after.log[0].start == before.log[0].start
    assert after.started_at == before.started_at
    ctrd.ctr("tasks", "exec", "--exec-id", "rm1", "kept", "rm", "/tmp/ok")
    unhealthy = wait_for(status_is(ctrd, "kept", "unhealthy"))
    assert unhealthy.failing_streak == 1
    assert [e[1] for e in health_events(ctrd)] == ["healthy", "unhealthy"]
    ctrd.ctr("tasks", "exec", "--exec-id", "back", "kept", "touch", "/tmp/ok")
    wait_for(lambda: probes_running(ctrd, "0.0731"), timeout=10)  # a probe is running
    ctrd.ctr("tasks", "delete", "--force", "kept")  # killed, waited for, deleted
    time.sleep(0.3)
    assert probes_running(ctrd, "0.0731") == []
    count = len(health(ctrd, "kept").log)
    time.sleep(0.4)
    assert len(health(ctrd, "kept").log) == count  # no more probes


def test_a_daemon_stopping_mid_probe_deletes_the_probe_and_stops_at_once(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    check = label(["CMD", "sleep", "42.125"], interval=100 * MS, timeout=60_000 * MS)
    run(ctrd, "-d", "--label", check, ref, "busy", "sleep", "1000")
    wait_for(lambda: probes_running(ctrd, "42.125"))
    started = time.monotonic()
    assert ctrd.stop() == 0
    assert time.monotonic() - started < 5
    assert probes_running(ctrd, "42.125") == []  # killed and deleted, the container kept
    ctrd.start()
    assert health(ctrd, "busy").status == "starting"
    wait_for(lambda: probes_running(ctrd, "42.125"))  # and the checks go on
    ctrd.ctr("tasks", "kill", "-s", "KILL", "busy")
