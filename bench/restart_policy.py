"""How soon `--restart always` brings a crashing container back: from its task's exit to its
first restart running (the new process started), ctrd vs Docker Engine 20.10 on its own
containerd 1.6 (issue #16: ctrd within 150 ms of the exit; docker waits 100 ms plus its own
overhead).

Each round runs `run -d --network none --restart always IMG sh -c 'sleep 0.2; exit 1'` on
each engine, alternating, and takes:
- ctrd: from its log, the exit's time (the shim's `exited_at`, in `restart_scheduled`) and
  the time the restart's Start returned (`container_restarted`'s `started_at`);
- docker: from `docker inspect` once RestartCount is 1, `State.FinishedAt` (the exit's time,
  containerd's `exited_at`) and `State.StartedAt` (set once its start returned).
Usage: `python bench/restart_policy.py --runs 20` (`--no-docker`: ctrd alone).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common

COMMAND = ("sh", "-c", "sleep 0.2; exit 1")


def events(log: Path, name: str, cid: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name and entry.get("id") == cid:
                found.append(entry)
    return found


def ctrctl(daemon: common.Daemon, *args: str) -> None:
    done = common.run(
        [sys.executable, "-m", "ctl", "-a", daemon.address, "-n", common.NAMESPACE, *args],
        capture_output=True, cwd=common.REPO,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"ctrctl {' '.join(args)}: {done.stderr.decode(errors='replace')}")


def ctrd_first_restart_ms(daemon: common.Daemon, image: str, cid: str) -> float:
    ctrctl(daemon, "run", "-d", "--name", cid, "--network", "none", "--restart", "always",
           image, *COMMAND)  # fmt: skip
    log = daemon.base / "ctrd.log"
    deadline = time.monotonic() + 20
    while not (started := events(log, "container_restarted", cid)):
        if time.monotonic() > deadline:
            sys.exit(f"{cid} was not restarted:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    exited = events(log, "restart_scheduled", cid)[0]["exited_at"]
    ctrctl(daemon, "rm", "-f", cid)
    return (int(started[0]["started_at"]) - int(exited)) / 1e6


def _ns(text: str) -> int:
    """Nanoseconds since the epoch of docker's RFC 3339 time (up to nanoseconds)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = int(dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def docker_first_restart_ms(docker: Any, name: str) -> float | None:
    """None when inspect did not see the first restart before the second exit."""
    client = docker.client
    client.time("run", "-d", "--name", name, "--network", "none", "--restart", "always",
                client.image, *COMMAND)  # fmt: skip
    deadline = time.monotonic() + 20
    gap = None
    while time.monotonic() < deadline:
        out = common.run(
            [*client.argv, "inspect", name], env=client.env, capture_output=True, text=True
        )
        state = json.loads(out.stdout)[0]
        count = int(state["RestartCount"])
        if count == 1 and state["State"]["Running"] and not state["State"]["Restarting"]:
            gap = (_ns(state["State"]["StartedAt"]) - _ns(state["State"]["FinishedAt"])) / 1e6
            break
        if count > 1:
            break
        time.sleep(0.02)
    client.time("rm", "-f", name)
    return gap


@contextlib.contextmanager
def docker_engine(base: Path, wanted: bool) -> Iterator[Any]:
    if not wanted:
        yield None
        return
    import network  # dockerd on a containerd of its own, in a namespace (bench/network.py)

    with network.docker_engine(base) as docker:
        yield docker


def report(name: str, gaps: list[float]) -> None:
    if not gaps:
        print(f"{name}: nothing measured")
        return
    print(
        f"{name}: exit -> first restart running, {len(gaps)} runs: median"
        f" {statistics.median(gaps):.1f} ms, min {min(gaps):.1f}, p90 {common.p90(gaps):.1f},"
        f" max {max(gaps):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-docker", action="store_true", help="measure ctrd alone")
    args = parser.parse_args()
    ctrd_gaps: list[float] = []
    docker_gaps: list[float] = []
    missed = 0
    with common.scratch_dir("restart-bench-") as scratch:
        daemon = common.start_ctrd(scratch / "ctrd", log_level="info")
        try:
            image = common.import_busybox(daemon, scratch)
            with docker_engine(scratch / "docker", not args.no_docker) as docker:
                for i in range(args.runs):
                    ctrd_gaps.append(ctrd_first_restart_ms(daemon, image, f"crash{i}"))
                    if docker is not None:
                        gap = docker_first_restart_ms(docker, f"crash{i}")
                        if gap is None:
                            missed += 1
                        else:
                            docker_gaps.append(gap)
        finally:
            common.tear_down(daemon)
    report("ctrd", ctrd_gaps)
    if not args.no_docker:
        report("docker", docker_gaps)
        if missed:
            print(f"docker: {missed} runs whose first restart inspect did not catch")


if __name__ == "__main__":
    main()
