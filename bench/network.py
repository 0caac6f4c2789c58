"""Networking: what a bridge and published ports add to a start and a removal, ctrd vs docker.

Docker Engine 20.10 (`dockerd` on a private containerd 1.6, the Debian packages) and ctrd, in
the same run, through their own clients (`docker`, `ctrctl`), each timed end to end:

- `run -d IMG sleep 100000` with `--network none`, on the default bridge, and on the bridge
  with two published ports (`-p 127.0.0.1::80 -p 127.0.0.1::81`, host ports picked);
- `rm -f` of each of those three;
- `run --rm IMG true` with `--network none` and on the bridge.

Each operation is done by both engines in turn before the next (which one goes first flips
every iteration), after a few warm-up iterations. Each round reports medians, and what
networking adds over `--network none` (bridge, bridge + two ports) for each engine: the median
over iterations of the networked operation's time minus the same iteration's `none` one
(paired, so that the machine's slower moments cancel), and the ratio of the two engines'
additions (issue 15's target: ctrd's at most a third of docker's), for starts, removals and
`run --rm`; and `ctrctl run -d -p` over `docker run -d -p` end to end. With `--with-ctr`, the
real `ctr` on ctrd does the same, asking for the bridge and the ports by the labels ctrctl sets
(`ctr run --label ctrd.io/networks=bridge ...`; rm -f is `ctr tasks rm -f` + `containers rm`):
what the daemon alone adds, without ctrctl's own work around it.

Then ctrd's cost per container on one network: `ctrctl run -d IMG sleep 100000` on the default
bridge (with `--sizes-mode ports`, each publishing two ports too) until 1, 100, 500 (`--sizes`)
containers run; at each size the median time of the runs that got there, and of `--probes`
more `ctrctl run -d` + `rm -f` pairs on top of them; kernel objects per container (links,
ctrd's nftables rules, read inside ctrd's namespace by netns_objects.py; mounts under ctrd's
directories; ctrd's open files: past 1024, none may reach a select()); memory per container
(ctrd's RSS growth over its baseline, its shims' RSS and PSS, the containers' processes').
Then all are removed (timed) and what is left over the baseline is shown: it should be nothing.

Isolation: networks are shared ground. dockerd (with its docker0, iptables chains, NAT and
docker-proxy) and its containerd run inside a network and mount namespace of their own, held
by a `sleep` that `unshare` started, with a tmpfs on /run (containerd's shims put sockets in
/run/containerd/s whatever the config says); ctrd runs inside another fresh network namespace
(its mounts stay in the host's mount namespace, where ctrctl makes its FIFOs), with a config
naming its own nftables table. Both namespaces start with only `lo`, up. The host's links,
firewall and routes are never touched. At the end, or on Ctrl-C: containers removed, daemons
stopped by pid, shims and anything still inside a namespace killed by pid, ctrd's mounts
unmounted, the holders killed (their namespaces, bridges, veths and rules go with them).

    /opt/ctrd/bin/python bench/network.py [--runs 12] [--rounds 2] [--warmup 2]
                                          [--sizes 1,100,500] [--probes 12] [--with-ctr]
                                          [--sizes-mode bridge|ports] [--runs 0 --sizes 0]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import procs
from common import (
    IMAGE,
    NAMESPACE,
    REPO,
    Daemon,
    import_busybox,
    mounts_under,
    remove_cgroups,
    remove_containers,
    run,
    scratch_dir,
    settle,
    start_ctrd,
    tear_down,
    unmount_under,
    wait_gone,
)

sys.path.insert(0, str(REPO))
from supervisor.network.labels import NETWORKS_LABEL, PORTS_LABEL
from tests.support import containerd as containerd_support
from tests.support import dockerd as dockerd_support

MIB = 1 << 20
PROBE = Path(__file__).with_name("netns_objects.py")  # run inside ctrd's namespace
NFT_TABLE = "ctrdbench"  # ctrd's table, inside its own namespace anyway
MODES = ("none", "bridge", "ports")
MODE_ARGS: Mapping[str, tuple[str, ...]] = {
    "none": ("--network", "none"),
    "bridge": (),  # both clients' default: the `bridge` network
    "ports": ("-p", "127.0.0.1::80", "-p", "127.0.0.1::81"),
}
MODE_TITLES = {"none": "--network none", "bridge": "bridge", "ports": "bridge + 2 ports"}


# --- namespaces -----------------------------------------------------------------------------


@dataclass
class Netns:
    """A `sleep` holding a fresh network namespace (lo up), and with `mount` a private mount
    namespace with its own /run; others join them with `enter()`, an nsenter prefix."""

    proc: subprocess.Popen[bytes]
    mount: bool

    @classmethod
    def start(cls, mount: bool) -> Netns:
        setup = "ip link set lo up && exec sleep infinity"
        flags: list[str] = []
        if mount:
            setup = f"mount -t tmpfs tmpfs /run && mkdir /run/containerd && {setup}"
            flags = ["--mount", "--propagation", "private"]
        proc = subprocess.Popen(
            ["unshare", *flags, "--net", "--", "sh", "-c", setup],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        holder = cls(proc, mount)
        deadline = time.monotonic() + 10
        while _comm(proc.pid) != "sleep":  # unshare and sh exec: the pid stays the same
            if proc.poll() is not None or time.monotonic() > deadline:
                holder.close()
                sys.exit(f"could not make a namespace (unshare {' '.join(flags)} --net)")
            time.sleep(0.01)
        return holder

    def enter(self) -> list[str]:
        pid = self.proc.pid
        mount = [f"--mount=/proc/{pid}/ns/mnt"] if self.mount else []
        return ["nsenter", f"--net=/proc/{pid}/ns/net", *mount, "--"]

    def members(self) -> set[int]:
        """Every other process inside this network namespace."""
        own = _ns(self.proc.pid)
        if not own:
            return set()
        pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
        return {pid for pid in pids if pid != self.proc.pid and _ns(pid) == own}

    def close(self) -> int:
        """Kill by pid what is still inside, then the holder; how many were left inside."""
        left = self.members() if self.proc.poll() is None else set()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(left, 10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return len(left)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


# --- the two engines ------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A docker-like CLI bound to one daemon: `argv` then a subcommand."""

    name: str
    argv: tuple[str, ...]
    image: str
    env: Mapping[str, str] | None = None

    def time(self, *args: str) -> float:
        start = time.perf_counter()
        result = run(
            [*self.argv, *args], env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=120,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if result.returncode:
            err = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{self.name} {' '.join(args)}: exit {result.returncode}: {err}")
        return elapsed

    def run_d(self, mode: str, name: str) -> float:
        return self.time(
            "run", "-d", "--name", name, *MODE_ARGS[mode], self.image, "sleep", "100000"
        )

    def rm_f(self, name: str) -> float:
        return self.time("rm", "-f", name)

    def run_rm(self, mode: str) -> float:
        return self.time("run", "--rm", *MODE_ARGS[mode], self.image, "true")


_RUN_RM_IDS = itertools.count()


@dataclass(frozen=True)
class CtrClient(Client):
    """The real `ctr` on ctrd, asking for networking by the labels that ctrctl sets: the
    daemon's share of a networked start or removal, without ctrctl's own work around it."""

    fifo_dir: str = ""

    LABELS: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "none": (),  # ctr's default: a new network namespace with nothing in it
        "bridge": ("--label", f"{NETWORKS_LABEL}=bridge"),
        "ports": ("--label", f"{NETWORKS_LABEL}=bridge",
                  "--label", f"{PORTS_LABEL}=127.0.0.1::80,127.0.0.1::81"),
    }  # fmt: skip

    def run_d(self, mode: str, name: str) -> float:
        return self.time(
            "run", "-d", "--fifo-dir", self.fifo_dir, *self.LABELS[mode], self.image, name,
            "sleep", "100000",
        )  # fmt: skip

    def rm_f(self, name: str) -> float:
        return self.time("tasks", "rm", "-f", name) + self.time("containers", "rm", name)

    def run_rm(self, mode: str) -> float:
        name = f"net-rm-{next(_RUN_RM_IDS)}"
        return self.time(
            "run", "--rm", "--fifo-dir", self.fifo_dir, *self.LABELS[mode], self.image, name,
            "true",
        )  # fmt: skip


