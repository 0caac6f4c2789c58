"""Kubernetes' CRI: ctrd's against containerd's (Debian's 1.6.20 by `anchor-containerd.sh`).

Both runtimes pull critest's images (busybox, pause) from the loopback registry that
`../shared/tools/cri/images/make-images.sh` fills (`--registry`, default 127.0.0.1:5066; when
none answers there, the images are built into the scratch dir and served by a registry of
their own on a free port, stopped at the end), and put pods on a CNI bridge of their own
(bridge + host-local + portmap, the same conflist shape; bridges and /24s that nothing else
uses). Pods are busybox pods as kubelet asks for them: the containers' PID namespace per
container (kubelet's default, so ctrd holds the pod's namespaces with pins and no pause).

1. crictl pod cycle (`--runs`, default 10, after one warm-up cycle each): `runp`, `create`,
   `start`, then stop+remove of the pod (`stopp` + `rmp`), and the whole cycle; each
   crictl call timed end to end; the runtimes take turns cycle by cycle (who goes first flips
   every cycle); medians, p90, min and the ctrd/containerd ratio (issue 17's target for the
   whole cycle: at most 0.6).
2. memory per pod at `--pods` (default 50) pods of one `sleep` container each, one runtime at a
   time (the other idle): the shims' PSS (ctrd's zygote included), the pause processes' (none
   on ctrd for these pods) and the daemon's PSS growth over its baseline, per pod (target:
   ctrd's total at most 0.4x containerd's), once KSM has merged what it would (as
   bench/density.py: at most `--ksm-wait` s); the host's MemAvailable drop per pod too; the
   containers' own processes are left out (the same on both). Then `crictl rmp -fa`, timed.
3. kubelet manifest -> container Running (`run-kubelet.sh` + `test-static-pod.sh`, the tools'
   standalone kubelet 1.26 with static pods): `--kubelet-runs` pods per kubelet start, in
   `--kubelet-rounds` rounds alternating the runtimes (target: ctrd's at most containerd's).
   A runtime whose pod does not come up is reported as failing, and the run goes on.

Everything is removed at the end, also on Ctrl-C: pods through the CRI, kubelet stopped (its
sysctls restored), containerd stopped by its script (pods, shims, mounts, bridge), ctrd
stopped by pid with its shims and mounts, the bridges, portmap's per-pod rules, ctrd's nftables
table. Run as root with ctrd's interpreter:

    /opt/ctrd/bin/python bench/cri.py [--runs 10] [--pods 50] [--kubelet-runs 3]
        [--kubelet-rounds 2] [--parts cycle,memory,kubelet] [--runtimes ctrd,containerd]
        [--registry 127.0.0.1:5066] [--ksm-wait 120] [--ksm-pages-to-scan N] [--ctrd-debug]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import procs
from common import REPO, Daemon, Samples, run, scratch_dir, start_ctrd, tear_down
from density import _ksm_rate, ksm_settle

sys.path.insert(0, str(REPO))

from tests.support import cri as harness

TOOLS = harness.TOOLS
CRICTL = harness.CRICTL
BUSYBOX = harness.BUSYBOX
PAUSE = harness.PAUSE
RUNTIMES = ("ctrd", "containerd")
PARTS = ("cycle", "memory", "kubelet")
MIB = 1 << 20


@dataclass
class Runtime:
    name: str
    endpoint: str
    daemon_pid: int
    address: str  # the socket its shims name
    base: Path  # its shims' and state's directories are under it

    def crictl(self, *args: str, timeout: float = 120) -> tuple[float, str]:
        """(seconds, stdout) of one crictl call; fails loudly when crictl does."""
        start = time.perf_counter()
        done = run(
            [CRICTL, "--config", "/dev/null", "--runtime-endpoint", self.endpoint,
             "--image-endpoint", self.endpoint, "--timeout", f"{int(timeout)}s", *args],
            capture_output=True, text=True, timeout=timeout + 10,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: crictl {' '.join(args)}: {done.stderr.strip()}")
        return seconds, str(done.stdout).strip()


# --- the images ----------------------------------------------------------------------------


def _answers(registry: str) -> bool:
    host, _, port = registry.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
        return True
    return False


@contextlib.contextmanager
def images_registry(wanted: str, scratch: Path) -> Iterator[str]:
    """`wanted` when a registry answers there, else a registry of our own filled now."""
    if _answers(wanted):
        yield wanted
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        registry = f"127.0.0.1:{s.getsockname()[1]}"
    work = scratch / "images"
    env = {**os.environ, "WORK": str(work), "REGISTRY": registry}
    script = str(TOOLS / "images" / "make-images.sh")
    print(f"no registry at {wanted}: building critest's images, served at {registry}")
    try:
        subprocess.run([script, "all"], env=env, check=True, stdout=subprocess.DEVNULL)
        yield registry
    finally:
        subprocess.run([script, "registry", "stop"], env=env, check=False)


# --- the runtimes --------------------------------------------------------------------------


@contextlib.contextmanager
def ctrd_runtime(scratch: Path, registry: str, log_level: str = "info") -> Iterator[Runtime]:
    base = scratch / "ctrd"
    base.mkdir(parents=True)
    net = harness.make_pod_net(base)
    table = f"ctrdb{os.getpid()}"
    config = base / "ctrd.toml"
    config.write_text(f'[network]\nnft_table = "{table}"\n' + harness.cri_section(net, registry))
    daemon: Daemon | None = None
    try:
        daemon = start_ctrd(base, log_level, extra_args=("--config", str(config)))
        yield Runtime("ctrd", f"unix://{daemon.address}", daemon.proc.pid, daemon.address, base)
    finally:
        if daemon is not None:
            _remove_pods(f"unix://{daemon.address}")
            tear_down(daemon)
        harness.remove_pod_net(net)
        from supervisor.network import nft

        with contextlib.suppress(Exception):
            nft.delete(table)


@contextlib.contextmanager
def containerd_runtime(scratch: Path, registry: str) -> Iterator[Runtime]:
    work = scratch / "anchor"
    net = harness.make_pod_net(scratch / "anchor-net")  # a bridge name and subnet only
    env = {
        **os.environ, "WORK": str(work), "REGISTRY": registry, "BRIDGE": net.bridge,
        "SUBNET": net.subnet, "LOG_LEVEL": "info",
    }  # fmt: skip
    script = str(TOOLS / "anchor-containerd.sh")
    try:
        subprocess.run([script, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        sock = work / "containerd.sock"
        pid = int((work / "containerd.pid").read_text())
        yield Runtime("containerd", f"unix://{sock}", pid, str(sock), work)
    finally:
        subprocess.run([script, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        harness.remove_pod_net(net)


def _remove_pods(endpoint: str) -> None:
    subprocess.run(
        [CRICTL, "--config", "/dev/null", "--runtime-endpoint", endpoint, "--timeout", "120s",
         "rmp", "-fa"],
        capture_output=True, check=False, timeout=300,
    )  # fmt: skip


# --- 1. the crictl pod cycle ---------------------------------------------------------------


def pod_files(scratch: Path, rt: Runtime, name: str) -> tuple[Path, Path]:
    """crictl's pod and container JSON: a busybox `sleep`, PID namespace per container."""
    pod = {
        "metadata": {"name": name, "namespace": "bench", "uid": uuid.uuid4().hex, "attempt": 0},
        "log_directory": str(scratch / "logs" / rt.name / name),
        "linux": {"security_context": {"namespace_options": {"pid": 1}}},  # CONTAINER
    }
    container = {
        "metadata": {"name": "sleeper"},
        "image": {"image": BUSYBOX},
        "command": ["sleep", "100000"],
        "log_path": "sleeper.log",
        "linux": {},
    }
    pod_path = scratch / f"{rt.name}-{name}-pod.json"
    container_path = scratch / f"{rt.name}-{name}-container.json"
    pod_path.write_text(json.dumps(pod))
    container_path.write_text(json.dumps(container))
    return pod_path, container_path


