"""A CRI node for tests: a test ctrd with `[cri]` set up as a Kubernetes node's runtime.

What a `CriNode` is made of, each part private to it and removed at its end:
- a ctrd (`tests.conftest.Ctrd`) on a temporary root, state and socket;
- `[cri.mirrors]` sending `registry.k8s.io`, `gcr.io` and `docker.io` to one loopback
  registry, which holds critest's images (`critest_images`: built by the machine's
  `make-images.sh` and pushed into the session's registry, once per session);
- a CNI conf dir of its own holding one conflist (bridge + host-local + portmap, as
  `anchor-containerd.sh` writes containerd's): a bridge `ctrdt<pid>c<n>` and a /24 that
  neither the host's routes nor another test process uses; host-local's state in the node's
  temporary dir;
- crictl (`../shared/tools/cri/bin/crictl`) wired to the socket, with an empty config of its own.

At the end every pod is removed through the CRI (`crictl rmp -fa`) before the daemon stops;
what a pod left behind then (a veth on the bridge, an address lease, portmap's rules) is
reported as a leak, and removed anyway, as is the bridge.

The fixtures (`critest_images`, `make_cri_node`, `cri_node`) are registered for every test by
`tests/conftest.py` (`pytest_plugins`). The module also runs on its own, for runs of critest
outside pytest (`python -m tests.support.cri --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

# The project's CRI tools (cri-tools 1.26.1, kubelet 1.26, the scripts) live beside the
# checkout in `shared/`; a clone made elsewhere (CI's) finds them at the machine's copy.
_TOOLS_PLACES = (REPO.parent / "shared" / "tools" / "cri", Path("/work/shared/tools/cri"))
TOOLS = Path(
    os.environ.get("CTRD_CRI_TOOLS")
    or next((str(p) for p in _TOOLS_PLACES if (p / "bin" / "crictl").exists()), _TOOLS_PLACES[0])
)
CRICTL = os.environ.get("CTRD_CRICTL") or str(TOOLS / "bin" / "crictl")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's plugins; containerd's default
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
NAMESPACE = "k8s.io"
# The one spec that pins an upstream digest a local rebuild cannot have. (The streaming specs,
# skipped until issue 18, run now: ctrd serves exec, attach and port-forward.)
CRITEST_SKIP = (r"public image with digest should be pulled and removed",)
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
PAUSE = "registry.k8s.io/pause:3.6"

_nets = itertools.count()


class HarnessError(RuntimeError):
    """The harness itself could not do its part (a tool missing, a build that failed)."""


def _fail(message: str) -> None:
    if "PYTEST_CURRENT_TEST" in os.environ:
        pytest.fail(message)
    raise HarnessError(message)


# --- critest's images --------------------------------------------------------------------


@dataclass(frozen=True)
class CriImages:
    registry: str  # host:port on loopback
    names: tuple[str, ...]  # full names (registry.k8s.io/..., gcr.io/...)


def build_critest_images(registry: str, work: Path) -> CriImages:
    """Build critest's 23 images with the tools' `make-images.sh` and push them to `registry`
    (a loopback registry that answers already). ~5 s: the three Debian packages it unpacks
    are downloaded once into `work` (`CTRD_CRI_DEB_DIR` names a directory holding them)."""
    script = TOOLS / "images" / "make-images.sh"
    if not script.exists():
        _fail(f"no {script}: the CRI tools are at ../shared/tools/cri (or set CTRD_CRI_TOOLS)")
    env = {**os.environ, "WORK": str(work), "REGISTRY": registry}
    if os.environ.get("CTRD_CRI_DEB_DIR"):
        env["DEB_DIR"] = os.environ["CTRD_CRI_DEB_DIR"]
    done = subprocess.run(
        [str(script), "all"], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        _fail(f"make-images.sh all exited {done.returncode}:\n{done.stdout}{done.stderr}")
    names = tuple(
        line.split()[0]
        for line in done.stdout.splitlines()
        if line.count(" sha256:") == 1 and line.split()[0].count("/") >= 1
    )
    return CriImages(registry, names)


# --- the pod network: a conflist of our own ----------------------------------------------


@dataclass(frozen=True)
class PodNet:
    name: str  # the CNI network's name (portmap's rules carry it in their comments)
    bridge: str
    subnet: str
    conf_dir: Path
    ipam_dir: Path  # host-local's dataDir
    cache_dir: Path  # libcni's cache (`[cri] cni_cache_dir`, when the config has it)

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge", "bridge": self.bridge, "isGateway": True,
                    "ipMasq": False, "hairpinMode": True,
                    "ipam": {
                        "type": "host-local", "dataDir": str(self.ipam_dir),
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": self.subnet}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }  # fmt: skip


def _taken_prefixes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    from supervisor.network import netlink

    taken = netlink.host_taken_prefixes()
    # The reference containerd's (anchor-containerd.sh) default pod subnet
    taken.append(ipaddress.ip_network("10.88.77.0/24"))
    return taken


def make_pod_net(base: Path) -> PodNet:
    """A network no one else uses: bridge `ctrdt<pid>c<n>` and a /24 in 10.40-79.x derived
    from the pid (#15's tests take 10.100-249), skipping what the host routes."""
    missing = [p for p in CNI_PLUGINS if not any(Path(d, p).exists() for d in CNI_BIN_DIRS)]
    if missing:
        _fail(
            f"CNI plugins {missing} not in {CNI_BIN_DIRS}"
            " (apt-get install containernetworking-plugins)"
        )
    pid = os.getpid()
    remove_stale_bridges()
    taken = _taken_prefixes()
    for _ in range(64):
        n = next(_nets)
        subnet = ipaddress.ip_network(f"10.{40 + pid % 40}.{(pid // 40 + 3 * n) % 256}.0/24")
        bridge = f"ctrdt{pid}c{n}"[:15]
        if any(subnet.overlaps(p) for p in taken) or Path(f"/sys/class/net/{bridge}").exists():
            continue
        net = PodNet(
            name=f"ctrdt-{pid}-{n}", bridge=bridge, subnet=str(subnet),
            conf_dir=base / "cni" / "net.d", ipam_dir=base / "cni" / "ipam",
            cache_dir=base / "cni" / "cache",
        )  # fmt: skip
        net.conf_dir.mkdir(parents=True, exist_ok=True)
        net.ipam_dir.mkdir(parents=True, exist_ok=True)
        (net.conf_dir / "10-ctrd-test.conflist").write_text(json.dumps(net.conflist(), indent=2))
        return net
    raise HarnessError("no free test subnet in 10.40-79.x.0/24")


_OUR_BRIDGE = re.compile(r"^ctrdt(\d+)c\d+$")


def remove_stale_bridges() -> None:
    """The bridges of test processes that died before their node's end (a run killed by a
    timeout): named `ctrdt<pid>c<n>` here, so whose they were is known."""
    for link in Path("/sys/class/net").iterdir():
        found = _OUR_BRIDGE.match(link.name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            subprocess.run(["ip", "link", "del", link.name], capture_output=True)


def _portmap_rules(net: PodNet) -> list[str]:
    """portmap's nat rules for `net`'s pods (`-A CNI-HOSTPORT-DNAT ... dnat name: "NET" ...`)."""
    listed = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True)
    mark = f'dnat name: \\"{net.name}\\"'
    return [line for line in listed.stdout.splitlines() if mark in line]


def pod_net_leftovers(net: PodNet) -> list[str]:
    """What the pods left on `net` once they are all removed: veths, leases, portmap rules."""
    left = [f"veth {p.name} on {net.bridge}" for p in _ports(net.bridge)]
    leases = net.ipam_dir / net.name
    if leases.is_dir():
        left += [
            f"address {p.name} still leased (host-local {leases})"
            for p in leases.iterdir()
            if p.name not in ("lock",) and not p.name.startswith("last_reserved_ip")
        ]
    left += [f"portmap rule: {rule}" for rule in _portmap_rules(net)]
    return left


def nat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True)


