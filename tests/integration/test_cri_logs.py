"""CRI logs kept by the shim (`ctrd-log:///path?format=cri`) for real containers, and their
reopening after kubelet's rename (`TaskManager.reopen_log`), also after ctrd was SIGKILLed.

The containers are made with the real ctr (`--log-uri`); the reopening is asked of a
`TaskManager` on the killed daemon's state dir, as a restarted daemon takes the shims back.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import time
from pathlib import Path

import grpc
import pytest

from supervisor import errors
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.events import Exchange
from supervisor.runtime.manager import TaskManager
from tests.conftest import Ctrd
from tests.integration import test_cri_containers
from tests.integration.test_cri_containers import IMAGE, container_config, create, make_pod, status
from tests.integration.test_tasks import pull, run, wait_for
from tests.support.tasks import Api

pytestmark = pytest.mark.integration
cri_ctrd = test_cri_containers.cri_ctrd  # a test ctrd whose CRI mirrors reach the registry
cric_image = test_cri_containers.cric_image

RECORD = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{0,8}[1-9])?Z) (stdout|stderr) ([PF]) (.*)"
)


def records(path: Path) -> list[tuple[str, str, bytes]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    out = []
    for line in data.split(b"\n")[:-1]:
        match = RECORD.fullmatch(line)
        assert match, line[:200]
        out.append((match[2].decode(), match[3].decode(), match[4]))
    return out


def lines(path: Path, stream: str) -> list[bytes]:
    """A stream's lines, its P records joined to the F that ends each."""
    joined, current = [], b""
    for name, tag, content in records(path):
        if name == stream:
            current += content
            if tag == "F":
                joined.append(current)
                current = b""
    assert current == b"", "a line left unfinished"
    return joined


def stopped(ctrd: Ctrd, cid: str) -> bool:
    listed = ctrd.ctr("tasks", "ls").stdout.splitlines()
    return any(line.split()[0] == cid and "STOPPED" in line for line in listed[1:])


def cri_uri(path: Path) -> str:
    return f"ctrd-log://{path}?format=cri"