def start_pod(scratch: Path, rt: Runtime, name: str) -> tuple[str, dict[str, float]]:
    pod_json, container_json = pod_files(scratch, rt, name)
    t_runp, pod = rt.crictl("runp", str(pod_json))
    t_create, cid = rt.crictl("create", pod, str(container_json), str(pod_json))
    t_start, _ = rt.crictl("start", cid)
    return pod, {"runp": t_runp, "create": t_create, "start": t_start}


def cycle(scratch: Path, rt: Runtime, n: int) -> dict[str, float]:
    pod, times = start_pod(scratch, rt, f"cycle-{n}")
    t_stop, _ = rt.crictl("stopp", pod)
    t_rm, _ = rt.crictl("rmp", pod)
    times["stop+rm"] = t_stop + t_rm
    times["cycle"] = sum(times.values())
    # crictl's fixed cost per command: its start, the connection and one trivial call
    times["crictl version (not in the cycle)"], _ = rt.crictl("version")
    return times


def measure_cycles(scratch: Path, runtimes: Sequence[Runtime], runs: int) -> None:
    for rt in runtimes:
        cycle(scratch, rt, -1)  # warm-up: the daemon's parts built, the image's snapshots
    series: dict[str, Samples] = {}
    for n in range(runs):
        order = runtimes if n % 2 == 0 else list(reversed(runtimes))
        for rt in order:
            for step, seconds in cycle(scratch, rt, n).items():
                series.setdefault(step, Samples()).add(rt.name, seconds)
    print(f"\n== crictl pod cycle: busybox pod, one `sleep` container, {runs} runs each")
    for step, samples in series.items():
        samples.report_spread(f"{step}:", lambda s: f"{s * 1000:.1f} ms")