# portmap's shared chains and the jumps to them, made at its first ADD on a host
SHARED_JUMPS = (
    ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade",
     "-j", "CNI-HOSTPORT-MASQ"),
)  # fmt: skip
SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def has_shared_chains() -> bool:
    return nat("-S", SHARED_CHAINS[0]).returncode == 0


def remove_shared_chains_if_unused() -> None:
    """portmap's shared chains, when no pod of anyone's has a port in them any more (call it
    only when they were not there before: then nothing else of the host needs them)."""
    if f"-A {SHARED_CHAINS[0]}" in nat("-S", SHARED_CHAINS[0]).stdout:
        return
    for jump in SHARED_JUMPS:
        nat("-D", *jump)
    for chain in SHARED_CHAINS:
        nat("-F", chain)
    for chain in SHARED_CHAINS:
        nat("-X", chain)


def our_bridges() -> set[str]:
    """This process's pod bridges (`ctrdt<pid>c<n>`) now."""
    prefix = f"ctrdt{os.getpid()}c"[:15]
    return {
        link.name
        for link in Path("/sys/class/net").iterdir()
        if link.name.startswith(prefix) and _OUR_BRIDGE.match(link.name)
    }


def _ours(n: int) -> PodNet:
    """This process's network number `n`, enough of it to find and remove what it left."""
    nowhere = Path("/nonexistent")
    pid = os.getpid()
    return PodNet(f"ctrdt-{pid}-{n}", f"ctrdt{pid}c{n}"[:15], "", nowhere, nowhere, nowhere)


