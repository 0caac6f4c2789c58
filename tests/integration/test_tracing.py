"""OpenTelemetry tracing: a `ctr run --rm`'s spans reach an OTLP receiver, from each RPC down to
the shim and the runtime command it ran, in one trace per RPC; nothing is sent when off."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Ctrd
from tests.support.otlp import Receiver, Span
from tests.support.registry import PushedImage

pytestmark = pytest.mark.integration

CREATE = "containerd.services.tasks.v1.Tasks/Create"
START = "containerd.services.tasks.v1.Tasks/Start"


@pytest.fixture(autouse=True)
def _export_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's batch delay (5 s by default), by its own variable, which the daemon inherits."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


def _daemon(base: Path, tracing: str) -> Ctrd:
    config = base / "tracing.toml"
    config.write_text(f"[tracing]\n{tracing}")
    daemon = Ctrd(base, ("--config", str(config)))
    daemon.start()
    return daemon


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    made = Receiver()
    made.start_grpc() if request.param == "grpc" else made.start_http()
    try:
        yield made
    finally:
        made.stop()


def _run_rm(daemon: Ctrd, image: PushedImage, name: str) -> None:
    daemon.ctr("images", "pull", "--plain-http", image.ref)
    out = daemon.ctr("run", "--rm", "--fifo-dir", daemon.fifo_dir(), image.ref, name, "echo", "hi")
    assert out.stdout == "hi\n"


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


@pytest.mark.parametrize("receiver", ["http/protobuf", "grpc"], indirect=True)
def test_a_runs_spans_reach_the_collector_from_the_rpc_down_to_the_shim_and_runc(
    short_tmp, busybox_image, receiver
):
    protocol = "grpc" if "://" not in receiver.endpoint else "http/protobuf"
    settings = f'endpoint = "{receiver.endpoint}"\nprotocol = "{protocol}"\ninsecure = true\n'
    daemon = _daemon(short_tmp, settings + 'service_name = "ctrd-under-test"\n')
    try:
        _run_rm(daemon, busybox_image, "traced")
        spans = receiver.wait_for(
            lambda got: (
                {CREATE, START} <= {s.name for s in got}
                and any(s.name == "runc create" for s in got)
            )
        )
    finally:
        status = daemon.stop()
        daemon.cleanup()
    assert status == 0, daemon.log()
    for sign in ("Traceback", "Failed to detach", "Exception while exporting"):
        assert sign not in daemon.log(), daemon.log()[-5000:]

    create = next(s for s in spans if s.name == CREATE)
    assert create.service == "ctrd-under-test"
    assert create.parent_id == ""  # ctr sends no trace context: each RPC begins a trace
    assert create.kind == 2  # SERVER
    assert create.attributes["rpc.system"] == "grpc"
    assert create.attributes["rpc.method"] == "Create"
    assert create.attributes["rpc.grpc.status_code"] == 0
    # The steps of the start, under the RPC; the shim's call under them, carrying the context
    # to the shim, whose own handling and runc's command come back as spans under that call.
    steps = {s.name for s in _children(spans, create)}
    assert {"task.bundle", "task.shim", "task.create"} <= steps, steps
    create_step = next(s for s in _children(spans, create) if s.name == "task.create")
    shim_call = next(s for s in _children(spans, create_step) if s.name == "shim create")
    assert shim_call.attributes["ctrd.shim"] == "default/traced"
    handled = next(s for s in _children(spans, shim_call) if s.name == "shim.create")
    runc = next(s for s in _children(spans, shim_call) if s.name == "runc create")
    assert shim_call.start_ns <= handled.start_ns <= runc.start_ns < runc.end_ns
    assert runc.end_ns <= handled.end_ns <= shim_call.end_ns
    assert create.start_ns <= create_step.start_ns <= create_step.end_ns <= create.end_ns

    start = next(s for s in spans if s.name == START)
    assert "task.start" in {s.name for s in _children(spans, start)}
    # Calls that failed say so (ctr asks for a container that is not there first).
    assert all(s.attributes.get("rpc.grpc.status_code") is not None for s in spans if "/" in s.name)


def test_an_rpc_continues_the_callers_trace(short_tmp, receiver_http):
    import grpc
    from google.protobuf import empty_pb2

    from supervisor.api.containerd.services.version.v1 import version_pb2_grpc

    daemon = _daemon(short_tmp, f'endpoint = "{receiver_http.endpoint}"\n')
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        with grpc.insecure_channel(f"unix:{daemon.address}") as channel:
            version_pb2_grpc.VersionStub(channel).Version(
                empty_pb2.Empty(), metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),)
            )
        spans = receiver_http.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    finally:
        assert daemon.stop() == 0, daemon.log()
        daemon.cleanup()
    version = next(s for s in spans if s.trace_id == trace_id)
    assert (version.name, version.parent_id) == (
        "containerd.services.version.v1.Version/Version",
        parent,
    )


def test_nothing_is_sent_or_imported_when_tracing_is_off(short_tmp, busybox_image, receiver_http):
    daemon = Ctrd(short_tmp)  # no [tracing] endpoint
    daemon.start()
    try:
        _run_rm(daemon, busybox_image, "untraced")
        time.sleep(0.5)
    finally:
        assert daemon.stop() == 0, daemon.log()
        daemon.cleanup()
    assert receiver_http.spans == []
    # What a daemon imports to serve and run tasks, with tracing off: no OpenTelemetry.
    probe = (
        "import sys, supervisor.main, supervisor.server, supervisor.services.tasks;"
        "from supervisor import config, server;"
        "assert server.start_tracing(config.Config()) is None;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


@pytest.fixture
def receiver_http() -> Iterator[Receiver]:
    made = Receiver().start_http()
    try:
        yield made
    finally:
        made.stop()