def report_server_times(log: Path) -> None:
    """ctrd's own time per CRI call (its debug log's `rpc` lines), beside crictl's wall time:
    what is left is crictl's start and the round trip."""
    times: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"/runtime.v1.' not in line or '"event": "rpc"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            event = json.loads(line)
            times.setdefault(event["method"].rsplit("/", 1)[-1], []).append(float(event["ms"]))
    print("\nctrd's own time per CRI call (its log; --ctrd-debug), all calls of the run:")
    for method, values in sorted(times.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {method:<24} {len(values):>4} calls  median {statistics.median(values):7.1f} ms")


# --- 2. memory per pod ---------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    shims: procs.Memory
    pause: procs.Memory
    daemon: procs.Memory
    available: int


def footprint(rt: Runtime) -> Footprint:
    table = procs.table()
    shims = procs.shims_of(table, rt.address, rt.base)
    inside = procs.descendants(table, shims) - shims
    pauses = {pid for pid in inside if table[pid].words[:1] in (("/pause",), ("pause",))}
    return Footprint(
        procs.memory(shims), procs.memory(pauses), procs.memory_of(rt.daemon_pid),
        procs.mem_available(),
    )  # fmt: skip


def measure_memory(scratch: Path, rt: Runtime, pods: int, ksm_wait: float) -> dict[str, float]:
    _remove_pods(rt.endpoint)
    time.sleep(2)
    before = footprint(rt)
    begin = time.perf_counter()
    for n in range(pods):
        start_pod(scratch, rt, f"density-{n}")
    started = time.perf_counter() - begin
    waited, ksmd = ksm_settle(ksm_wait)
    after = footprint(rt)
    begin = time.perf_counter()
    rt.crictl("rmp", "-fa", timeout=600)
    removed = time.perf_counter() - begin
    growth = (after.daemon.pss - before.daemon.pss) / pods / MIB
    shims = after.shims.pss / pods / MIB
    pause = after.pause.pss / pods / MIB
    return {
        "start all (s)": started,
        "shims PSS per pod (MiB)": shims,
        "shim processes": after.shims.count,
        "pause PSS per pod (MiB)": pause,
        "pause processes": after.pause.count,
        "daemon PSS growth per pod (MiB)": growth,
        "total per pod (MiB)": shims + pause + growth,
        "MemAvailable drop per pod (MiB)": (before.available - after.available) / pods / MIB,
        "KSM wait (s)": waited,
        "ksmd CPU meanwhile (%)": ksmd,
        "rmp -fa (s)": removed,
    }


def report_memory(pods: int, results: dict[str, dict[str, float]]) -> None:
    print(f"\n== memory at {pods} pods (one `sleep` container each), one runtime at a time")
    names = list(results)
    print(f"  {'':<34}" + "".join(f"{n:>12}" for n in names) + (
        f"{'ratio':>8}" if len(names) == 2 else ""
    ))  # fmt: skip
    for row in next(iter(results.values())):
        cells = [results[n][row] for n in names]
        line = f"  {row:<34}" + "".join(f"{v:>12.2f}" for v in cells)
        if len(names) == 2 and cells[1]:
            line += f"{cells[0] / cells[1]:>8.2f}"
        print(line)


# --- 3. kubelet: manifest -> Running -------------------------------------------------------

_UP = re.compile(r"manifest -> Running: ([\d.]+) s")


def kubelet_session(scratch: Path, rt: Runtime, runs: int) -> list[float | None]:
    """One kubelet start against `rt`, `runs` static pods timed, kubelet stopped."""
    env = {**os.environ, "WORK": str(scratch / "kubelet"), "HOLD": "0.5"}
    kubelet = str(TOOLS / "run-kubelet.sh")
    found: list[float | None] = []
    try:
        subprocess.run([kubelet, "start", rt.endpoint], env=env, check=True, capture_output=True)
        for _ in range(runs):
            done = subprocess.run(
                [str(TOOLS / "test-static-pod.sh"), rt.endpoint], env=env,
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            up = _UP.search(done.stdout)
            found.append(float(up.group(1)) if up and done.returncode == 0 else None)
            if found[-1] is None:
                print(f"  {rt.name}: static pod failed:\n{done.stdout[-1500:]}{done.stderr[-500:]}")
                break
    finally:
        subprocess.run([kubelet, "stop"], env=env, check=False, capture_output=True)
    return found


def measure_kubelet(scratch: Path, runtimes: Sequence[Runtime], rounds: int, runs: int) -> None:
    samples = Samples()
    failed: set[str] = set()
    for r in range(rounds):
        order = runtimes if r % 2 == 0 else list(reversed(runtimes))
        for rt in order:
            if rt.name in failed:
                continue
            for seconds in kubelet_session(scratch, rt, runs):
                if seconds is None:
                    failed.add(rt.name)
                else:
                    samples.add(rt.name, seconds)
    print(f"\n== kubelet 1.26 static pod: manifest -> container Running ({rounds} x {runs})")
    if samples.values:
        samples.report_spread("manifest -> Running:", lambda s: f"{s:.3f} s")
    for name in sorted(failed):
        print(f"  {name}: FAILED (see above)")


# --- main ----------------------------------------------------------------------------------


def parse_list(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        if not names or set(names) - set(allowed):
            raise ValueError(f"among {', '.join(allowed)}, got {value!r}")
        return names

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="crictl pod cycles per runtime")
    parser.add_argument("--pods", type=int, default=50, help="pods for the memory figure")
    parser.add_argument("--kubelet-runs", type=int, default=3, help="static pods per kubelet")
    parser.add_argument("--kubelet-rounds", type=int, default=2)
    parser.add_argument("--parts", type=parse_list(PARTS), default=PARTS)
    parser.add_argument("--runtimes", type=parse_list(RUNTIMES), default=RUNTIMES)
    parser.add_argument("--registry", default="127.0.0.1:5066")
    parser.add_argument("--ksm-wait", type=float, default=120, help="at most this long (s)")
    parser.add_argument("--ksm-pages-to-scan", type=int, default=0)
    parser.add_argument(
        "--ctrd-debug", action="store_true",
        help="ctrd logs each call (debug): its own time per CRI call is shown after the cycles",
    )  # fmt: skip
    args = parser.parse_args()
    began = time.monotonic()
    with (
        scratch_dir("ctrd-bench-cri-") as scratch,
        images_registry(args.registry, scratch) as registry,
        contextlib.ExitStack() as stack,
    ):
        level = "debug" if args.ctrd_debug else "info"
        makers = {
            "ctrd": lambda s, r: ctrd_runtime(s, r, level),
            "containerd": containerd_runtime,
        }
        runtimes = [stack.enter_context(makers[n](scratch, registry)) for n in args.runtimes]
        for rt in runtimes:
            for image in (BUSYBOX, PAUSE):
                rt.crictl("pull", image)
        print(f"runtimes: {', '.join(f'{rt.name} {rt.endpoint}' for rt in runtimes)}")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        if "cycle" in args.parts and args.runs:
            measure_cycles(scratch, runtimes, args.runs)
            if args.ctrd_debug and "ctrd" in args.runtimes:
                report_server_times(scratch / "ctrd" / "ctrd.log")
        if "memory" in args.parts and args.pods:
            results = {}
            with _ksm_rate(args.ksm_pages_to_scan):
                for rt in runtimes:
                    results[rt.name] = measure_memory(scratch, rt, args.pods, args.ksm_wait)
            report_memory(args.pods, results)
        if "kubelet" in args.parts and args.kubelet_runs:
            measure_kubelet(scratch, runtimes, args.kubelet_rounds, args.kubelet_runs)
    print(f"\nwall time {time.monotonic() - began:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