@pytest.fixture(autouse=True)
def no_pod_network_left() -> Iterator[None]:
    """Every test: a pod bridge of this process that was not there before it and is there
    after all its fixtures ended is a leak (with portmap's rules for its pods, which outlive
    the test run on the host): removed, and the test fails at its teardown, named."""
    before = our_bridges()
    yield
    left = our_bridges() - before
    if not left:
        return
    found = []
    for bridge in sorted(left):
        net = _ours(int(bridge.rsplit("c", 1)[1]))
        found.append(f"bridge {bridge}" + "".join(f"; {r}" for r in _portmap_rules(net)))
        remove_pod_net(net)
    pytest.fail("the test left its pod network behind (removed now): " + " | ".join(found))


_shared_chains_before: list[bool] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _shared_chains_before.append(has_shared_chains())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """What appeared after its test had ended (a process that outlived it finishing a pod's
    network): this process's pod bridges and portmap rules, removed, and the run fails. Then
    portmap's shared chains go when this session made them and no pod uses them now (a host
    that had them before keeps them, as it keeps them after containerd)."""
    late = sorted(our_bridges())
    mark = f'dnat name: \\"ctrdt-{os.getpid()}-'
    rules = [line for line in nat("-S").stdout.splitlines() if mark in line]
    for name in {line.split(mark, 1)[1].split("\\", 1)[0] for line in rules}:
        remove_pod_net(_ours(int(name)))
    for bridge in late:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    if late or rules:
        print(f"\npod networks left after their tests ended (removed now): {late} {rules}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _shared_chains_before and not _shared_chains_before[0]:
        remove_shared_chains_if_unused()


def _ports(bridge: str) -> list[Path]:
    brif = Path(f"/sys/class/net/{bridge}/brif")
    return sorted(brif.iterdir()) if brif.is_dir() else []


def remove_pod_net(net: PodNet) -> None:
    """The bridge (its veths go with it) and portmap's rules and chains for `net`'s pods.
    portmap's shared chains (CNI-HOSTPORT-*, and the jumps to them) stay, as they do after
    containerd: other runtimes of this host use them."""
    for rule in _portmap_rules(net):
        args = shlex.split(rule)
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", *args[1:]], capture_output=True)
        if "-j" in args:
            chain = args[args.index("-j") + 1]
            if chain.startswith("CNI-DN-"):
                subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)
    for port in _ports(net.bridge):
        subprocess.run(["ip", "link", "del", port.name], capture_output=True)
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)


