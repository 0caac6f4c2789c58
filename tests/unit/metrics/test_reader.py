"""Reader processes: the same exposition as in-thread, in order; a failed reader costs one
scrape's fast path only; readers end with the pool and with a daemon that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from supervisor.metrics import containers
from supervisor.metrics.containers import ContainerMetrics, Target, _Place, render
from supervisor.metrics.reader import ReaderPool
from supervisor.runtime import metrics as cgroups
from tests.unit.metrics.test_containers import v1_tree, v2_tree


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a child of this process is a zombie until reaped: count that as gone
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _targets(base: Path, kind: str) -> list[Target]:
    """Seven containers on `kind` cgroup trees, with label values the text format escapes."""
    out = []
    for i in range(7):
        cgroup: cgroups.CgroupV1 | cgroups.CgroupV2
        if kind == "v2":
            cgroup = cgroups.CgroupV2(v2_tree(base / f"v2-{i}"))
        else:
            cgroup = cgroups.CgroupV1(v1_tree(base / f"v1-{i}"))
        namespace = 'odd"ns\\' if i == 4 else "default"
        out.append(Target(namespace, f"c{i}\n" if i == 5 else f"c{i}", False, _Place(cgroup, 0)))
    return sorted(out, key=lambda t: (t.namespace, t.id))


@pytest.fixture
def targets(tmp_path: Path) -> list[Target]:
    return _targets(tmp_path, "v1")


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_readers_write_what_one_thread_writes_in_the_same_order(tmp_path: Path, kind: str) -> None:
    targets = _targets(tmp_path, kind)
    expected = render(containers._read_all(targets))
    assert expected.count("# TYPE") > 20
    pool = ReaderPool(3)
    try:
        parts = pool.render_parts(targets)
        assert parts is not None
        assert len(parts) == 3
        assert containers.assemble(parts) == expected
        assert len(set(pool.pids())) == 3
        # more readers than containers: one reader per container
        assert len(pool.render_parts(targets[:2]) or []) == 2
    finally:
        pool.close()


def test_a_failed_reader_costs_one_scrapes_fast_path_and_is_replaced(
    targets: list[Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ReaderPool(2)
    metrics = ContainerMetrics(lambda: [], pool)
    monkeypatch.setattr(metrics, "_targets", lambda: targets)
    expected = render(containers._read_all(targets))
    try:
        assert metrics.render() == expected
        first, second = pool.pids()
        os.kill(first, signal.SIGKILL)
        assert _gone(first)
        assert pool.render_parts(targets) is None  # that scrape is made in-thread instead
        assert pool.pids() == [second]
        assert metrics.render() == expected  # and the next one by two readers again
        assert len(pool.pids()) == 2
        assert first not in pool.pids()
    finally:
        pool.close()


def test_a_reader_that_cannot_read_answers_an_error_and_the_scrape_still_comes(
    targets: list[Target],
) -> None:
    broken = Target("default", "zz", False, _Place(object(), 0))  # type: ignore[arg-type]
    pool = ReaderPool(1)
    metrics = ContainerMetrics(lambda: [], pool)
    try:
        assert pool.render_parts([*targets, broken]) is None
        assert pool.pids() == []
        assert containers.assemble(pool.render_parts(targets) or []) == render(
            containers._read_all(targets)
        )
        assert metrics.render() == ""  # no tasks: in-thread, nothing to say
    finally:
        pool.close()


def test_readers_end_with_the_pool() -> None:
    pool = ReaderPool(2)
    pool.start()
    pids = pool.pids()
    assert len(pids) == 2
    pool.close()
    assert all(_gone(pid) for pid in pids)
    assert pool.render_parts([]) is None  # a closed pool renders nothing
    assert pool.pids() == []


def test_readers_end_when_their_daemon_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, time
        from supervisor.metrics.reader import ReaderPool
        pool = ReaderPool(2)
        pool.start()
        print(*pool.pids(), flush=True)
        time.sleep(60)
    """)
    daemon = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert daemon.stdout is not None
        pids = [int(p) for p in daemon.stdout.readline().split()]
        assert len(pids) == 2
        assert all(not _gone(pid, 0.2) for pid in pids)
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    assert all(_gone(pid) for pid in pids)


def test_net_dev_counters_travel_through_a_reader(tmp_path: Path) -> None:
    """A container with a network namespace of its own: its pid's net/dev, read by the reader
    (this process's own stands in: the host has interfaces besides loopback)."""
    place = _Place(cgroups.CgroupV2(v2_tree(tmp_path)), os.getpid())
    target = Target("default", "me", False, place)
    pool = ReaderPool(1)
    try:
        text = containers.assemble(pool.render_parts([target]) or [])
        assert 'container_network_receive_bytes_total{container_id="me"' in text
        assert text == render(containers._read_all([target]))
    finally:
        pool.close()


def test_places_a_reader_knows_are_sent_by_key_and_changes_in_full(tmp_path: Path) -> None:
    """Scrapes in a row with containers gone, come and moved: each as in-thread."""
    first = _targets(tmp_path / "a", "v1")
    others = _targets(tmp_path / "b", "v2")
    moved = first[1]._replace(place=others[1].place)  # the same container, another cgroup
    pool = ReaderPool(1)
    try:
        for targets in (first, first, [*first[:1], moved, *first[3:]], [*others[4:], *first]):
            expected = render(containers._read_all(targets))
            assert containers.assemble(pool.render_parts(targets) or []) == expected
        [reader] = pool._readers
        assert len(reader._sent) == len(others[4:]) + len(first)  # what the last one used
    finally:
        pool.close()
