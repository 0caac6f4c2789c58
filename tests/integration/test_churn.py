"""No leaks under churn: many create/start/kill/delete cycles, clients that give up mid-call,
and daemon restarts in between; afterwards shims, fds, mounts and disk use are back.

`CTRD_CHURN_CYCLES` (default 40 in CI) sets the number of cycles; hundreds for a long run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.conftest import Ctrd
from tests.integration.test_tasks import open_fds, pull, run, shims, wait_for

CYCLES = int(os.environ.get("CTRD_CHURN_CYCLES", "40"))


def disk_use(root: Path) -> int:
    """Bytes under the content store and the snapshotters (the event log grows by design)."""
    paths = [str(root / "content"), str(root / "snapshots")]
    out = subprocess.run(
        ["du", "-s", "-c", "--block-size=1", *paths], capture_output=True, text=True
    )
    return int(out.stdout.splitlines()[-1].split()[0])


def mounts(ctrd: Ctrd) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if str(ctrd.base) in line.split()[1]]


def fd_kinds(pid: int) -> Counter[str]:
    return Counter(fd.split(":")[0] for fd in open_fds(pid))


def test_churn_leaves_nothing_behind(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "--rm", ref, "warm", "true")
    time.sleep(0.5)
    start_disk = disk_use(ctrd.root)
    assert ctrd.proc is not None
    md = (("containerd-namespace", "default"),)
    for n in range(CYCLES):
        cid = f"churn{n}"
        run(ctrd, "-d", ref, cid, "sleep", "1000")
        ctrd.ctr("tasks", "kill", "-s", "KILL", cid)
        if n % 5 == 1:  # the client gives up in the middle of the delete
            wait_for(lambda cid=cid: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
            stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
            call = stub.Delete.future(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=md)
            time.sleep(0.002)
            call.cancel()
            time.sleep(0.2)
            # If the cancel came before the request reached ctrd, nothing was deleted: then
            # this delete does it; otherwise it finds the task gone (or deleting) - no leak
            # either way.
            ctrd.ctr("tasks", "rm", "-f", cid, check=False)
            wait_for(lambda cid=cid: cid not in ctrd.ctr("tasks", "ls", "-q").stdout.split())
        else:
            ctrd.ctr("tasks", "rm", "-f", cid)
        ctrd.ctr("containers", "rm", cid)
        if n % 15 == 7:  # a restart in between, sometimes abrupt
            ctrd.stop(signal.SIGKILL if n % 2 else signal.SIGTERM)
            ctrd.start()
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    wait_for(lambda: shims(ctrd) == [], timeout=5)
    assert mounts(ctrd) == []
    assert list((ctrd.state / "s").iterdir()) == []
    assert list((ctrd.state / "runc" / "default").iterdir()) == []
    # The daemon was restarted: compare its fds with a fresh start's, once a first run has
    # built what a daemon builds at its first use (the snapshotters open their databases).
    ctrd.restart()
    run(ctrd, "--rm", ref, "first", "true")
    time.sleep(0.5)
    baseline = fd_kinds(ctrd.proc.pid)
    for n in range(3):
        run(ctrd, "--rm", ref, f"after{n}", "true")
    wait_for(lambda: fd_kinds(ctrd.proc.pid) <= baseline + Counter(socket=2), timeout=5)
    wait_for(lambda: disk_use(ctrd.root) <= start_disk + (1 << 20), timeout=10)
