"""Logs the shim keeps (`ctrd-log://`): read after the fact, followed, rotated, removed."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from supervisor.api.ctrd.services.logs.v1 import logs_pb2, logs_pb2_grpc
from tests.integration.test_tasks import pull, run, wait_for

MD = (("containerd-namespace", "default"),)


def read(ctrd, cid: str, **kw) -> list[tuple[str, bytes]]:
    stub = ctrd.stub(logs_pb2_grpc.LogsStub)
    request = logs_pb2.ReadRequest(container_id=cid, **kw)
    return [(e.stream, e.data) for e in stub.Read(request, metadata=MD, timeout=30)]


def test_a_detached_containers_output_is_kept_and_read_after_the_fact(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    script = "echo out-1; echo err-1 >&2; echo out-2; printf no-newline"
    run(ctrd, "-d", "--log-uri", "ctrd-log://", ref, "l1", "sh", "-c", script)
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    entries = read(ctrd, "l1")
    assert entries == [
        ("stdout", b"out-1\n"), ("stderr", b"err-1\n"), ("stdout", b"out-2\n"),
        ("stdout", b"no-newline"),
    ] or sorted(entries) == sorted([
        ("stdout", b"out-1\n"), ("stderr", b"err-1\n"), ("stdout", b"out-2\n"),
        ("stdout", b"no-newline"),
    ])  # fmt: skip
    assert read(ctrd, "l1", tail=1) == [entries[-1]]
    log = ctrd.root / "logs" / "default" / "l1" / "log.json"
    first = json.loads(log.read_text().splitlines()[0])
    assert set(first) == {"log", "stream", "time"}  # docker's json-file format
    ctrd.restart()  # the log outlives the daemon
    assert read(ctrd, "l1") == entries
    ctrd.ctr("tasks", "rm", "l1")
    assert read(ctrd, "l1") == entries  # and the task
    ctrd.ctr("containers", "rm", "l1")
    assert not log.parent.exists()  # not the container
    with pytest.raises(grpc.RpcError) as e:
        read(ctrd, "l1")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_following_a_log_sees_new_lines_and_ends_with_the_task(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    script = "for i in 1 2 3; do echo line-$i; sleep 0.3; done"
    run(ctrd, "-d", "--log-uri", "ctrd-log://", ref, "f1", "sh", "-c", script)
    got: list[bytes] = []
    done = threading.Event()

    def follow() -> None:
        stub = ctrd.stub(logs_pb2_grpc.LogsStub)
        request = logs_pb2.ReadRequest(container_id="f1", follow=True)
        got.extend(entry.data for entry in stub.Read(request, metadata=MD, timeout=30))
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert done.wait(20), got
    assert got == [b"line-1\n", b"line-2\n", b"line-3\n"]
    ctrd.ctr("tasks", "rm", "f1")


def test_a_log_is_rotated_by_size_and_nothing_is_lost_at_exit(ctrd, busybox_image, short_tmp):
    config = short_tmp / "config.toml"
    config.write_text("[logs]\nmax_size = 20000\nmax_files = 3\n")
    ctrd.stop()
    ctrd.extra_args = ("--config", str(config))
    ctrd.start()
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", "--log-uri", "ctrd-log://", ref, "r1", "seq", "1", "100000")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    directory = ctrd.root / "logs" / "default" / "r1"
    time.sleep(0.2)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["log.json", "log.json.1", "log.json.2"]
    assert all(p.stat().st_size <= 20000 for p in directory.iterdir())
    lines = [d for _, d in read(ctrd, "r1")]
    assert lines[-1] == b"100000\n"  # the last line, written just before the exit
    numbers = [int(d) for d in lines]
    assert numbers == list(range(numbers[0], 100001))  # what is kept has no gap
    ctrd.ctr("tasks", "rm", "r1")


def test_a_tee_fifo_gets_the_output_the_log_keeps(ctrd, busybox_image, short_tmp):
    import os

    ref = pull(ctrd, busybox_image)
    fifo = short_tmp / "out"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:  # EOF once the shim closed it: the stream ended
            got.append(f.read())

    thread = threading.Thread(target=reader)
    thread.start()
    run(ctrd, "-d", "--log-uri", f"ctrd-log://?tee={fifo}", ref, "t1", "sh", "-c", "echo teed")
    thread.join(30)
    assert got == [b"teed\n"]  # ctr's --log-uri names it for stdout and stderr alike
    wait_for(lambda: read(ctrd, "t1") == [("stdout", b"teed\n")])
    ctrd.ctr("tasks", "rm", "t1")
    ctrd.ctr("containers", "rm", "t1")


def test_a_tee_that_is_no_fifo_is_refused_and_never_written(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    regular = short_tmp / "not-a-fifo"
    regular.write_bytes(b"")
    made = run(ctrd, "-d", "--log-uri", f"ctrd-log://?tee={regular}", ref, "t2", "echo", "x",
               check=False)  # fmt: skip
    assert made.returncode != 0
    assert "is not a FIFO" in made.stderr
    assert regular.read_bytes() == b""
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    ctrd.ctr("containers", "rm", "t2")
