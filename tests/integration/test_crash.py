"""Crash consistency: SIGKILL ctrd at seeded moments of a busy life, restart, check the state.

A client loop pulls an image, runs a container, kills and deletes its task, removes the
container (and with it the snapshot) and the image, over and over, while ctrd is killed at a
moment drawn from a seeded generator. After the restart (and a collection) these must hold:

- every blob file holds the bytes its name promises, and every blob the metadata lists exists;
- every image's target is in the content store;
- every snapshot directory is one the snapshotter's metadata knows, and every snapshot the
  snapshotter has is one the daemon's metadata knows;
- every task bundle is a task the daemon lists, every live shim of the daemon serves one of
  its tasks, and every mount under the state dir is the root filesystem of a listed task.

`CTRD_CRASH_SEEDS` (default 6 in CI) sets how many seeds to sweep: `CTRD_CRASH_SEEDS=200
python3 -m pytest tests/integration/test_crash.py` is the longer sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Ctrd

SEEDS = int(os.environ.get("CTRD_CRASH_SEEDS", "6"))
NS = "crash"
# every container on the namespace's default bridge with a published port the daemon picks
NETWORK_LABELS = ("--label", "ctrd.io/networks=bridge", "--label", "ctrd.io/ports=127.0.0.1::80")


def client_loop(ctrd: Ctrd, ref: str, stop: threading.Event) -> None:
    """What a busy client does, ignoring failures (the daemon dies under it)."""
    n = 0
    fifo = ctrd.fifo_dir()

    def ctr(*args: str) -> None:
        if not stop.is_set():
            with contextlib.suppress(subprocess.TimeoutExpired):  # ctr dialing a dead daemon
                ctrd.ctr(*args, ns=NS, check=False, timeout=10)

    while not stop.is_set():
        n += 1
        cid = f"c{n}"
        ctr("images", "pull", "--plain-http", ref)
        ctr("run", "--fifo-dir", fifo, "-d", *NETWORK_LABELS, ref, cid, "sleep", "1000")
        ctr("tasks", "kill", "-s", "KILL", cid)
        ctr("tasks", "rm", "-f", cid)
        ctr("containers", "rm", cid)
        if n % 2 == 0:
            ctr("images", "rm", "--sync", ref)


def blob_problems(ctrd: Ctrd) -> list[str]:
    problems = []
    blobs = ctrd.root / "content" / "blobs" / "sha256"
    on_disk = set()
    for path in blobs.iterdir() if blobs.is_dir() else []:
        on_disk.add(f"sha256:{path.name}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            problems.append(f"blob {path.name} does not hold what its name promises")
    with sqlite3.connect(ctrd.root / "meta.db") as db:
        listed = {d for (d,) in db.execute("SELECT digest FROM blobs")}
        images = db.execute("SELECT namespace, name, digest FROM images").fetchall()
    problems += [f"blob {d} listed but missing" for d in sorted(listed - on_disk)]
    problems += [f"image {n} points at missing {d}" for _, n, d in images if d not in on_disk]
    return problems


def snapshot_problems(ctrd: Ctrd) -> list[str]:
    backend = ctrd.root / "snapshots" / "overlayfs"
    with sqlite3.connect(backend / "metadata.db") as db:
        rows = db.execute("SELECT key, id FROM snapshots").fetchall()
    ids = {str(i) for _, i in rows}
    directory = backend / "snapshots"
    problems = [
        f"snapshot directory {path.name} unknown to the snapshotter"
        for path in (directory.iterdir() if directory.is_dir() else [])
        if path.name not in ids
    ]
    with sqlite3.connect(ctrd.root / "meta.db") as db:
        known = {k for (k,) in db.execute("SELECT backend_key FROM snapshots")}
    problems += [f"backend snapshot {k} unknown to the daemon" for k, _ in rows if k not in known]
    return problems


def task_problems(ctrd: Ctrd) -> list[str]:
    from tests.integration.test_tasks import shims

    problems = []
    listed = set(ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split())
    bundles = ctrd.state / "tasks" / NS
    on_disk = {p.name for p in bundles.iterdir()} if bundles.is_dir() else set()
    problems += [f"bundle {b} is no listed task" for b in sorted(on_disk - listed)]
    problems += [f"task {t} has no bundle" for t in sorted(listed - on_disk)]
    serving = set()
    for pid in shims(ctrd):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            serving.add(f.read().split(b"\0")[0].decode().split()[2])
    problems += [f"a shim serves {s}, which is no listed task" for s in sorted(serving - listed)]
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if str(ctrd.state) in line.split()[1]]
    netns = ctrd.state / "netns"
    for target in mounts:
        if Path(target).is_relative_to(netns):
            continue  # network namespace pins: network_problems' to check
        if Path(target).parent.name not in listed:
            problems.append(f"mount {target} is no listed task's rootfs")
    return problems


def network_problems(ctrd: Ctrd, listed: set[str]) -> list[str]:
    """ctrd's network objects against its tasks: every endpoint (address lease), published
    port, pin, veth and DNAT map element belongs to a listed task, and every such task has them."""
    from pyroute2 import IPRoute

    from supervisor.network import netlink, nft, nftshape
    from supervisor.network.manager import bridge_name, endpoint_key

    problems = []
    with contextlib.closing(sqlite3.connect(ctrd.root / "meta.db")) as conn:
        networks = [str(i) for (i,) in conn.execute("SELECT id FROM networks")]
        endpoints = [(str(n), str(c)) for n, c in conn.execute(
            "SELECT network, container FROM endpoints WHERE namespace = ?", (NS,))]  # fmt: skip
        ports = [(str(c), int(p)) for c, p in conn.execute(
            "SELECT container, host_port FROM ports WHERE namespace = ?", (NS,))]  # fmt: skip
    owners = {c for _, c in endpoints}
    problems += [f"endpoint of {c}, which has no task" for c in sorted(owners - listed)]
    problems += [f"task {t} has no endpoint" for t in sorted(listed - owners)]
    problems += [f"port {p} of {c}, which has no endpoint" for c, p in ports if c not in owners]
    pins_dir = ctrd.state / "netns" / NS
    pins = {p.name for p in pins_dir.iterdir()} if pins_dir.is_dir() else set()
    problems += [f"pin {p} is no endpoint's" for p in sorted(pins - owners)]
    with open("/proc/self/mounts") as f:
        mounted = {line.split()[1] for line in f}
    unmounted = sorted(p for p in pins if str(pins_dir / p) not in mounted)
    problems += [f"pin {p} is not mounted" for p in unmounted]
    if str(pins_dir) in mounted and not pins:
        problems.append(f"{pins_dir} is still a mount point with no pin in it")
    problems += [f"endpoint of {c} has no pin" for c in sorted(owners - pins)]
    bridges = {bridge_name(n) for n in networks}
    wanted = {netlink.host_ifname(endpoint_key(NS, n, c)) for n, c in endpoints}
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        by_index = {int(link["index"]): str(link.get("ifname")) for link in links}
        plugged = {
            str(link.get("ifname"))
            for link in links
            if link.get("master") is not None and by_index.get(int(link.get("master"))) in bridges
        }
    problems += [f"veth {v} is no endpoint's" for v in sorted(plugged - wanted)]
    problems += [f"endpoint veth {v} is missing" for v in sorted(wanted - plugged)]
    table = nftshape.shape(ctrd.nft_table, nft.MAPS)  # a published port is a map element
    dnats = 0 if table is None else table.elements
    if dnats != len(ports):
        problems.append(f"{dnats} DNAT map elements for {len(ports)} published ports")
    for _, port in ports:  # held by the daemon: nobody else can bind it
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                problems.append(f"published port {port} is not held")
            except OSError:
                pass
    return problems


def settled_without_problems(ctrd: Ctrd, timeout: float = 10.0) -> None:
    """No network problem once the veths of the last removals are gone (the kernel deletes them
    with their namespaces, ctrd in the background: not before Tasks.Delete answers)."""
    deadline = time.monotonic() + timeout
    while (problems := network_problems(ctrd, set())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert problems == []


@pytest.mark.parametrize("seed", range(SEEDS))
def test_a_kill_at_any_moment_leaves_a_state_the_next_start_repairs(
    make_ctrd, short_tmp, busybox2_image, seed
):
    rng = random.Random(seed)
    base = short_tmp / f"s{seed}"
    base.mkdir()
    config = base / "config.toml"
    ctrd = make_ctrd(base)
    config.write_text(f'[gc]\ninterval = 0.3\n[network]\nnft_table = "{ctrd.nft_table}"\n')
    ctrd.extra_args = ("--config", str(config))
    ctrd.start()
    stop = threading.Event()
    client = threading.Thread(target=client_loop, args=(ctrd, busybox2_image.ref, stop))
    client.start()
    time.sleep(rng.uniform(0.05, 2.5))
    assert ctrd.proc is not None
    ctrd.proc.send_signal(signal.SIGKILL)
    ctrd.proc.wait()
    stop.set()
    client.join(30)
    ctrd.proc = None
    ctrd.start()
    time.sleep(1)  # a collection or two
    problems = blob_problems(ctrd) + snapshot_problems(ctrd) + task_problems(ctrd)
    listed = set(ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split())
    problems += network_problems(ctrd, listed)
    assert problems == [], f"seed {seed}: {problems}\n{ctrd.log()[-3000:]}"
    # And it goes on working: the leftovers can be cleaned up through the API.
    for cid in ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split():
        ctrd.ctr("tasks", "rm", "-f", cid, ns=NS)
    for cid in ctrd.ctr("containers", "ls", "-q", ns=NS).stdout.split():
        ctrd.ctr("containers", "rm", cid, ns=NS)
    out = subprocess.run(["ctr", "-a", ctrd.address, "-n", NS, "tasks", "ls", "-q"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.stdout.split() == []
    settled_without_problems(ctrd)
