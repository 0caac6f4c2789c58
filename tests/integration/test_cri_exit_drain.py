"""A CRI container is EXITED only once everything it wrote is in its log: kubelet, critest and
the tests read the log as soon as they see the exit (issue 17).

The shim pumps the container's pipes into the CRI log; it announces the exit of a container
whose output it logs only once those pipes reached their end of file (or after a bounded
drain time). These containers write a burst of several MB, or just a little, right before they
exit, and the log is read the moment ContainerStatus says EXITED.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from tests.integration import test_cri_containers
from tests.integration.test_cri_containers import Pod, container_config, create, status
from tests.integration.test_cri_images import Cri
from tests.integration.test_cri_logs import lines

pytestmark = pytest.mark.integration
cri_ctrd = test_cri_containers.cri_ctrd
cric_image = test_cri_containers.cric_image
pod = test_cri_containers.pod

LINE = b"0123456789" * 9 + b"abcdefghi"  # 99 bytes, 100 with its newline
BURST = 40_000  # lines: 4 MB


def exited_now(c: Cri, cid: str, timeout: float = 30) -> Any:
    """ContainerStatus polled without a pause until it says EXITED."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status(c, cid)
        if found.state == cri.CONTAINER_EXITED:
            return found
        time.sleep(0.002)
    pytest.fail(f"container {cid} did not exit")


def run_and_read(c: Cri, pod: Pod, name: str, script: str) -> tuple[Any, list[bytes]]:
    config = container_config(name, command=["/bin/sh", "-c", script])
    cid = create(c, pod, config)
    c.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    done = exited_now(c, cid)
    log = Path(done.log_path)
    return done, lines(log, "stdout") if log.stat().st_size else []


def test_a_burst_written_right_before_the_exit_is_in_the_log_when_exited(cri_ctrd: Cri, pod: Pod):
    script = f"yes {LINE.decode()} | head -n {BURST}; echo last"
    for n in range(3):
        done, got = run_and_read(cri_ctrd, pod, f"burst-{n}", script)
        assert done.exit_code == 0
        assert len(got) == BURST + 1, f"run {n}: {len(got)} lines of {BURST + 1} when EXITED"
        assert got[-1] == b"last"
        assert set(got[:-1]) == {LINE}


def test_a_short_lived_containers_few_lines_are_in_the_log_when_exited(cri_ctrd: Cri, pod: Pod):
    short = []
    for n in range(20):
        _, got = run_and_read(cri_ctrd, pod, f"short-{n}", "cat /proc/self/status; echo done")
        if not got or got[-1] != b"done":
            short.append((n, len(got)))
    assert not short, f"(run, lines) short when EXITED: {short}"
