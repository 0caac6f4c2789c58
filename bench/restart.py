"""Restart recovery: N containers outlive a SIGKILLed daemon, K of them die while it is down.

For each daemon in turn (the other one idle):

1. N containers `sleep 100000` (`ctr run -d`, one at a time or `--parallel P` at once), all
   listed RUNNING, their pids taken from `ctr tasks ls`;
2. the daemon is SIGKILLed by pid: its shims, in sessions of their own, keep running. Then the
   container process of K of them (spread over the N) is SIGKILLed, and `--down` seconds pass;
3. the daemon is started again on the same root, state and socket (containerd inside its old
   mount namespace, entered through a surviving shim: its shims' sockets are in that /run),
   and `ctr tasks ls` is polled about every 10 ms once the socket accepts connections. Times
   from the spawn: to the first answer, to the N-K survivors all listed RUNNING, and to the K
   listed STOPPED as well (if that does not happen within `--wait` seconds, what was listed
   for the K when the survivors were all RUNNING, and at the end, is shown);
4. exits: from the first answer `ctr events` listens for `--listen` seconds: the K's
   /tasks/exit published live then. ctrd also keeps an event log: the K's /tasks/exit it holds
   from just before the kill until now (`ctrctl events --since --until`); containerd has none.
   Each of the K should be published exactly once. The status Tasks.Wait and Tasks.Delete
   (over gRPC) give for each of the K: the true one is 137 (SIGKILL);
5. with `--restarts R`, R-1 more restarts (SIGKILL, 1 s down, nothing else killed), timed to
   the N-K listed RUNNING: their median, since one restart's time varies by tens of percent;
6. every task and container is removed. At the end (or on Ctrl-C) the daemons are stopped and
   what they left is killed by pid and unmounted (see common.py).

What the restarted daemon logged of warnings and errors (and Python tracebacks), removal
included, is shown (ctrd logs at `--ctrd-log-level`, info by default); `--logs DIR` keeps both
daemons' logs.

    /opt/ctrd/bin/python bench/restart.py [-n 100] [-k 10] [--down 5] [--wait 30] [--listen 3]
                             [--parallel 1] [--restarts 1] [--daemons ctrd,containerd]
                             [--ctrd-log-level info] [--logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import procs
from common import (
    DAEMONS,
    NAMESPACE,
    REPO,
    Daemon,
    daemons,
    import_busybox,
    parse_daemons,
    remove_containers,
    run,
    scratch_dir,
    sleeper_ids,
    spawn_containerd,
    spawn_ctrd,
    start_sleepers,
    wait_gone,
)

POLL = 0.01  # seconds between two `ctr tasks ls` while the daemon recovers
EXIT = "/tasks/exit"
# Warning and error lines of either daemon's log, and what Python prints of an exception.
_WARNINGS = re.compile(
    r'"level": ?"(warning|error|critical)"|level=(warning|error|fatal)'
    r"|^Task exception|^Traceback|^[\w.]*(Error|Exception)\b"
)

Listing = dict[str, tuple[str, str]]  # container id -> (pid, status), as `ctr tasks ls` shows


@dataclass(frozen=True)
class Recovery:
    n: int
    killed: tuple[str, ...]  # the K
    start_wall: float
    answered: float | None  # seconds from the spawn to the first `ctr tasks ls` answer
    survivors_running: float | None  # ... to the N-K all listed RUNNING
    complete: float | None  # ... to the K listed STOPPED as well
    killed_then: Counter[str]  # what was listed for the K when the N-K were RUNNING
    killed_last: Counter[str]  # and in the last listing
    live: Counter[str]  # container id -> /tasks/exit seen by `ctr events` after the restart
    logged: Counter[str] | None  # ... in ctrd's event log, since just before the kill
    waited: dict[str, str]  # container id -> Tasks.Wait's exit status, or the gRPC error
    deleted: dict[str, str]  # ... Tasks.Delete's
    warnings: list[str]  # the restarted daemon's warning and error log lines, removal included
    again: list[float]  # further restarts (`--restarts`): seconds to the N-K listed RUNNING

    def rows(self) -> dict[str, float | None]:
        k, logged = self.killed, self.logged or Counter()
        in_log = None if self.logged is None else sum(logged[c] > 0 for c in k)
        return {
            "containers": self.n,
            "of them killed while the daemon was down": len(self.killed),
            "start: wall (s)": self.start_wall,
            "restart: first answer (s)": self.answered,
            "restart: N-K listed RUNNING (s)": self.survivors_running,
            "restart: and the K listed STOPPED (s)": self.complete,
            f"restarts 2..{len(self.again) + 1}: N-K RUNNING, median (s)": (
                statistics.median(self.again) if self.again else None
            ),
            "  min (s)": min(self.again) if self.again else None,
            "K listed STOPPED at the end": self.killed_last["STOPPED"],
            "K exits published live (ctr events)": sum(self.live[c] > 0 for c in k),
            "K exits in the event log": in_log,
            "K exits published more than once": sum(self.live[c] > 1 or logged[c] > 1 for c in k),
            "K with Wait status 137": sum(s == "137" for s in self.waited.values()),
            "K with Delete status 137": sum(s == "137" for s in self.deleted.values()),
        }


def _accepts(address: str) -> bool:
    """Whether the socket takes connections: ctr would wait 10 s for one that does not exist."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def list_tasks(daemon: Daemon) -> Listing | None:
    """`ctr tasks ls` of `NAMESPACE`, or None when the daemon does not answer."""
    try:
        result = run(
            ["ctr", "-a", daemon.address, "-n", NAMESPACE, "tasks", "ls"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if result.returncode:
        return None
    rows = (line.split() for line in result.stdout.splitlines()[1:])
    return {f[0]: (f[1], f[2]) for f in rows if len(f) >= 3}


def statuses(listing: Listing, ids: Iterable[str]) -> Counter[str]:
    return Counter(listing.get(cid, ("", "absent"))[1] for cid in ids)


def wait_all_running(daemon: Daemon, ids: Sequence[str], timeout: float = 120) -> Listing:
    deadline = time.monotonic() + timeout
    while True:
        listing = list_tasks(daemon) or {}
        shown = statuses(listing, ids)
        if shown["RUNNING"] == len(ids):
            return listing
        if time.monotonic() > deadline:
            sys.exit(f"{daemon.name}: not all {len(ids)} tasks RUNNING: {dict(shown)}")
        time.sleep(0.2)


def respawn(daemon: Daemon, ctrd_log_level: str) -> None:
    """Start the daemon again as it was; `daemon.proc` is the new one (what cleanup stops)."""
    if daemon.name == "ctrd":
        daemon.proc = spawn_ctrd(daemon.base, ctrd_log_level, append=True)
        return
    shims = sorted(procs.shims_of(procs.table(), daemon.address, daemon.base))
    daemon.proc = spawn_containerd(daemon.base, mount_ns_of=shims[0] if shims else None)


def daemon_log(daemon: Daemon) -> Path:
    return daemon.base / f"{daemon.name}.log"


@dataclass
class Watch:
    """What the polling after a restart saw, in seconds from the spawn, and its listener."""

    answered: float | None = None
    survivors_running: float | None = None
    complete: float | None = None
    killed_then: Counter[str] | None = None
    killed_last: Counter[str] | None = None
    events: subprocess.Popen[bytes] | None = None  # `ctr events`, from the first answer on
    listening: float = 0.0  # when it started (perf_counter)


def watch_recovery(
    watch: Watch, daemon: Daemon, spawned: float, survivors: Sequence[str],
    killed: Sequence[str], timeout: float, listener: Path,
) -> None:  # fmt: skip
    """Poll `ctr tasks ls` until the survivors are RUNNING and the killed STOPPED, or timeout.

    At the first answer, `ctr events` starts writing to `listener`: the caller stops it.
    """
    while time.perf_counter() - spawned < timeout:
        if daemon.proc.poll() is not None:
            sys.exit(f"{daemon.name} exited on restart: {daemon_log(daemon).read_text()[-2000:]}")
        if not _accepts(daemon.address):
            time.sleep(POLL)
            continue
        listing = list_tasks(daemon)
        now = time.perf_counter() - spawned
        if listing is None:
            time.sleep(POLL)
            continue
        if watch.answered is None:
            watch.answered = now
            with open(listener, "wb") as out:
                watch.events = subprocess.Popen(
                    ["ctr", "-a", daemon.address, "events"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            watch.listening = time.perf_counter()
        watch.killed_last = statuses(listing, killed)
        survivors_ok = statuses(listing, survivors)["RUNNING"] == len(survivors)
        if survivors_ok and watch.survivors_running is None:
            watch.survivors_running = now
            watch.killed_then = watch.killed_last
        if survivors_ok and watch.killed_last["STOPPED"] == len(killed):
            watch.complete = now
            return
        time.sleep(POLL)


def exits_in(lines: Iterable[str], ids: Iterable[str]) -> Counter[str]:
    """/tasks/exit events per container of `ids`, from lines `TIME NAMESPACE TOPIC JSON`.

    ctr prints containerd's field names (container_id), ctrctl protobuf's JSON (containerId).
    """
    wanted = set(ids)
    found: Counter[str] = Counter()
    for line in lines:
        fields = line.split(" ", 3)
        if len(fields) < 4 or fields[2] != EXIT or fields[1] != NAMESPACE:
            continue
        try:
            event = json.loads(fields[3])
        except json.JSONDecodeError:
            continue
        cid = event.get("container_id", event.get("containerId"))
        if cid in wanted:
            found[cid] += 1
    return found


def logged_exits(daemon: Daemon, since: float, ids: Sequence[str]) -> Counter[str]:
    """The K's /tasks/exit that ctrd's event log holds from `since` (Unix seconds) to now."""
    result = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", daemon.address, "--namespace", NAMESPACE,
         "events", "--since", f"{since:.6f}", "--until", f"{time.time():.6f}",
         "--filter", f"topic={EXIT}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode:
        print(f"{daemon.name}: ctrctl events failed: {result.stderr.strip()}", file=sys.stderr)
    return exits_in(result.stdout.splitlines(), ids)


def wait_and_delete(daemon: Daemon, ids: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Tasks.Wait then Tasks.Delete for each of `ids`: exit statuses, or the gRPC error codes."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import grpc

    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

    metadata = (("containerd-namespace", NAMESPACE),)
    waited: dict[str, str] = {}
    deleted: dict[str, str] = {}
    with grpc.insecure_channel(f"unix:{daemon.address}") as channel:
        stub = tasks_pb2_grpc.TasksStub(channel)
        for cid in ids:
            try:
                answer = stub.Wait(
                    tasks_pb2.WaitRequest(container_id=cid), metadata=metadata, timeout=5
                )
                waited[cid] = str(answer.exit_status)
            except grpc.RpcError as e:
                waited[cid] = e.code().name.lower()
            try:
                gone = stub.Delete(
                    tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=metadata, timeout=30
                )
                deleted[cid] = str(gone.exit_status)
            except grpc.RpcError as e:
                deleted[cid] = e.code().name.lower()
    return waited, deleted


def measure(daemon: Daemon, image: str, args: argparse.Namespace) -> Recovery:
    print(f"{daemon.name}: starting {args.n} containers", flush=True)
    wall, _ = start_sleepers(daemon, image, args.n, args.parallel)
    ids = sleeper_ids(daemon, args.n)
    listing = wait_all_running(daemon, ids)
    killed = [ids[i * args.n // args.k] for i in range(args.k)] if args.k else []
    survivors = [cid for cid in ids if cid not in set(killed)]
    shims = procs.shims_of(procs.table(), daemon.address, daemon.base)

    print(f"{daemon.name}: SIGKILL the daemon, then {args.k} containers; {args.down} s down")
    since = time.time()
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    for cid in killed:
        if (pid := int(listing[cid][0])) > 1:  # never 0 or -1: this group, everything
            os.kill(pid, signal.SIGKILL)
    time.sleep(args.down)
    alive = shims & procs.shims_of(procs.table(), daemon.address, daemon.base)
    if len(alive) != len(shims):
        print(f"{daemon.name}: {len(shims) - len(alive)} of {len(shims)} shims died with it")

    log_size = daemon_log(daemon).stat().st_size
    listener = daemon.base / "events.out"
    watch = respawn_and_watch(daemon, survivors, killed, args, listener, args.listen)
    if watch.answered is None:
        sys.exit(f"{daemon.name} did not answer within {args.wait} s after its restart")
    live = exits_in(listener.read_text(errors="replace").splitlines(), killed)
    logged = logged_exits(daemon, since, killed) if daemon.name == "ctrd" else None
    waited, deleted = wait_and_delete(daemon, killed)
    again = [restart_again(daemon, survivors, args) for _ in range(args.restarts - 1)]

    print(f"{daemon.name}: removing the containers", flush=True)
    shims = procs.shims_of(procs.table(), daemon.address, daemon.base)
    remove_containers(daemon)
    wait_gone(shims, 30)
    with open(daemon_log(daemon), errors="replace") as f:
        f.seek(log_size)
        warnings = [line.rstrip() for line in f if _WARNINGS.search(line)]
    return Recovery(
        args.n, tuple(killed), wall, watch.answered, watch.survivors_running, watch.complete,
        watch.killed_then or Counter(), watch.killed_last or Counter(), live, logged,
        waited, deleted, warnings, again,
    )  # fmt: skip


def respawn_and_watch(
    daemon: Daemon, survivors: Sequence[str], killed: Sequence[str],
    args: argparse.Namespace, listener: Path, listen: float = 0.0,
) -> Watch:  # fmt: skip
    """Start the daemon again and watch it recover; `ctr events` listens `listen` s more."""
    spawned = time.perf_counter()
    respawn(daemon, args.ctrd_log_level)
    watch = Watch()
    try:
        watch_recovery(watch, daemon, spawned, survivors, killed, args.wait, listener)
        if watch.events is not None:
            time.sleep(max(0.0, watch.listening + listen - time.perf_counter()))
    finally:
        if watch.events is not None:
            watch.events.terminate()
            watch.events.wait()
    return watch


def restart_again(daemon: Daemon, survivors: Sequence[str], args: argparse.Namespace) -> float:
    """SIGKILL the daemon and start it again at once: seconds until the N-K are RUNNING."""
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    time.sleep(1)
    watch = respawn_and_watch(daemon, survivors, [], args, daemon.base / "again.out")
    if watch.complete is None:
        sys.exit(f"{daemon.name}: the survivors were not all RUNNING {args.wait} s after a restart")
    return watch.complete


def _cell(value: float | None, unit: bool) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:12.2f}" if unit else f"{value:12.0f}"


def _counts(counter: Counter[str] | Iterable[str]) -> str:
    counted = counter if isinstance(counter, Counter) else Counter(counter)
    return ", ".join(f"{key} x{n}" for key, n in counted.most_common()) or "none"


def report(title: str, results: dict[str, Recovery]) -> None:
    names = list(results)
    rows = {name: result.rows() for name, result in results.items()}
    both = "ctrd" in results and "containerd" in results
    width = max(len(row) for row in rows[names[0]])
    header = "".join(f"{name:>12}" for name in names) + (f"{'ratio':>8}" if both else "")
    print(f"\n{title}\n  {'':<{width}}{header}")
    for row in rows[names[0]]:
        values = {name: rows[name][row] for name in names}
        line = "".join(_cell(values[name], "(s)" in row) for name in names)
        ctrd, other = values.get("ctrd"), values.get("containerd")
        if both and "(s)" in row:
            ratio = f"{ctrd / other:8.2f}" if ctrd is not None and other else f"{'-':>8}"
            line += ratio
        print(f"  {row:<{width}}{line}")
    for name, result in results.items():
        k = result.killed
        shown = {
            "the K listed when the N-K were RUNNING": _counts(result.killed_then),
            "the K listed at the end": _counts(result.killed_last),
            "times each of the K was seen live": _counts(str(result.live[c]) for c in k),
        }
        if result.logged is not None:
            logged = result.logged
            shown["times each of the K is in the log"] = _counts(str(logged[c]) for c in k)
        shown["Tasks.Wait statuses of the K"] = _counts(result.waited.values())
        shown["Tasks.Delete statuses of the K"] = _counts(result.deleted.values())
        shown["warning/error lines logged since the restart"] = str(len(result.warnings))
        print(f"\n  {name}:")
        for label, value in shown.items():
            print(f"    {label + ':':<46} {value}")
        for line in result.warnings[:5]:
            print(f"      {line[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="containers per daemon")
    parser.add_argument("-k", type=int, default=10, help="containers killed while it is down")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the daemon stays down")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for recovery")
    parser.add_argument(
        "--listen", type=float, default=3.0, help="seconds ctr events listens after the restart"
    )
    parser.add_argument("--parallel", type=int, default=1, help="ctr run -d at once")
    parser.add_argument(
        "--restarts", type=int, default=1, help="restarts in all (the later ones kill nothing)"
    )
    parser.add_argument("--daemons", type=parse_daemons, default=DAEMONS)
    parser.add_argument("--ctrd-log-level", default="info")
    parser.add_argument("--logs", type=Path, help="keep the daemons' logs in this directory")
    args = parser.parse_args()
    if not 0 <= args.k <= args.n:
        parser.error("-k must be between 0 and -n")

    results: dict[str, Recovery] = {}
    with scratch_dir("ctrd-bench-restart-") as scratch:
        try:
            with daemons(scratch, args.daemons, args.ctrd_log_level) as running:
                image = ""
                for daemon in running:
                    image = import_busybox(daemon, scratch)
                for daemon in running:
                    results[daemon.name] = measure(daemon, image, args)
        finally:
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in scratch.glob("*/*.log"):
                    shutil.copy(log, args.logs / log.name)
    report(
        f"restart: {args.n} containers (`sleep 100000`), daemon SIGKILLed, {args.k} of them "
        f"killed while it was down for {args.down:g} s, then the daemon restarted",
        {name: results[name] for name in DAEMONS if name in results},
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (containers, shims and daemons were cleaned up)")
