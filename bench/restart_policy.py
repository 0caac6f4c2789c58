"""How soon `--restart always` brings a crashing container back: from its task's exit to its
first restart's task started (the new pid running), for ctrd (issue #16: within 150 ms of
the exit; docker waits 100 ms plus its own overhead).

Each round runs a fresh `ctrctl run -d --restart always IMG sh -c 'sleep 0.2; exit 1'` (no
network) on a ctrd of its own and reads, from the daemon's log, the exit's time (the shim's
`exited_at`) and the time its restart's Start returned. Usage:
`python bench/restart_policy.py --runs 20`. Not measured here: docker on dockerd on
containerd (the comparison the issue asks for).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common


def events(log: Path, name: str, cid: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name and entry.get("id") == cid:
                found.append(entry)
    return found


def first_restart_ms(daemon: common.Daemon, image: str, cid: str) -> float:
    common.run(
        [sys.executable, "-m", "ctl", "-a", daemon.address, "-n", common.NAMESPACE, "run", "-d",
         "--name", cid, "--network", "none", "--restart", "always", image,
         "sh", "-c", "sleep 0.2; exit 1"],
        check=True, capture_output=True, cwd=common.REPO,
    )  # fmt: skip
    log = daemon.base / "ctrd.log"
    deadline = time.monotonic() + 10
    while not (started := events(log, "container_restarted", cid)):
        if time.monotonic() > deadline:
            sys.exit(f"{cid} was not restarted:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    exited = events(log, "restart_scheduled", cid)[0]["exited_at"]
    return (int(started[0]["started_at"]) - int(exited)) / 1e6  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with common.scratch_dir("restart-bench-") as scratch:
        daemon = common.start_ctrd(scratch / "ctrd", log_level="info")
        try:
            image = common.import_busybox(daemon, scratch)
            gaps = []
            for i in range(args.runs):
                gaps.append(first_restart_ms(daemon, image, f"crash{i}"))
                common.run(
                    [sys.executable, "-m", "ctl", "-a", daemon.address, "-n", common.NAMESPACE,
                     "rm", "-f", f"crash{i}"], capture_output=True, cwd=common.REPO,
                )  # fmt: skip
        finally:
            common.tear_down(daemon)
    print(
        f"ctrd: exit -> first restart running, {len(gaps)} runs: median"
        f" {statistics.median(gaps):.1f} ms, min {min(gaps):.1f}, p90 {common.p90(gaps):.1f},"
        f" max {max(gaps):.1f}"
    )


if __name__ == "__main__":
    main()
