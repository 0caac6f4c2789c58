"""ctrctl restart, top, stats and system info|df|prune against a real daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_tasks import pull


def pid_of(ctrd, name: str) -> int:
    [info] = json.loads(ctrctl(ctrd, "inspect", name).stdout)
    return int(info["state"]["pid"])


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_restart_top_and_stats_of_a_running_container(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    started = ctrctl(
        ctrd, "run", "-d", "--name", "busy", ref, "sh", "-c", "echo up; exec sleep 1000"
    )
    assert started.returncode == 0, started.stderr
    first_pid = pid_of(ctrd, "busy")

    top = ctrctl(ctrd, "top", "busy", "-ef")
    assert top.returncode == 0, top.stderr
    header, *rows = top.stdout.splitlines()
    assert header.split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert len(rows) == 1
    assert rows[0].split()[0] == "root"
    assert rows[0].split()[1] == str(first_pid)  # a host pid, as docker's top shows
    assert rows[0].endswith("sleep 1000")

    table = ctrctl(ctrd, "stats", "--no-stream")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/", "LIMIT", "MEM", "%",
        "NET", "I/O", "BLOCK", "I/O", "PIDS",
    ]  # fmt: skip
    cells = row.split()
    assert cells[:2] == ["busy", "busy"]
    assert cells[2].endswith("%")
    assert cells[4] == "/"
    assert cells[3][0].isdigit()
    assert int(cells[-1]) == 1
    [stats] = json.loads(ctrctl(ctrd, "stats", "--no-stream", "--format", "json", "bu").stdout)
    assert stats["name"] == "busy"
    assert stats["memoryUsage"] > 0
    assert stats["memoryLimit"] >= stats["memoryUsage"]
    assert stats["pids"] == 1

    # Streaming, not on a terminal: successive tables, until Ctrl-C, which exits 0 as docker.
    with subprocess.Popen(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "stats", "busy"],
        stdout=subprocess.PIPE, text=True,
    ) as streaming:  # fmt: skip
        try:
            assert streaming.stdout is not None
            frames = [streaming.stdout.readline() for _ in range(4)]
            assert [line.split()[0] for line in frames] == ["CONTAINER", "busy"] * 2
            streaming.send_signal(signal.SIGINT)
            assert streaming.wait(10) == 0
        finally:
            if streaming.poll() is None:
                streaming.kill()

    restarted = ctrctl(ctrd, "restart", "-t", "1", "busy")
    assert (restarted.returncode, restarted.stdout) == (0, "busy\n"), restarted.stderr
    assert pid_of(ctrd, "busy") != first_pid
    assert "Up " in ctrctl(ctrd, "ps").stdout
    # Still logging through ctrd-log://: both runs' output.
    wait_for(lambda: ctrctl(ctrd, "logs", "busy").stdout == "up\nup\n")

    stopped = ctrctl(ctrd, "stop", "-t", "1", "busy")
    assert stopped.returncode == 0
    not_running = ctrctl(ctrd, "top", "busy")
    assert (not_running.returncode, not_running.stderr.strip()) == (
        125,
        "ctrctl: container busy is not running",
    )
    everything = json.loads(ctrctl(ctrd, "stats", "--no-stream", "-a", "--format", "json").stdout)
    assert [(s["name"], s["pids"]) for s in everything] == [("busy", 0)]
    assert ctrctl(ctrd, "rm", "busy").returncode == 0


def test_restart_of_a_stopped_container_started_attached_logs_it(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    ran = ctrctl(ctrd, "run", "--name", "once", ref, "echo", "hello")
    assert ran.stdout == "hello\n"
    assert ctrctl(ctrd, "restart", "once").returncode == 0
    wait_for(lambda: "Exited (0)" in ctrctl(ctrd, "ps", "-a").stdout)
    # the attached run and the restarted one (nobody attached): both in the log, as docker's
    assert ctrctl(ctrd, "logs", "once").stdout == "hello\nhello\n"
    assert ctrctl(ctrd, "rm", "once").returncode == 0


def test_system_info_df_and_prune(ctrd, busybox_image, busybox2_image):
    ref = pull(ctrd, busybox_image)
    unused = pull(ctrd, busybox2_image)
    assert ctrctl(ctrd, "run", "-d", "--name", "up", ref, "sleep", "1000").returncode == 0
    assert ctrctl(ctrd, "run", "--name", "done", ref, "true").returncode == 0

    info = ctrctl(ctrd, "system", "info")
    assert info.returncode == 0, info.stderr
    text = info.stdout
    for line in (
        " Containers: 2",
        "  Running: 1",
        "  Paused: 0",
        "  Stopped: 1",
        " Images: 2",
        " Namespace: default",
        " Default Snapshotter: overlayfs",
        " Cgroup Driver: cgroupfs",
        f" Root Dir: {ctrd.root}",
        f" State Dir: {ctrd.state}",
    ):
        assert line in text.splitlines(), text
    data = json.loads(ctrctl(ctrd, "system", "info", "--format", "json").stdout)
    assert data["namespaces"] == ["default"]
    assert "overlayfs" in data["snapshotters"]
    assert data["runtimes"] == ["io.containerd.runc.v2"]
    assert data["cpus"] > 0
    assert data["memory"] > 0

    df = ctrctl(ctrd, "system", "df")
    assert df.returncode == 0, df.stderr
    header, *rows = df.stdout.splitlines()
    assert header.split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [r.split()[:3] for r in rows[:2]] == [["Images", "2", "1"], ["Containers", "2", "1"]]
    usage = {
        r["type"]: r for r in json.loads(ctrctl(ctrd, "system", "df", "--format", "json").stdout)
    }
    assert 0 < usage["Images"]["reclaimable"] < usage["Images"]["size"]
    assert usage["Content"]["total"] == len(ctrd.ctr("content", "ls", "-q").stdout.split())
    snapshots = ctrd.ctr("snapshots", "ls").stdout.splitlines()[1:]
    assert usage["Snapshots"]["total"] == len(snapshots)

    # -v: each image (what of it the other image shares), container and volume
    verbose = json.loads(ctrctl(ctrd, "system", "df", "-v", "--format", "json").stdout)
    images = {i["name"]: i for i in verbose["images"]}
    assert set(images) == {ref, unused}
    assert images[ref]["containers"] == 2
    assert images[unused]["containers"] == 0
    shared = images[ref]["sharedSize"]
    assert 0 < shared == images[unused]["sharedSize"]  # busybox's layer, in both
    assert images[unused]["uniqueSize"] > 0  # its own layer
    assert images[ref]["size"] == shared + images[ref]["uniqueSize"]
    assert [c["name"] for c in verbose["containers"]] == ["done", "up"]  # newest first
    assert verbose["containers"][0]["status"].startswith("Exited (0)")
    assert verbose["volumes"] == []
    shown = ctrctl(ctrd, "system", "df", "-v")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.splitlines()
    assert text[0] == "Images space usage:"
    assert text[2].split()[:4] == ["REPOSITORY", "TAG", "IMAGE", "ID"]
    assert "Containers space usage:" in text
    assert "Local Volumes space usage:" in text

    declined = ctrctl(ctrd, "system", "prune", input="\n")
    assert "  - all stopped containers" in declined.stdout
    assert sorted(ctrctl(ctrd, "ps", "-a", "-q").stdout.split()) == ["done", "up"]

    pruned = ctrctl(ctrd, "system", "prune", "-a", "-f")
    assert pruned.returncode == 0, pruned.stderr
    lines = pruned.stdout.splitlines()
    assert lines[:3] == ["Deleted Containers:", "done", ""]
    assert f"untagged: {unused}" in lines
    assert lines[-1].startswith("Total reclaimed space: ")
    assert not lines[-1].endswith(" 0B")
    assert ctrctl(ctrd, "ps", "-a", "-q").stdout.split() == ["up"]
    assert ctrd.ctr("images", "ls", "-q").stdout.split() == [ref]
    assert ctrctl(ctrd, "run", "-d", "--name", "vol", "-v", "data:/data", ref,
                  "sleep", "1000").returncode == 0  # fmt: skip
    verbose = json.loads(ctrctl(ctrd, "system", "df", "-v", "--format", "json").stdout)
    by_name = {c["name"]: c for c in verbose["containers"]}
    assert by_name["vol"]["localVolumes"] == 1
    assert by_name["up"]["localVolumes"] == 0
    assert verbose["volumes"] == [{"name": "data", "links": 1, "size": 0}]
    assert ctrctl(ctrd, "rm", "-f", "up", "vol").returncode == 0
    assert ctrctl(ctrd, "volume", "rm", "data").returncode == 0