# --- the node -----------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def cri_section(
    net: PodNet, registry: str, extra: dict[str, Any] | None = None, mirrors: bool = True
) -> str:
    """`[cri]` for a test node: the CNI keys under whichever names `CriConfig` has now
    (`cni_bin_dirs` or `cni_bin_dir`), `extra` keys as given, the mirrors to `registry`."""
    from supervisor.config import CriConfig

    fields = {f.name for f in dataclasses.fields(CriConfig)}
    keys: dict[str, Any] = {"cni_conf_dir": str(net.conf_dir)}
    if "cni_bin_dirs" in fields:
        keys["cni_bin_dirs"] = [d for d in CNI_BIN_DIRS if Path(d).is_dir()] or [CNI_BIN_DIRS[0]]
    elif "cni_bin_dir" in fields:
        keys["cni_bin_dir"] = CNI_BIN_DIRS[0]
    if "cni_cache_dir" in fields:
        keys["cni_cache_dir"] = str(net.cache_dir)
    keys.update(extra or {})
    unknown = sorted(k for k in keys if k not in fields)
    if unknown:
        raise HarnessError(f"[cri] has no key {', '.join(unknown)} (CriConfig: {sorted(fields)})")
    lines = ["[cri]", *(f"{k} = {_toml_value(v)}" for k, v in keys.items())]
    if mirrors:
        lines.append("[cri.mirrors]")
        lines += [
            f'"{host}" = ["http://{registry}"]'
            for host in ("registry.k8s.io", "gcr.io", "docker.io")
        ]
    return "\n".join(lines) + "\n"


class CriNode:
    """A ctrd serving the CRI with a pod network and mirrors; see the module's docstring."""

    def __init__(
        self, base: Path, registry: str, cri: dict[str, Any] | None = None, ctrd: Any = None
    ) -> None:
        from tests.conftest import Ctrd

        self.base = base
        self.registry = registry
        self.net = make_pod_net(base)
        self.ctrd = ctrd if ctrd is not None else Ctrd(base)
        config = base / "ctrd-test.toml"
        config.write_text(config.read_text() + cri_section(self.net, registry, cri))
        self.crictl_config = base / "crictl.yaml"
        self.crictl_config.write_text("")  # crictl's own config: empty, not the host's
        self.logs = base / "pod-logs"
        self.leaks: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"unix://{self.ctrd.address}"

    def start(self) -> CriNode:
        self.ctrd.start()
        return self

    # --- clients ---

    def crictl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        if not os.access(CRICTL, os.X_OK):
            _fail(f"crictl is not at {CRICTL} (../shared/tools/cri, or set CTRD_CRICTL)")
        result = subprocess.run(
            [
                CRICTL, "--config", str(self.crictl_config),
                "--runtime-endpoint", self.endpoint, "--image-endpoint", self.endpoint,
                "--timeout", f"{int(timeout)}s", *args,
            ],
            capture_output=True, text=True, timeout=timeout + 10,
        )  # fmt: skip
        if check and result.returncode != 0:
            _fail(
                f"crictl {' '.join(args)} exited {result.returncode}\n{result.stdout}"
                f"{result.stderr}\n--- ctrd log ---\n{self.ctrd.log()[-4000:]}"
            )
        return result

    def json(self, command: str, *args: str) -> Any:
        """`crictl COMMAND -o json ARGS...` (its flags go before the arguments)."""
        return json.loads(self.crictl(command, "-o", "json", *args).stdout)

    @property
    def runtime(self) -> Any:
        from supervisor.api.runtime.v1 import api_pb2_grpc

        return api_pb2_grpc.RuntimeServiceStub(self.ctrd.channel)

    @property
    def images(self) -> Any:
        from supervisor.api.runtime.v1 import api_pb2_grpc

        return api_pb2_grpc.ImageServiceStub(self.ctrd.channel)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real ctr in the CRI's namespace."""
        result: subprocess.CompletedProcess[str] = self.ctrd.ctr(*args, ns=NAMESPACE, check=check)
        return result

    # --- crictl's pod and container files ---

    def pod_config(self, name: str, **fields: Any) -> Path:
        """A PodSandboxConfig for `crictl runp` (JSON, crictl's field names): a new uid, logs
        under the node's dir; `fields` are laid over the top level (`linux`, `port_mappings`,
        `dns_config`, `hostname`, `labels`, ...)."""
        config: dict[str, Any] = {
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": uuid.uuid4().hex,
                "attempt": 0,
            },
            "log_directory": str(self.logs / name),
            "linux": {},
            **fields,
        }
        path = self.base / f"pod-{name}.json"
        path.write_text(json.dumps(config))
        return path

    def container_config(
        self, name: str, command: Sequence[str], image: str = BUSYBOX, **fields: Any
    ) -> Path:
        """A ContainerConfig for `crictl create` (log `<name>.log` in the pod's log dir)."""
        config: dict[str, Any] = {
            "metadata": {"name": name},
            "image": {"image": image},
            "command": list(command),
            "log_path": f"{name}.log",
            "linux": {},
            **fields,
        }
        path = self.base / f"container-{name}.json"
        path.write_text(json.dumps(config))
        return path

    def run_pod(self, name: str, **fields: Any) -> str:
        """`crictl runp`: the new sandbox's id."""
        return self.crictl("runp", str(self.pod_config(name, **fields))).stdout.strip()

    def run_container(
        self, pod_id: str, pod_name: str, name: str, command: Sequence[str], image: str = BUSYBOX,
        **fields: Any,
    ) -> str:  # fmt: skip
        """Pull `image` if needed, create and start a container in the pod: its id."""
        if not self.crictl("images", "-q", image).stdout.strip():
            self.crictl("pull", image, timeout=120)
        pod_file = self.base / f"pod-{pod_name}.json"
        created = self.crictl(
            "create", pod_id, str(self.container_config(name, command, image, **fields)),
            str(pod_file),
        ).stdout.strip()  # fmt: skip
        self.crictl("start", created)
        return created

    # --- the end ---

    def remove_all_pods(self) -> list[str]:
        """Every pod removed through the CRI (stopped first, as `crictl rmp -fa`); the
        problems seen (none when the sandboxes' part is not there yet)."""
        from supervisor.api.runtime.v1 import api_pb2

        try:
            pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        except Exception as e:  # grpc.RpcError: UNIMPLEMENTED before the sandboxes part
            code = getattr(e, "code", lambda: None)()
            return [] if getattr(code, "name", "") == "UNIMPLEMENTED" else [f"ListPodSandbox: {e}"]
        if not pods:
            return []
        done = self.crictl("rmp", "-fa", check=False, timeout=120)
        problems = [] if done.returncode == 0 else [f"crictl rmp -fa: {done.stderr.strip()}"]
        left = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        problems += [f"pod {p.metadata.name} ({p.id[:13]}) still listed" for p in left]
        return problems

    def stop(self) -> list[str]:
        """Remove the pods, stop the daemon, clean up; the problems found (leaks included)."""
        problems: list[str] = []
        try:
            if self.ctrd.proc is not None and self.ctrd.proc.poll() is None:
                problems += self.remove_all_pods()
                problems += pod_net_leftovers(self.net)
            status = self.ctrd.stop()
            if status != 0:
                problems.append(f"ctrd exited with {status}")
            log = self.ctrd.log()
            problems += [f"ctrd's log holds a {s}" for s in ("Traceback",) if s in log]
        finally:
            try:
                self.ctrd.cleanup()
            finally:
                remove_pod_net(self.net)
        self.leaks = problems
        return problems


