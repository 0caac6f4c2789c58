"""200 run/rm cycles on a network with a published port, with ctrd SIGKILLed at random moments
of them (network setup and teardown included) and restarted: after each restart the network
state matches the tasks, and at the end nothing is left (no veth, pin, address, port, DNAT
rule or mount)."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import threading

import pytest

from tests.conftest import Ctrd
from tests.integration.test_crash import (
    NETWORK_LABELS,
    NS,
    network_problems,
    settled_without_problems,
)
from tests.integration.test_tasks import pull

CYCLES = 200
KILLS = 10


def ctr(ctrd: Ctrd, *args: str) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        ctrd.ctr(*args, ns=NS, check=False, timeout=20)


def kill_later(ctrd: Ctrd, delay: float) -> threading.Timer:
    proc = ctrd.proc
    assert proc is not None
    timer = threading.Timer(delay, lambda: proc.poll() is None and proc.send_signal(signal.SIGKILL))
    timer.start()
    return timer


@pytest.mark.timeout(400)  # 800 ctr calls: ~80 s on a quiet machine, twice that under load
def test_cycles_with_kills_leave_no_network_object_behind(make_ctrd, short_tmp, busybox_image):
    rng = random.Random(15)
    ctrd = make_ctrd(short_tmp)
    ctrd.start()
    pull(ctrd, busybox_image, ns=NS)
    fifo = ctrd.fifo_dir()
    kill_at = set(rng.sample(range(CYCLES), KILLS))
    restarts = 0
    for n in range(CYCLES):
        timer = kill_later(ctrd, rng.uniform(0.0, 0.4)) if n in kill_at else None
        cid = f"n{n}"
        ctr(ctrd, "run", "--fifo-dir", fifo, "-d", *NETWORK_LABELS, busybox_image.ref, cid,
            "sleep", "1000")  # fmt: skip
        ctr(ctrd, "tasks", "kill", "-s", "KILL", cid)
        ctr(ctrd, "tasks", "rm", "-f", cid)
        ctr(ctrd, "containers", "rm", cid)
        if timer is not None:
            timer.join()
            assert ctrd.proc is not None
            ctrd.proc.wait()
            ctrd.proc = None
            ctrd.start()
            restarts += 1
            listed = set(ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split())
            problems = network_problems(ctrd, listed)
            assert problems == [], f"cycle {n}: {problems}\n{ctrd.log()[-3000:]}"
    assert restarts == KILLS
    for cid in ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split():
        ctrd.ctr("tasks", "rm", "-f", cid, ns=NS)
    for cid in ctrd.ctr("containers", "ls", "-q", ns=NS).stdout.split():
        ctrd.ctr("containers", "rm", cid, ns=NS)
    settled_without_problems(ctrd)
    with contextlib.closing(sqlite3.connect(ctrd.root / "meta.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM endpoints").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM ports").fetchone() == (0,)
    with open("/proc/self/mounts") as f:
        left = [line.split()[1] for line in f if str(ctrd.state) in line.split()[1]]
    assert left == []
    etc = ctrd.state / "etc" / NS
    assert not etc.exists() or not list(etc.iterdir())