def test_a_containers_both_streams_become_cri_records_long_lines_split(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    log = ctrd.base / "pods" / "ns_pod_uid" / "app" / "0.log"  # directories made
    script = (
        "echo short-out; echo short-err >&2;"
        "head -c 40000 /dev/zero | tr '\\0' a; echo;"
        "head -c 20000 /dev/zero | tr '\\0' b >&2; echo >&2;"
        "printf 'crlf\\r\\n'; echo; printf no-newline"
    )
    run(ctrd, "-d", "--log-uri", cri_uri(log), ref, "c1", "sh", "-c", script)
    wait_for(lambda: stopped(ctrd, "c1"))
    assert lines(log, "stdout") == [b"short-out", b"a" * 40000, b"crlf", b"", b"no-newline"]
    assert lines(log, "stderr") == [b"short-err", b"b" * 20000]
    got = records(log)
    assert all(len(c) == 16384 for _, tag, c in got if tag == "P")
    assert [tag for s, tag, c in got if c.startswith(b"a")] == ["P", "P", "F"]
    assert got[-1] == ("stdout", "F", b"no-newline")  # the end of output is a full record
    assert stat.S_IMODE(log.stat().st_mode) == 0o640


def test_a_terminals_output_is_one_stdout_stream_its_crlf_stripped(ctrd, busybox_image):
    with Api(ctrd, "default", busybox_image.ref) as api:
        script = "echo out; echo err >&2; printf end"
        api.container("tty", "sh", "-c", script, edit=lambda s: s["process"].update(terminal=True))
        log = api.dir / "tty" / "0.log"
        api.create("tty", stdout=cri_uri(log), stderr=cri_uri(log), terminal=True)
        api.start("tty")
        assert api.wait("tty").exit_status == 0
        api.delete("tty")
        assert records(log) == [
            ("stdout", "F", b"out"), ("stdout", "F", b"err"), ("stdout", "F", b"end"),
        ]  # fmt: skip


def test_reopen_follows_a_rename_and_refuses_a_stopped_task_also_after_sigkill(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    logs = ctrd.base / "logs"
    live, gone = logs / "live" / "0.log", logs / "gone" / "0.log"
    ticking = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.02; done"
    run(ctrd, "-d", "--log-uri", cri_uri(live), ref, "live", "sh", "-c", ticking)
    run(ctrd, "-d", "--log-uri", cri_uri(gone), ref, "gone", "true")
    wait_for(lambda: stopped(ctrd, "gone") and live.exists() and live.stat().st_size > 0)
    gone.unlink()

    ctrd.stop(signal.SIGKILL)  # the shims keep running; the restarted daemon takes them back

    async def restarted() -> None:
        manager = TaskManager(ctrd.state, ctrd.address, Exchange())
        await manager.load()
        manager.serving()
        try:
            for n in range(2):  # kubelet rotates the same path again and again
                rotated = live.with_name(f"0.log.2026120{n}-000000")
                os.rename(live, rotated)
                await manager.reopen_log("default", "live")
                assert live.exists()
                size = rotated.stat().st_size
                await asyncio.sleep(0.3)
                assert rotated.stat().st_size == size  # the renamed file stops growing
                assert live.stat().st_size > 0  # new records go to the path
                assert stat.S_IMODE(live.stat().st_mode) == 0o640
            for cid in ("gone", "absent"):
                with pytest.raises(errors.FailedPrecondition) as e:
                    await manager.reopen_log("default", cid)
                assert str(e.value) == "container is not running"
            assert not gone.exists()  # no file made for a stopped container
        finally:
            await manager.stop()

    asyncio.run(restarted())
    ticks = [int(c.split(b"-")[1]) for name in sorted(os.listdir(live.parent))
             for _, _, c in records(live.parent / name)]  # fmt: skip
    assert sorted(ticks) == list(range(1, max(ticks) + 1))  # nothing lost around a reopen
    ctrd.start()  # the fixture's daemon, to stop as usual


def test_crictl_exec_logs_and_kubelets_rotation_also_after_a_sigkill(
    cri_ctrd, cric_image, short_tmp
):
    """End to end with the sandboxes' and containers' parts: crictl exec --sync, crictl logs,
    and the rotation kubelet does (rename, ReopenContainerLog), before and after ctrd is
    SIGKILLed and started again."""
    c = cri_ctrd
    c.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE)), timeout=60)
    pod = make_pod(c, short_tmp)
    ticking = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.02; done"
    config = container_config("tick", command=["/bin/sh", "-c", ticking])
    cid = create(c, pod, config)
    c.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)

    assert c.crictl("exec", "-s", cid, "echo", "-n", "hello").stdout.rstrip("\n") == "hello"
    failed = c.crictl("exec", "-s", "--timeout", "1", cid, "sleep", "4323", check=False)
    assert failed.returncode != 0
    assert "timeout 1s exceeded" in failed.stderr

    log = Path(status(c, cid).log_path)
    wait_for(lambda: b"tick-3\n" in c.crictl("logs", cid).stdout.encode())
    rotated = log.with_name("0.log.20261206-000000")
    os.rename(log, rotated)
    c.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid), timeout=10)
    size = rotated.stat().st_size
    wait_for(lambda: log.exists() and log.stat().st_size > 0)
    time.sleep(0.2)
    assert rotated.stat().st_size == size

    c.ctrd.stop(signal.SIGKILL)  # and again once ctrd is back: its shim kept the log going
    c.ctrd.start()
    again = log.with_name("0.log.20261206-000001")
    os.rename(log, again)
    c.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid), timeout=10)
    size = again.stat().st_size
    wait_for(lambda: log.exists() and log.stat().st_size > 0)
    time.sleep(0.2)
    assert again.stat().st_size == size

    c.runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    log.unlink()
    with pytest.raises(grpc.RpcError) as e:
        c.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid), timeout=10)
    assert "container is not running" in (e.value.details() or "")
    assert not log.exists()