# --- critest --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecResult:
    name: str  # as critest prints it, without junit's "[It] " prefix
    status: str  # passed, failed, skipped
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class CritestRun:
    returncode: int
    seconds: float
    specs: tuple[SpecResult, ...]
    log: Path

    def count(self, status: str) -> int:
        return sum(1 for s in self.specs if s.status == status)

    def summary(self) -> str:
        return (
            f"{self.count('passed')} passed, {self.count('failed')} failed, "
            f"{self.count('skipped')} skipped in {self.seconds:.0f} s"
        )


def parse_junit(path: Path) -> tuple[SpecResult, ...]:
    specs = []
    for case in ET.parse(path).iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It] "):
            continue  # [BeforeSuite], [AfterSuite]
        failure = case.find("failure")
        status = (
            "failed" if failure is not None or case.find("error") is not None
            else "skipped" if case.find("skipped") is not None
            else "passed"
        )  # fmt: skip
        message = (failure.get("message") or failure.text or "") if failure is not None else ""
        specs.append(SpecResult(name[5:], status, float(case.get("time") or 0), message))
    return tuple(specs)


def focus_on(names: Sequence[str]) -> list[str]:
    """ginkgo arguments that run exactly these specs (full texts, as critest prints them).
    Anchored at the end only: ginkgo matches a text that starts with the suite's name."""
    return [f"--ginkgo.focus={re.escape(n)}$" for n in names]


def ports_in_use(ports: Sequence[int]) -> list[int]:
    """Those of `ports` something listens on (TCP, any address)."""
    listed = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
    bound = {line.split()[3].rsplit(":", 1)[-1] for line in listed.splitlines() if line.strip()}
    return [p for p in ports if str(p) in bound]


