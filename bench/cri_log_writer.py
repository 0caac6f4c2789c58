"""What the shim's log writers cost per MiB of output: the CRI's format (`shim.crilog`) beside
docker's json-file (`shim.logfile`), through the shim's own pump and a pipe, as a container's
output reaches them.

For each line length, `--mib` MiB of lines are written into a pipe (by a thread, in 64 KiB
writes) and pumped into a log file on `--dir` (default: a temporary directory under /tmp);
the pump's thread's CPU time per MiB is reported (median of `--runs`), and the file's size per
MiB of output (`--crlf`: lines end as a terminal ends them). Run with ctrd's
interpreter: `/opt/ctrd/bin/python bench/cri_log_writer.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim import crilog, logfile
from shim.stdio import Reactor

MIB = 1 << 20


def feed(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: 1 << 16]) :]
    os.close(fd)


def pump_once(log: logfile.Log, data: bytes) -> float:
    """CPU seconds the pump's thread spends moving `data` through a pipe into `log`."""
    reactor = Reactor()
    read_end, write_end = os.pipe()
    ended: list[bool] = []
    logfile.Pump(
        lambda fd, cb: reactor.want(fd, read=cb), read_end, "stdout", log,
        lambda: ended.append(True),
    )  # fmt: skip
    writer = threading.Thread(target=feed, args=(write_end, data))
    started = time.thread_time()
    writer.start()
    while not ended:
        reactor.poll(1)
    spent = time.thread_time() - started
    writer.join()
    os.close(read_end)
    log.close()
    return spent


def output(line_length: int, mib: int, end: bytes) -> bytes:
    line = b"x" * (line_length - len(end)) + end
    return line * (mib * MIB // line_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", default="80,1024,100000")
    parser.add_argument("--dir", default="")
    parser.add_argument("--crlf", action="store_true", help="lines end with CRLF (terminals)")
    args = parser.parse_args()
    where = Path(args.dir or tempfile.mkdtemp(prefix="cri-log-bench-", dir="/tmp"))
    try:
        print(f"{'line bytes':>10} {'format':>6} {'ms/MiB':>8} {'file/out':>8}")
        for length in map(int, args.lines.split(",")):
            data = output(length, args.mib, b"\r\n" if args.crlf else b"\n")
            for name in ("cri", "json"):
                times, ratio = [], 0.0
                for run in range(args.runs):
                    path = where / f"{name}-{length}-{run}.log"
                    log: logfile.Log = (
                        crilog.CriLog(str(path)) if name == "cri" else logfile.LogFile(str(path))
                    )
                    times.append(pump_once(log, data))
                    ratio = path.stat().st_size / len(data)
                    path.unlink()
                ms = statistics.median(times) * 1000 / (len(data) / MIB)
                print(f"{length:>10} {name:>6} {ms:>8.2f} {ratio:>8.2f}")
    finally:
        if not args.dir:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
