"""What health checks cost ctrd: containers checked every `--interval` (a `CMD true` probe,
labelled `ctrd.io/healthcheck` through the real ctr), then for `--seconds` the probes' own
duration (each result's end - start: exec, start, wait, delete through the shim), the probes
run per second and the daemon's CPU time per probe (its utime + stime over the window).

Usage: `python bench/health.py -n 20 --interval 1 --seconds 20`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def results(address: str) -> list[tuple[int, int, int]]:
    """(start, end, exit code) of every kept result of the namespace's containers."""
    sys.path.insert(0, str(common.REPO))
    import grpc

    from supervisor.api.ctrd.services.health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"unix:{address}") as channel:
        listed = health_pb2_grpc.HealthStub(channel).List(
            health_pb2.ListHealthRequest(),
            metadata=(("containerd-namespace", common.NAMESPACE),),
            timeout=10,
        )
    return [
        (r.start.ToNanoseconds(), r.end.ToNanoseconds(), r.exit_code)
        for h in listed.health
        for r in h.log
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="containers")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    args = parser.parse_args()
    check = json.dumps({"test": ["CMD", "true"], "interval": int(args.interval * 1e9)})
    with common.scratch_dir("ctrd-bench-health-") as scratch:
        daemon = common.start_ctrd(scratch / "ctrd")
        try:
            image = common.import_busybox(daemon, scratch)
            for cid in common.sleeper_ids(daemon, args.n):
                daemon.ctr(
                    "run", "-d", "--fifo-dir", str(daemon.fifo_dir), "--label",
                    f"ctrd.io/healthcheck={check}", image, cid, "sleep", "100000",
                    ns=common.NAMESPACE, stdin=subprocess.DEVNULL, timeout=120,
                )  # fmt: skip
            time.sleep(args.interval * 2)  # every checker has begun
            cpu_before, begin = cpu_seconds(daemon.proc.pid), time.time_ns()
            time.sleep(args.seconds)
            cpu = cpu_seconds(daemon.proc.pid) - cpu_before
            end = time.time_ns()
            kept = [r for r in results(daemon.address) if begin <= r[0] and r[1] <= end]
            # The log keeps 5 results a container: count the window's probes from the rate.
            probes = args.n * args.seconds / args.interval
            durations = sorted((e - s) / 1e6 for s, e, _ in kept)
            print(f"{args.n} containers, a probe each every {args.interval} s, {args.seconds} s")
            print(f"  probe duration (ms): median {statistics.median(durations):.1f},"
                  f" p90 {common.p90(durations):.1f}, max {durations[-1]:.1f}"
                  f" ({len(durations)} results kept)")  # fmt: skip
            print(f"  failures among them: {sum(1 for r in kept if r[2] != 0)}")
            print(f"  ctrd CPU: {cpu:.2f} s over the window, ~{cpu / probes * 1000:.2f} ms a probe"
                  f" (~{probes / args.seconds:.0f} probes/s)")  # fmt: skip
        finally:
            common.tear_down(daemon)


if __name__ == "__main__":
    main()