def wait_for_ports(ports: Sequence[int], timeout: float = 600) -> None:
    """On a shared machine another critest or kubelet may hold the fixed ports these tools
    need: wait for them (a run left over for longer is a failure)."""
    deadline = time.monotonic() + timeout
    while busy := ports_in_use(ports):
        if time.monotonic() > deadline:
            _fail(f"ports {busy} stayed in use for {timeout:.0f} s (another critest or kubelet?)")
        time.sleep(2)


CRITEST_PORTS = (12000, 12001, 12002, 12003)  # port mapping, port forward, host-network nginx
KUBELET_PORTS = (10350, 10348, 10355)  # run-kubelet.sh's: kubelet, healthz, read-only


def run_critest(
    node: CriNode, out: Path, args: Sequence[str] = (), skip: Sequence[str] = CRITEST_SKIP
) -> CritestRun:
    """The tools' `run-critest.sh` against the node (specs matching `skip` skipped)."""
    out.mkdir(parents=True, exist_ok=True)
    wait_for_ports(CRITEST_PORTS)
    env = {**os.environ, "REGISTRY": node.registry, "SKIP": "|".join(skip)}
    started = time.monotonic()
    done = subprocess.run(
        [str(TOOLS / "run-critest.sh"), "-o", str(out), node.endpoint, *args],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    junit = out / "junit.xml"
    if not junit.exists():
        _fail(f"critest wrote no {junit} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return CritestRun(done.returncode, seconds, parse_junit(junit), out / "critest.log")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def critest_images(registry: Any) -> Iterator[CriImages]:
    """critest's images in the session's registry (built once, ~5 s), or in the registry
    `CTRD_CRI_REGISTRY` names (host:port, filled by make-images.sh already: no build)."""
    given = os.environ.get("CTRD_CRI_REGISTRY")
    if given:
        yield CriImages(given, ())
        return
    work = Path(tempfile.mkdtemp(prefix="ctrd-cri-images-"))
    try:
        yield build_critest_images(registry.host, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def make_cri_node(short_tmp: Path, critest_images: CriImages) -> Iterator[Any]:
    """`make_cri_node(cri={"key": value})`: an unstarted CriNode (`.start()` it); extra `[cri]`
    keys as given. Each is torn down at the end; a leak or a daemon that failed fails the test."""
    made: list[CriNode] = []

    def make(cri: dict[str, Any] | None = None, base: Path | None = None) -> CriNode:
        node = CriNode(base or short_tmp / f"node{len(made)}", critest_images.registry, cri)
        made.append(node)
        return node

    yield make
    problems = [p for node in made for p in node.stop()]
    if problems:
        logs = "\n".join(node.ctrd.log()[-3000:] for node in made)
        pytest.fail(
            "the CRI node's end:\n- " + "\n- ".join(problems) + f"\n--- ctrd log ---\n{logs}"
        )


@pytest.fixture
def cri_node(make_cri_node: Any) -> CriNode:
    """A started CriNode with the default `[cri]` keys."""
    node: CriNode = make_cri_node().start()
    return node


# --- on its own: critest against a node from this checkout ------------------------------------


_RPC_ERROR = re.compile(
    r'^E\d{4} [\d:.]+\s+\d+ \S+\] "(?P<what>[^"]*)" err="(?P<err>(?:[^"\\]|\\.)*)"'
)


def failure_causes(critest_log: str) -> dict[str, str]:
    """Per failed spec, one line: critest's [FAILED] message and the first CRI call that
    failed before it (critest's `E... "X from runtime service failed" err=...` lines)."""
    causes: dict[str, str] = {}
    for block in critest_log.split("------------------------------"):
        lines = [ln for ln in block.strip("\n").splitlines() if ln.strip()]
        if not lines or "[FAILED]" not in block:
            continue
        name = lines[0].strip()
        rpc = ""
        message = ""
        for line in lines:
            found = _RPC_ERROR.match(line)
            if found and not rpc:
                rpc = f"{found['what']}: {found['err']}"
            stripped = line.strip()
            if stripped.startswith("[FAILED] ") and " in [" not in stripped[:30]:
                message = stripped[len("[FAILED] ") :]
        cause = message or "failed"
        if rpc and rpc.split(": ", 1)[-1] not in cause:
            cause += f" (first failed call: {rpc})"
        causes[name] = cause[:400]
    return causes


def failed_calls(ctrd_log: str, limit: int = 25) -> list[str]:
    """ctrd's failed RPCs, grouped by method, code and error, the most frequent first."""
    counts: dict[tuple[str, str, str], int] = {}
    for line in ctrd_log.splitlines():
        if not line.startswith("{") or '"rpc' not in line or '"code": "OK"' in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") not in ("rpc", "rpc_failed"):
            continue
        trace = str(event.get("exception", "")).strip().splitlines()
        error = str(event.get("error") or (trace[-1] if trace else "(no message)"))
        key = (event.get("method", "?"), event.get("code", "?"), error[:200])
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n} x {m.rsplit('/', 1)[-1]} {c}: {e}" for (m, c, e), n in ranked]


def status_markdown(run: CritestRun, ctrd_log: str, commit: str) -> str:
    causes = failure_causes(run.log.read_text(errors="replace"))
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [
        "# critest against ctrd (engineer H's periodic run)",
        "",
        f"- time: {now}; commit: {commit}",
        f"- result: **{run.summary()}** (the pinned-digest spec skipped; containerd 1.6.20:"
        " 79 passed of all 85)",
        "- how: a fresh clone, `python -m tests.support.cri --out DIR` (harness: "
        "/work/helpers/cri-fixture.md); log lines below are critest's",
        "",
        f"## Failing specs ({run.count('failed')})",
        "",
    ]
    for spec in run.specs:
        if spec.status == "failed":
            cause = causes.get(spec.name) or next(
                (ln for ln in spec.message.splitlines() if ln.strip()), ""
            )
            out.append(f"- {spec.name} ({spec.seconds:.1f} s) — {cause}")
    out += ["", "## ctrd's failed calls during the run (count x method code: error)", ""]
    out += [f"- {line}" for line in failed_calls(ctrd_log)] or ["- none"]
    out += ["", f"## Passing specs ({run.count('passed')})", ""]
    out += [f"- {spec.name}" for spec in run.specs if spec.status == "passed"]
    return "\n".join(out) + "\n"


def _status_lines(run: CritestRun) -> list[str]:
    lines = [f"{run.summary()} (critest exit {run.returncode})"]
    for spec in run.specs:
        if spec.status == "failed":
            first = next((ln.strip() for ln in spec.message.splitlines() if ln.strip()), "")
            lines.append(f"FAILED {spec.name} :: {first[:300]}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.cri",
        description="Start a CRI node (a ctrd from this checkout, with a pod network and "
        "mirrors to REGISTRY) and run critest against it, or keep it running until Ctrl-C.",
    )
    parser.add_argument("--registry", default="127.0.0.1:5066", help="filled by make-images.sh")
    parser.add_argument("--out", type=Path, default=Path("critest-out"))
    parser.add_argument("--keep", action="store_true", help="keep the node running (no critest)")
    parser.add_argument("--all", action="store_true", help="the pinned-digest spec too")
    parser.add_argument("--status", type=Path, help="write a markdown status here")
    parser.add_argument("critest_args", nargs="*", help="more critest/ginkgo args (after --)")
    opts = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ctrd-cri-", dir="/tmp"))
    node = CriNode(base, opts.registry)
    try:
        node.start()
        if opts.keep:
            print(
                f"endpoint {node.endpoint}; log {node.ctrd.log_path}; pid {os.getpid()}", flush=True
            )
            print("SIGINT or SIGTERM removes the pods and stops it", flush=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.default_int_handler)  # also when started with `&`
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        skip = () if opts.all else CRITEST_SKIP
        run = run_critest(node, opts.out, opts.critest_args, skip)
        print("\n".join(_status_lines(run)))
        shutil.copy(node.ctrd.log_path, opts.out / "ctrd.log")
        if opts.status:
            commit = subprocess.run(
                ["git", "-C", str(REPO), "log", "--oneline", "-1"], capture_output=True, text=True
            ).stdout.strip()
            opts.status.write_text(status_markdown(run, node.ctrd.log(), commit[:120]))
        return run.returncode
    finally:
        problems = node.stop()
        if problems:
            print("node's end:\n- " + "\n- ".join(problems), file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
