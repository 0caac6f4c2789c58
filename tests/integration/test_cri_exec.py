"""The CRI's ExecSync on a test ctrd: output, exit codes, the cap, timeouts that leave nothing.

The container is a plain task of the CRI's namespace made with the real ctr and turned into a
CRI container by its record (the label and extension of `supervisor.cri.model`), so that these
tests need nothing of the sandboxes' and containers' parts.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from supervisor.api.containerd.services.containers.v1 import containers_pb2 as cpb
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc as cgrpc
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from supervisor.cri import model
from supervisor.cri.containers import ContainerRecord
from supervisor.cri.execsync import EXEC_PREFIX
from tests.conftest import Ctrd, ns_metadata
from tests.integration.test_tasks import pull, run, wait_for

pytestmark = pytest.mark.integration

NS = "k8s.io"
MIB = 1 << 20


def make_cri_container(ctrd: Ctrd, cid: str) -> None:
    """Give a container made by ctr the record a CRI container has (running)."""
    record = ContainerRecord(
        id=cid, name=f"{cid}_pod_default_uid_0", sandbox_id="0" * 64, config=b"",
        image="busybox", image_ref="sha256:" + "0" * 64, created_at=time.time_ns(),
        started_at=time.time_ns(),
    )  # fmt: skip
    container = cpb.Container(id=cid, labels={model.KIND_LABEL: model.KIND_CONTAINER})
    container.extensions[model.CONTAINER_EXTENSION].CopyFrom(
        any_pb2.Any(type_url=model.CONTAINER_TYPE_URL, value=record.to_json())
    )
    paths = [f"labels.{model.KIND_LABEL}", f"extensions.{model.CONTAINER_EXTENSION}"]
    cgrpc.ContainersStub(ctrd.channel).Update(
        cpb.UpdateContainerRequest(
            container=container, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=ns_metadata(NS),
    )


@pytest.fixture
def runtime(ctrd: Ctrd) -> Iterator[cri_grpc.RuntimeServiceStub]:
    """A CRI client taking answers as large as kubelet does (16 MiB)."""
    options = [("grpc.max_receive_message_length", 16 * MIB)]
    with grpc.insecure_channel(f"unix:{ctrd.address}", options=options) as channel:
        yield cri_grpc.RuntimeServiceStub(channel)


def exec_sync(runtime, cid: str, *cmd: str, timeout: int = 0) -> cri.ExecSyncResponse:
    request = cri.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout)
    return runtime.ExecSync(request, timeout=60)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def processes_named(word: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if word.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_exec_sync_answers_output_and_exit_codes_and_caps_output(ctrd, busybox_image, runtime):
    ref = pull(ctrd, busybox_image, ns=NS)
    run(ctrd, "-d", ref, "e1", "sleep", "3600", ns=NS)
    make_cri_container(ctrd, "e1")

    done = exec_sync(runtime, "e1", "echo", "-n", "hello")
    assert (done.stdout, done.stderr, done.exit_code) == (b"hello", b"", 0)
    done = exec_sync(runtime, "e", "sh", "-c", "echo oops >&2; exit 3")  # a unique prefix
    assert (done.stdout, done.stderr, done.exit_code) == (b"", b"oops\n", 3)
    done = exec_sync(runtime, "e1", "sh", "-c", "id -u; pwd; echo $PATH")  # the container's
    assert done.stdout.decode().split() == ["0", "/", "/usr/local/sbin:/usr/local/bin:"
                                            "/usr/sbin:/usr/bin:/sbin:/bin"]  # fmt: skip

    done = exec_sync(runtime, "e1", "sh", "-c", "head -c 20971520 /dev/zero; echo end >&2")
    assert (done.exit_code, done.stderr) == (0, b"end\n")
    assert 15 * MIB < len(done.stdout) <= 16 * MIB  # capped (and fitted into one message)
    assert set(done.stdout) == {0}

    timings = []
    for _ in range(15):
        started = time.perf_counter()
        assert exec_sync(runtime, "e1", "true").exit_code == 0
        timings.append(time.perf_counter() - started)
    print(f"ExecSync true: median {statistics.median(timings) * 1000:.1f} ms")

    assert code_of(lambda: exec_sync(runtime, "nope", "true")) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:  # nothing to run: the runtime's words
        exec_sync(runtime, "e1", "/no/such/binary")
    assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert "no such file or directory" in (e.value.details() or "")
    tasks = ctrd.ctr("tasks", "ps", "e1", ns=NS).stdout
    assert EXEC_PREFIX not in tasks  # every exec deleted
    assert not list((ctrd.state / "cri" / "exec").iterdir())  # every FIFO removed


def test_exec_sync_past_its_timeout_is_killed_and_leaves_nothing(ctrd, busybox_image, runtime):
    ref = pull(ctrd, busybox_image, ns=NS)
    run(ctrd, "-d", ref, "e2", "sleep", "3600", ns=NS)
    make_cri_container(ctrd, "e2")

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        exec_sync(runtime, "e2", "sleep", "4321", timeout=1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout 1s exceeded" in (e.value.details() or "")
    assert time.monotonic() - started < 5
    assert processes_named("4321") == []  # no sleep survives
    assert EXEC_PREFIX not in ctrd.ctr("tasks", "ps", "e2", ns=NS).stdout
    assert not list((ctrd.state / "cri" / "exec").iterdir())

    # kubelet gives up first (its call's deadline): the exec is killed and deleted all the same
    request = cri.ExecSyncRequest(container_id="e2", cmd=["sleep", "4322"])
    with pytest.raises(grpc.RpcError) as e:
        runtime.ExecSync(request, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: processes_named("4322") == [], timeout=5)
    wait_for(lambda: EXEC_PREFIX not in ctrd.ctr("tasks", "ps", "e2", ns=NS).stdout)
    wait_for(lambda: not list((ctrd.state / "cri" / "exec").iterdir()))

    ctrd.ctr("tasks", "kill", "-s", "KILL", "e2", ns=NS)
    # seen dead: STOPPED, or already deleted by the containers part, which the exec's lookup
    # loaded (it deletes a CRI container's task when it exits, as containerd's CRI does)
    wait_for(
        lambda: (
            not [
                line
                for line in ctrd.ctr("tasks", "ls", ns=NS).stdout.splitlines()
                if line.split()[:1] == ["e2"] and "RUNNING" in line
            ]
        )
    )
    call = lambda: exec_sync(runtime, "e2", "true")  # noqa: E731
    assert code_of(call) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.details() == "container is in CONTAINER_EXITED state"