class BridgedDockerd(dockerd_support.Dockerd):
    """The tests' dockerd, but with docker's default networking (docker0, iptables, NAT,
    docker-proxy) and started through `wrapper` (nsenter into its namespaces)."""

    NO_NETWORK = frozenset({"--bridge=none", "--iptables=false", "--ip-masq=false"})

    def __init__(self, base: Path, containerd: str, wrapper: Sequence[str]) -> None:
        super().__init__(base, containerd)
        self.wrapper = list(wrapper)

    def command(self) -> list[str]:
        return [*self.wrapper, *(a for a in super().command() if a not in self.NO_NETWORK)]


@contextlib.contextmanager
def docker_engine(base: Path) -> Iterator[Docker]:
    """dockerd on a containerd of its own, both inside one fresh net+mount namespace."""
    base.mkdir(parents=True)
    holder = Netns.start(mount=True)
    config = base / "config.toml"
    config.write_text(containerd_support.config_toml(base))
    address = str(base / "containerd.sock")
    engine = BridgedDockerd(base / "docker", address, holder.enter())
    containerd: subprocess.Popen[bytes] | None = None
    try:
        with open(base / "containerd.log", "wb") as log:
            containerd = subprocess.Popen(
                [*holder.enter(), "containerd", "--config", str(config)],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        _wait_answers(["ctr", "-a", address, "version"], containerd, base / "containerd.log")
        engine.base.mkdir()
        engine.start()
        engine.load_busybox()
        env = engine.cli_env()
        client = Client("docker", (dockerd_support.DOCKER,), dockerd_support.IMAGE, env)
        yield Docker(holder, client)
    except Exception:
        _show_log(engine.log_path)
        raise
    finally:
        with _interrupts_ignored():
            with contextlib.suppress(Exception):
                engine.remove_all()
            with contextlib.suppress(Exception):
                engine.stop()
            engine.cleanup()
            if containerd is not None:
                _stop(containerd)
            containerd_support.kill_shims_of(address)
            if left := holder.close():
                print(f"docker: killed {left} processes left in its namespace", file=sys.stderr)


@dataclass
class Docker:
    holder: Netns
    client: Client

    def objects(self) -> dict[str, float]:
        """Links and iptables rules in dockerd's namespace, docker-proxy processes."""
        links = run([*self.holder.enter(), "ip", "-o", "link", "show"], capture_output=True)
        rules = run([*self.holder.enter(), "iptables-save"], capture_output=True, check=True)
        return {
            "links": len(links.stdout.splitlines()),
            "iptables rules": sum(line.startswith(b"-A") for line in rules.stdout.splitlines()),
            "docker-proxy processes": sum(
                _comm(pid) == "docker-proxy" for pid in self.holder.members()
            ),
        }


@dataclass
class Ctrd:
    daemon: Daemon
    holder: Netns
    client: Client
    ctr: CtrClient  # the real ctr, labels and no ctrctl

    def objects(self) -> dict[str, float]:
        """Kernel objects in ctrd's namespace, mounts under its directories, processes."""
        probe = run(
            [*self.holder.enter(), sys.executable, str(PROBE), NFT_TABLE],
            capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
        )  # fmt: skip
        found: dict[str, float] = json.loads(probe.stdout)
        found["mounts"] = len(mounts_under(self.daemon.base))
        found["ctrd_fds"] = len(os.listdir(f"/proc/{self.daemon.proc.pid}/fd"))
        table = procs.table()
        shims = procs.shims_of(table, self.daemon.address, self.daemon.base)
        own = procs.descendants(table, [self.daemon.proc.pid]) | shims
        found["processes"] = len(own | procs.descendants(table, shims))
        return found

    def memory(self) -> tuple[procs.Memory, procs.Memory, procs.Memory]:
        """(ctrd itself and its helpers, its shims, the containers' processes)."""
        table = procs.table()
        shims = procs.shims_of(table, self.daemon.address, self.daemon.base)
        inside = procs.descendants(table, shims) - shims
        own = {self.daemon.proc.pid} | procs.descendants(table, [self.daemon.proc.pid])
        return procs.memory(own - shims - inside), procs.memory(shims), procs.memory(inside)


@contextlib.contextmanager
def ctrd_engine(base: Path, scratch: Path) -> Iterator[Ctrd]:
    """ctrd with a table of its own, inside a fresh network namespace; busybox imported."""
    holder = Netns.start(mount=False)
    base.mkdir(parents=True)
    config = base / "ctrd-bench.toml"
    config.write_text(f'[network]\nnft_table = "{NFT_TABLE}"\n')
    daemon: Daemon | None = None
    try:
        # Its state directory on a tmpfs, as ctrd's default (/run/ctrd) is in production, and
        # as docker's containerd has it here (/run in its namespace); unmounted by tear_down.
        (base / "state").mkdir()
        state = str(base / "state")
        subprocess.run(["mount", "-t", "tmpfs", "ctrd-bench-state", state], check=True)
        daemon = start_ctrd(base, extra_args=["--config", str(config)], wrapper=holder.enter())
        import_busybox(daemon, scratch)
        argv = (sys.executable, "-m", "ctl", "--address", daemon.address, "--namespace", NAMESPACE)
        ctr = CtrClient(
            "ctr/ctrd", ("ctr", "-a", daemon.address, "-n", NAMESPACE), IMAGE,
            fifo_dir=str(daemon.fifo_dir),
        )  # fmt: skip
        yield Ctrd(daemon, holder, Client("ctrd", argv, IMAGE), ctr)
    except Exception:
        _show_log(base / "ctrd.log")
        raise
    finally:
        with _interrupts_ignored():
            if daemon is not None:
                tear_down(daemon)
            unmount_under(base)  # the state's tmpfs when ctrd did not start
            remove_cgroups(NAMESPACE)
            if left := holder.close():
                print(f"ctrd: killed {left} processes left in its namespace", file=sys.stderr)


def _show_log(path: Path, lines: int = 60) -> None:
    """The end of a daemon's log, before the scratch directory that holds it goes."""
    with contextlib.suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {path.name} (last {len(tail)} lines) ---", *tail, sep="\n", file=sys.stderr)


def _wait_answers(argv: list[str], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while run(argv, capture_output=True, timeout=10).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """A second Ctrl-C must not stop the cleanup half way: every step of it has a timeout."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def what_ports_make(engine: Docker | Ctrd) -> None:
    """What one container with two published ports adds in the engine's namespace, and what
    its removal leaves: shows whether `-p` reached the kernel at all."""
    client = engine.client
    client.run_rm("bridge")  # the default network made first
    before = engine.objects()
    client.run_d("ports", "net-ports-check")
    during = engine.objects()
    client.rm_f("net-ports-check")
    after = engine.objects()
    added = ", ".join(f"{key} +{during[key] - before[key]:g}" for key in before)
    left = {key: after[key] - before[key] for key in before if after[key] != before[key]}
    print(f"{client.name}: a container with 2 published ports adds {added}; rm -f leaves "
          f"{left or 'nothing'}")  # fmt: skip


# --- start and removal, interleaved ---------------------------------------------------------


OPS = (
    *(("run -d", mode) for mode in MODES),
    *(("rm -f", mode) for mode in MODES),
    ("run --rm", "none"),
    ("run --rm", "bridge"),
)


@dataclass
class Round:
    """One round's samples, by (engine, op, mode)."""

    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    def add(self, key: tuple[str, str, str], value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def median(self, key: tuple[str, str, str]) -> float:
        return statistics.median(self.samples[key])


def one_iteration(order: Sequence[Client], tag: str, into: Round | None) -> None:
    """The eight operations once, each done by every engine in turn before the next one (both
    see the same moment of a shared, noisy machine). Recorded into `into` unless warming up,
    with what each networked one took over the same iteration's `none` one (mode `+MODE`)."""
    times: dict[tuple[str, str, str], float] = {}
    for mode in MODES:
        for client in order:
            times[client.name, "run -d", mode] = client.run_d(
                mode, f"{client.name.replace('/', '-')}-{mode}-{tag}"
            )
    for mode in MODES:
        for client in order:
            times[client.name, "rm -f", mode] = client.rm_f(
                f"{client.name.replace('/', '-')}-{mode}-{tag}"
            )
    for mode in ("none", "bridge"):
        for client in order:
            times[client.name, "run --rm", mode] = client.run_rm(mode)
    if into is None:
        return
    for (name, op, mode), value in times.items():
        into.add((name, op, mode), value)
        if mode != "none":
            into.add((name, op, f"+{mode}"), value - times[name, op, "none"])


def measure_rounds(clients: Sequence[Client], args: argparse.Namespace) -> list[Round]:
    for i in range(args.warmup):
        one_iteration(clients, f"warm{i}", None)
    rounds = []
    for r in range(args.rounds):
        current = Round()
        for i in range(args.runs):
            order = clients if (i + r) % 2 == 0 else clients[::-1]
            one_iteration(order, f"r{r}i{i}", current)
        rounds.append(current)
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    return rounds


def _ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def _cell(values: Sequence[float], show: Callable[[float], str]) -> str:
    """`a` for one round, `lo-hi` over rounds (the medians' range, as issue 15 quotes them)."""
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low}-{high}"


def report_rounds(rounds: list[Round], engines: Sequence[str], args: argparse.Namespace) -> None:
    print(
        f"\nstart and removal, ms: medians of {args.runs} per round, {len(rounds)} round(s)"
        " (a range is the rounds' medians)"
    )
    print(f"  {'':<34}" + "".join(f"{name:>14}" for name in engines))
    for op, mode in OPS:
        cells = "".join(
            f"{_cell([r.median((name, op, mode)) for r in rounds], _ms):>14}" for name in engines
        )
        print(f"  {op + ' ' + MODE_TITLES[mode]:<34}{cells}")
    if "docker" not in engines or "ctrd" not in engines:
        return
    print(
        "\nwhat networking adds over --network none, ms: per round, the median of each"
        " iteration's difference; target ctrd/docker <= 0.33"
    )
    others = [name for name in engines if name != "docker"]
    print(
        f"  {'':<34}{'docker':>12}"
        + "".join(f"{name:>12}{name.split('/')[0] + '/docker':>14}" for name in others)
    )
    for op, mode in [("run -d", "bridge"), ("run -d", "ports"), ("rm -f", "bridge"),
                     ("rm -f", "ports"), ("run --rm", "bridge")]:  # fmt: skip
        added = {name: [r.median((name, op, f"+{mode}")) for r in rounds] for name in engines}
        line = f"  {op + ' ' + MODE_TITLES[mode]:<34}{_cell(added['docker'], _ms):>12}"
        for name in others:
            ratios = [
                ours / theirs if theirs > 0 else float("nan")
                for ours, theirs in zip(added[name], added["docker"], strict=True)
            ]
            line += f"{_cell(added[name], _ms):>12}{_cell(ratios, lambda v: f'{v:.2f}'):>14}"
        print(line)
    end_to_end = [
        r.median(("ctrd", "run -d", "ports")) / r.median(("docker", "run -d", "ports"))
        for r in rounds
    ]
    print(
        "  end to end: ctrctl run -d -p / docker run -d -p (target < 1): "
        + _cell(end_to_end, lambda v: f"{v:.2f}")
    )


# --- ctrd's cost per container --------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    size: int
    fill: list[float]  # the ctrctl run -d that got from the previous size to this one
    probe_run: list[float]
    probe_rm: list[float]
    objects: dict[str, float]
    ctrd: procs.Memory
    shims: procs.Memory
    containers: procs.Memory


def measure_sizes(ctrd: Ctrd, sizes: Sequence[int], args: argparse.Namespace) -> None:
    client = ctrd.client
    client.run_rm("bridge")  # the default network exists before the baseline
    settle(args.settle)
    base_objects = ctrd.objects()
    base_ctrd, _, _ = ctrd.memory()
    levels: list[Level] = []
    started = 0
    for size in sizes:
        print(f"ctrd: {size} containers on the bridge", flush=True)
        fill = [client.run_d(args.sizes_mode, f"fill-{i:04d}") for i in range(started, size)]
        started = size
        settle(args.settle)
        objects = ctrd.objects()
        own, shims, inside = ctrd.memory()
        probe_run, probe_rm = [], []
        for i in range(args.probes):
            probe_run.append(client.run_d(args.sizes_mode, f"probe-{size}-{i}"))
            probe_rm.append(client.rm_f(f"probe-{size}-{i}"))
        levels.append(Level(size, fill, probe_run, probe_rm, objects, own, shims, inside))
    begin = time.perf_counter()
    left = remove_containers(ctrd.daemon)
    removed = time.perf_counter() - begin
    settle(args.settle)
    after = ctrd.objects()
    report_sizes(levels, base_objects, base_ctrd, after, removed, left, args.sizes_mode)


def report_sizes(
    levels: list[Level],
    base: dict[str, float],
    base_ctrd: procs.Memory,
    after: dict[str, float],
    removed: float,
    left: int,
    mode: str,
) -> None:
    rows: dict[str, list[str]] = {}

    def row(title: str, values: list[float], fmt: str = "{:.1f}") -> None:
        rows[title] = [fmt.format(v) for v in values]

    row(
        "ctrctl run -d, runs that got here (median ms)",
        [statistics.median(lv.fill) * 1000 for lv in levels],
        "{:.0f}",
    )
    row(
        "ctrctl run -d one more (median ms)",
        [statistics.median(lv.probe_run) * 1000 for lv in levels],
        "{:.0f}",
    )
    row("ctrctl rm -f that one (median ms)",
        [statistics.median(lv.probe_rm) * 1000 for lv in levels], "{:.0f}")  # fmt: skip
    for key in ("links", "veths", "nft_rules", "nft_port_elements", "mounts", "ctrd_fds",
                "processes"):  # fmt: skip
        row(f"{key.replace('_', ' ')} per container",
            [(lv.objects[key] - base[key]) / lv.size for lv in levels], "{:.2f}")  # fmt: skip
    row(
        "ctrd RSS growth per container (MiB)",
        [(lv.ctrd.rss - base_ctrd.rss) / lv.size / MIB for lv in levels],
        "{:.2f}",
    )
    row("ctrd RSS (MiB)", [lv.ctrd.rss / MIB for lv in levels], "{:.0f}")
    row("shim RSS per container (MiB)", [lv.shims.rss / lv.size / MIB for lv in levels], "{:.2f}")
    row("shim PSS per container (MiB)", [lv.shims.pss / lv.size / MIB for lv in levels], "{:.2f}")
    row("container RSS per container (MiB)",
        [lv.containers.rss / lv.size / MIB for lv in levels], "{:.2f}")  # fmt: skip
    width = max(len(title) for title in rows)
    print(
        f"\nctrd: containers on one network (`ctrctl run -d {' '.join(MODE_ARGS[mode])}"
        f"{' ' if MODE_ARGS[mode] else ''}IMG sleep`, default bridge)"
    )
    print(f"  {'containers':<{width}}" + "".join(f"{lv.size:>10}" for lv in levels))
    for title, cells in rows.items():
        print(f"  {title:<{width}}" + "".join(f"{cell:>10}" for cell in cells))
    count = levels[-1].size + 1  # and the warm-up's
    print(
        f"  removing all {levels[-1].size} (ctr tasks rm -f, containers rm): {removed:.1f} s,"
        f" {removed / levels[-1].size * 1000:.0f} ms each; {left} containers left of {count}"
    )
    over = {k: after[k] - base[k] for k in base if after[k] != base[k]}
    print(f"  left over the baseline after removal: {over or 'nothing'} (baseline {base})")


# --- main -----------------------------------------------------------------------------------


def parse_sizes(value: str) -> list[int]:
    """`--sizes 1,100,500` → [1, 100, 500]; `--sizes 0` skips that part."""
    sizes = sorted({int(part) for part in value.split(",") if part.strip()} - {0})
    if sizes and sizes[0] < 0:
        raise ValueError(f"sizes are counts of containers, got {value!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", type=parse_sizes, default=[1, 100, 500])
    parser.add_argument("--probes", type=int, default=12, help="run/rm pairs at each size")
    parser.add_argument(
        "--sizes-mode", choices=("bridge", "ports"), default="bridge",
        help="the sizes' containers: on the bridge, or with 2 published ports each too",
    )  # fmt: skip
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--no-docker", action="store_true", help="ctrd alone")
    parser.add_argument(
        "--with-ctr", action="store_true",
        help="also the real ctr on ctrd, networking by labels (the daemon's share alone)",
    )  # fmt: skip
    args = parser.parse_args()
    for tool in ("unshare", "nsenter", "ip", "ctr", "containerd", "runc"):
        if not _which(tool):
            sys.exit(f"{tool} is not installed")
    begin = time.monotonic()
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_dir("ctrd-bench-network-"))
        clients = []
        if not args.no_docker:
            docker = stack.enter_context(docker_engine(scratch / "docker"))
            clients.append(docker.client)
            what_ports_make(docker)
        ctrd = stack.enter_context(ctrd_engine(scratch / "ctrd", scratch))
        clients.append(ctrd.client)
        if args.with_ctr:
            clients.append(ctrd.ctr)
        what_ports_make(ctrd)
        if args.runs > 0:
            rounds = measure_rounds(clients, args)
            report_rounds(rounds, [client.name for client in clients], args)
        if args.sizes:
            measure_sizes(ctrd, args.sizes, args)
    print(f"\n(took {time.monotonic() - begin:.0f} s; load average now {_load()})")


def _which(tool: str) -> bool:
    return any(os.access(Path(d) / tool, os.X_OK) for d in os.environ["PATH"].split(os.pathsep))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (containers, daemons and namespaces were cleaned up)")
