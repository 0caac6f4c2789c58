"""An exec in a running container, layer by layer: `ctr tasks exec` on ctrd vs containerd, and
ctrd's shim alone against `runc exec` alone.

One busybox container (`sleep`) per daemon. Then, the runs interleaved (who goes first flips
every run):

1. `ctr tasks exec --exec-id eN CID true` on each daemon: Tasks.Exec, Start, Wait and Delete
   as ctr sends them, timed end to end.
2. ctrd's shim, spoken to directly on a connection of its own (subscribed to its events, as
   the daemon is): exec, start, the `/tasks/exit` event, delete, each timed; against
   `runc --root R exec CID true`, the OCI runtime alone running the same process in the same
   container and waiting for it (the floor of part 2's total), and `runc exec --detach`
   (the floor of the shim's start).

    /opt/ctrd/bin/python bench/exec_path.py [--runs 40] [--daemons ctrd,containerd]
        [--parts ctr,shim]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    DAEMONS,
    NAMESPACE,
    REPO,
    Daemon,
    Samples,
    daemons,
    import_busybox,
    parse_daemons,
    run,
    scratch_dir,
)

CID = "exec-path"


def start_sleeper(daemon: Daemon, image: str) -> None:
    daemon.ctr(
        "run", "-d", "--fifo-dir", str(daemon.fifo_dir), image, CID, "sleep", "1000000",
        ns=NAMESPACE, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def ctr_exec(daemon: Daemon, n: int) -> float:
    return daemon.ctr(
        "tasks", "exec", "--fifo-dir", str(daemon.fifo_dir), "--exec-id", f"e{n}", CID, "true",
        ns=NAMESPACE, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip


def measure_ctr(started: list[Daemon], runs: int) -> None:
    samples = Samples()
    for daemon in started:
        ctr_exec(daemon, 0)
    for n in range(1, runs + 1):
        for daemon in started if n % 2 else list(reversed(started)):
            samples.add(daemon.name, ctr_exec(daemon, n))
    print(f"\n== ctr tasks exec CID true, {runs} runs each")
    samples.report_spread("exec:", lambda s: f"{s * 1000:.1f} ms")


# --- 2. the shim alone -----------------------------------------------------------------------


def _bundle(daemon: Daemon) -> Path:
    return daemon.base / "state" / "tasks" / NAMESPACE / CID


def _runc_root(daemon: Daemon) -> str:
    return str(daemon.base / "state" / "runc" / NAMESPACE)


async def shim_runs(daemon: Daemon, runs: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(REPO))
    from supervisor.runtime.shimclient import ShimClient

    bundle = _bundle(daemon)
    address = (bundle / "address").read_text().removeprefix("unix://")
    spec = json.loads((bundle / "config.json").read_text())["process"]
    spec["args"] = ["true"]
    client = await ShimClient.connect(address)
    times: dict[str, list[float]] = {}
    try:
        await client.call("events", {"after": 1 << 62})  # live events only
        events = client.events()
        for n in range(runs):
            exec_id = f"shim{n}"
            marks = [time.perf_counter()]
            await client.call("exec", {"exec_id": exec_id, "spec": spec})
            marks.append(time.perf_counter())
            await client.call("start", {"exec_id": exec_id})
            marks.append(time.perf_counter())
            async for event in events:
                if event.topic == "/tasks/exit" and event.event.get("exec_id") == exec_id:
                    break
            marks.append(time.perf_counter())
            await client.call("delete", {"exec_id": exec_id})
            marks.append(time.perf_counter())
            for name, (a, b) in zip(
                ("exec", "start", "exit", "delete", "total"),
                [*itertools.pairwise(marks), (marks[0], marks[-1])],
                strict=True,
            ):
                times.setdefault(name, []).append(b - a)
            await asyncio.sleep(0.02)  # as far apart as the runc runs
    finally:
        await client.close()
    return times


def runc_runs(daemon: Daemon, runs: int, detach: bool) -> list[float]:
    spec = json.loads((_bundle(daemon) / "config.json").read_text())["process"]
    spec["args"] = ["true"]
    process = daemon.base / "floor-process.json"
    process.write_text(json.dumps(spec))
    argv = ["runc", "--root", _runc_root(daemon), "exec", *(["--detach"] if detach else [])]
    argv += ["--process", str(process), CID]
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=60)
        times.append(time.perf_counter() - began)
        time.sleep(0.02)
    return times


def measure_shim(daemon: Daemon, runs: int) -> None:
    shim: dict[str, list[float]] = {}
    floor: dict[str, list[float]] = {"runc exec": [], "runc exec --detach": []}
    batch = 5
    for _ in range(0, runs, batch):  # interleaved in batches, so both see the same load
        for name, values in asyncio.run(shim_runs(daemon, batch)).items():
            shim.setdefault(name, []).extend(values)
        floor["runc exec"] += runc_runs(daemon, batch, detach=False)
        floor["runc exec --detach"] += runc_runs(daemon, batch, detach=True)
    print(f"\n== ctrd's shim alone vs runc alone, {len(shim['total'])} runs (medians)")
    for name, values in [*shim.items(), *floor.items()]:
        label = name if name.startswith("runc") else f"shim {name}"
        print(f"  {label:<22} {statistics.median(values) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--daemons", type=parse_daemons, default=DAEMONS)
    parser.add_argument("--parts", default="ctr,shim")
    args = parser.parse_args()
    with scratch_dir("ctrd-bench-exec-") as scratch, daemons(scratch, args.daemons) as started:
        for daemon in started:
            start_sleeper(daemon, import_busybox(daemon, scratch))
        if "ctr" in args.parts:
            measure_ctr(started, args.runs)
        ctrd = next((d for d in started if d.name == "ctrd"), None)
        if "shim" in args.parts and ctrd is not None:
            measure_shim(ctrd, args.runs)


if __name__ == "__main__":
    main()
