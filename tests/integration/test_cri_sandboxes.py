"""Kubernetes' pod sandboxes on ctrd, driven with the real crictl (`runp`, `pods`, `inspectp`,
`stopp`, `rmp`) against a test ctrd: pinned namespaces (and sysctls inside them only), host
modes, the pod's files, a pause task for a shared PID namespace (runc, a test image standing
in for registry.k8s.io/pause), rollback of a failed RunPodSandbox, SIGKILL of the daemon, and
nothing left behind (mounts under the test's directory, pins, records) after `rmp`.

Pods on the pod network get it through real CNI plugins (a bridge and host-local of the
test's own, `tests.support.cri`); what they leave on it once removed fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from tests.conftest import Ctrd
from tests.integration.test_cri_images import Cri
from tests.support import images
from tests.support.cri import PodNet, cri_section, make_pod_net, pod_net_leftovers, remove_pod_net
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

NAMESPACED = {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "17"}


@pytest.fixture(scope="module")
def pause_images(registry: Registry) -> tuple[str, str]:
    """A pause stand-in (busybox sleeping) and one whose entrypoint does not exist."""
    layer = images.busybox_layer()
    good = images.build_image([layer], config={"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"]})
    bad = images.build_image([layer], config={"Entrypoint": ["/no/such/pause"], "Cmd": []})
    return (
        registry.push("library/pause", "test", good).ref,
        registry.push("library/badpause", "test", bad).ref,
    )


class Pods(Cri):
    net: PodNet

    def write(self, name: str, **config: Any) -> str:
        """A PodSandboxConfig file for crictl; pid CONTAINER (no pause) unless given."""
        value: dict[str, Any] = {
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "attempt": 0},
            "log_directory": str(self.ctrd.base / "logs" / name),
            "linux": {"security_context": {"namespace_options": {"pid": 1}}},
        }
        for key, item in config.items():
            if key == "namespaces":
                value["linux"]["security_context"]["namespace_options"] = item
            elif key == "sysctls":
                value["linux"]["sysctls"] = item
            else:
                value[key] = item
        path = self.ctrd.base / f"pod-{name}.json"
        path.write_text(json.dumps(value))
        return str(path)

    def runp(self, name: str, **config: Any) -> str:
        return self.crictl("runp", self.write(name, **config)).stdout.strip()

    def pods(self, *args: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("pods", *args)["items"]
        return items

    def inspect(self, pod: str) -> dict[str, Any]:
        value: dict[str, Any] = self.json("inspectp", pod)
        return value

    def pin_dir(self, pod: str) -> Path:
        return self.ctrd.state / "cri" / "sandboxes" / pod

    def files(self, pod: str) -> Path:
        return self.ctrd.root / "cri" / "sandboxes" / pod

    def mounts(self) -> list[str]:
        """Mount points under the test's directory, as the kernel lists them."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p.startswith(str(self.ctrd.base) + "/")]

    def containers(self) -> list[str]:
        return self.ctrd.ctr("containers", "ls", "-q", ns="k8s.io").stdout.split()


def _daemon(base: Path, registry: Registry, sandbox_image: str) -> tuple[Ctrd, PodNet]:
    """A test ctrd with a CNI conf dir of its own (a bridge and a /24 nobody else uses)."""
    daemon = Ctrd(base)
    net = make_pod_net(base)
    config = base / "ctrd-test.toml"
    config.write_text(
        config.read_text() + cri_section(net, registry.host, {"sandbox_image": sandbox_image})
    )
    (base / "crictl.yaml").write_text("")
    return daemon, net


@contextlib.contextmanager
def running(base: Path, registry: Registry, sandbox_image: str) -> Iterator[Pods]:
    """The daemon started; at the end stopped, cleaned and its network removed, failing the
    test if a pod left a veth, an address or a portmap rule."""
    daemon, net = _daemon(base, registry, sandbox_image)
    daemon.start()
    try:
        pods = Pods(daemon, None)  # type: ignore[arg-type]
        pods.net = net
        yield pods
        leftovers = pod_net_leftovers(net)
    finally:
        status = daemon.stop()
        daemon.cleanup()
        remove_pod_net(net)
    assert leftovers == []
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]


@pytest.fixture
def pods(short_tmp: Path, registry: Registry, pause_images: tuple[str, str]) -> Iterator[Pods]:
    with running(short_tmp, registry, pause_images[0]) as started:
        yield started


def nsenter(pin: Path, kind: str, *command: str) -> str:
    return subprocess.run(
        ["nsenter", f"--{kind}={pin}", *command], capture_output=True, text=True, check=True
    ).stdout


def host_value(name: str) -> str:
    return Path("/proc/sys", name.replace(".", "/")).read_text().strip()


def test_runp_pins_namespaces_with_sysctls_and_files_and_rmp_leaves_nothing(pods: Pods):
    before = {name: host_value(name) for name in NAMESPACED}
    dns = {"servers": ["10.96.0.10", "10.96.0.11"], "searches": ["ns.svc"], "options": ["ndots:5"]}
    pod = pods.runp(
        "web",
        hostname="web-0",
        dns_config=dns,
        labels={"app": "web", "tier": "é front"},
        annotations={"kubernetes.io/config.seen": "2026-12-06T08:00:00.123Z"},
        sysctls=NAMESPACED,
    )
    assert len(pod) == 64
    [listed] = pods.pods()
    assert (listed["id"], listed["state"]) == (pod, "SANDBOX_READY")
    assert listed["labels"] == {"app": "web", "tier": "é front"}

    status = pods.inspect(pod[:13])
    assert status["status"]["metadata"]["name"] == "web"
    assert status["status"]["annotations"] == {
        "kubernetes.io/config.seen": "2026-12-06T08:00:00.123Z"
    }
    assert status["status"]["linux"]["namespaces"]["options"]["pid"] == "CONTAINER"
    assert status["info"]["pid"] == 0  # no pause process
    pins = pods.pin_dir(pod)
    assert status["info"]["pinnedNamespaces"] == {k: str(pins / k) for k in ("net", "ipc", "uts")}

    # The sysctls are in the pod's own namespaces, the host's are as they were.
    assert nsenter(pins / "ipc", "ipc", "cat", "/proc/sys/kernel/shm_rmid_forced") == "1\n"
    assert nsenter(pins / "ipc", "ipc", "cat", "/proc/sys/fs/mqueue/msg_max") == "17\n"
    assert {name: host_value(name) for name in NAMESPACED} == before
    assert nsenter(pins / "uts", "uts", "hostname") == "web-0\n"
    links = nsenter(pins / "net", "net", "ip", "-o", "link")
    assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == [
        "lo",
        "eth0",
    ]
    ip = status["status"]["network"]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(pods.net.subnet)
    assert f"inet {ip}/" in nsenter(pins / "net", "net", "ip", "-o", "addr", "show", "eth0")
    eth0 = status["info"]["cniResult"]["Interfaces"]["eth0"]
    assert [c["IP"] for c in eth0["IPConfigs"]] == [ip]
    assert os.stat(pins / "net").st_ino != os.stat("/proc/self/ns/net").st_ino

    files = pods.files(pod)
    assert (files / "hostname").read_text() == "web-0\n"
    assert (files / "resolv.conf").read_text() == (
        "search ns.svc\nnameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5\n"
    )
    assert (files / "hosts").read_bytes() == Path("/etc/hosts").read_bytes()
    shm = pins / "shm"
    assert oct(shm.stat().st_mode & 0o7777) == "0o1777"
    with open("/proc/self/mountinfo") as f:
        [shm_line] = [line for line in f if line.split()[4] == str(shm)]
    assert "nosuid,nodev,noexec" in shm_line
    assert "size=65536k" in shm_line
    assert pod in pods.containers()
    info = json.loads(pods.ctrd.ctr("containers", "info", pod, ns="k8s.io").stdout)
    assert info["Labels"]["io.cri-containerd.kind"] == "sandbox"
    assert "io.cri-containerd.sandbox.metadata" in info["Extensions"]

    pods.crictl("stopp", pod)
    assert pods.pods()[0]["state"] == "SANDBOX_NOTREADY"
    assert pods.mounts() == []  # pins, shm and the pin directory's own mount
    pods.crictl("stopp", pod)  # again: success
    pods.crictl("rmp", pod)
    assert pods.pods() == []
    assert pods.containers() == []
    assert not pins.exists()
    assert not files.exists()
    # Gone or unknown: success (crictl asks for a status first, so the calls themselves).
    pods.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=10)
    pods.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=10)
    pods.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id="0123ab"), timeout=10)
    assert "NotFound" in pods.crictl("inspectp", pod, check=False).stderr


def test_list_filters_by_id_prefix_state_and_labels(pods: Pods):
    a = pods.runp("a", labels={"app": "one", "tier": "x"})
    b = pods.runp("b", labels={"app": "one", "tier": "y"})
    c = pods.runp("c", labels={"app": "two"})
    pods.crictl("stopp", b)

    def ids(*args: str) -> list[str]:
        return sorted(p["id"] for p in pods.pods(*args))

    assert ids() == sorted([a, b, c])
    assert ids("--id", a[:7]) == [a]
    assert ids("--state", "ready") == sorted([a, c])
    assert ids("--state", "notready") == [b]
    assert ids("--label", "app=one") == sorted([a, b])
    assert ids("--label", "app=one", "--label", "tier=y") == [b]
    assert ids("--label", "app=one", "--state", "ready") == [a]
    assert ids("--label", "app=three") == []
    assert ids("--name", "c") == [c]
    for pod in (a, b, c):
        pods.crictl("rmp", "-f", pod)
    assert pods.mounts() == []


def test_host_modes_make_nothing_and_refuse_sysctls_for_host_namespaces(pods: Pods):
    host = {"network": 2, "pid": 2, "ipc": 2}
    pod = pods.runp("host", hostname="ignored", namespaces=host)
    status = pods.inspect(pod)
    assert status["info"]["pinnedNamespaces"] == {}
    assert status["info"]["shm"] == ""
    assert status["status"]["linux"]["namespaces"]["options"] == {
        "network": "NODE", "pid": "NODE", "ipc": "NODE", "targetId": "", "usernsOptions": None,
    }  # fmt: skip
    files = pods.files(pod)
    assert (files / "hostname").read_text() == os.uname().nodename + "\n"
    assert (files / "resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert pods.mounts() == []

    before = host_value("net.ipv4.ip_unprivileged_port_start"), host_value("kernel.shm_rmid_forced")
    refusals = [
        ({"network": 2, "ipc": 0}, {"net.ipv4.ip_unprivileged_port_start": "0"}, "network"),
        ({"network": 0, "ipc": 2}, {"kernel.shm_rmid_forced": "1"}, "ipc"),
        ({"network": 0, "ipc": 0}, {"vm.swappiness": "1"}, "not in a separate kernel namespace"),
    ]
    for namespaces, sysctls, words in refusals:
        out = pods.crictl(
            "runp", pods.write("bad", namespaces={**namespaces, "pid": 1}, sysctls=sysctls),
            check=False,
        )  # fmt: skip
        assert out.returncode != 0
        assert "InvalidArgument" in out.stderr, out.stderr
        assert words in out.stderr
    assert (
        host_value("net.ipv4.ip_unprivileged_port_start"),
        host_value("kernel.shm_rmid_forced"),
    ) == before
    assert [p["id"] for p in pods.pods()] == [pod]
    assert pods.containers() == [pod]
    pods.crictl("rmp", "-f", pod)
    assert list((pods.ctrd.state / "cri" / "sandboxes").iterdir()) == []
    assert list((pods.ctrd.root / "cri" / "sandboxes").iterdir()) == []


def test_a_shared_pid_namespace_gets_a_pause_task_in_the_pinned_namespaces(pods: Pods):
    pod = pods.runp("shared", hostname="shared-0", namespaces={"pid": 0})
    status = pods.inspect(pod)
    pid = status["info"]["pid"]
    assert pid > 0
    assert status["info"]["processStatus"] == "running"
    tasks = pods.ctrd.ctr("tasks", "ls", ns="k8s.io").stdout
    assert pod in tasks
    assert "RUNNING" in tasks
    pins = pods.pin_dir(pod)
    for kind in ("net", "ipc", "uts"):
        assert os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(pins / kind).st_ino, kind
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"/bin/sleep\x002147483647\x00"
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) >= -998
    assert pods.ctrd.ctr("snapshots", "ls", ns="k8s.io").stdout.count(pod) == 1
    image = pods.json("inspecti", status["info"]["image"])["status"]
    assert image["pinned"] is True  # kubelet's image GC leaves the sandbox image

    pods.crictl("stopp", pod)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert pod not in pods.ctrd.ctr("tasks", "ls", ns="k8s.io").stdout
    pods.crictl("rmp", pod)
    assert pod not in pods.ctrd.ctr("snapshots", "ls", ns="k8s.io").stdout
    assert pods.containers() == []
    assert pods.mounts() == []


def test_a_failed_runp_undoes_every_step(
    short_tmp: Path, registry: Registry, pause_images: tuple[str, str]
):
    with running(short_tmp, registry, pause_images[1]) as pods:  # no such entrypoint
        config = pods.write("broken", namespaces={"pid": 0}, sysctls=NAMESPACED)
        for _ in range(2):  # the second is not refused on the name: the first freed it
            out = pods.crictl("runp", config, check=False)
            assert out.returncode != 0
            assert "no such file or directory" in out.stderr.lower(), out.stderr
            assert "reserve" not in out.stderr
        assert pods.pods() == []
        assert pods.containers() == []
        assert pods.ctrd.ctr("tasks", "ls", "-q", ns="k8s.io").stdout.split() == []
        assert pods.ctrd.ctr("snapshots", "ls", ns="k8s.io").stdout.count("Active") == 0
        assert pods.mounts() == []
        assert list((pods.ctrd.state / "cri" / "sandboxes").iterdir()) == []
        assert list((pods.ctrd.root / "cri" / "sandboxes").iterdir()) == []


def test_sigkill_keeps_pods_and_a_run_cut_short_is_undone_at_restart(pods: Pods):
    plain = pods.runp("plain", sysctls=NAMESPACED)
    shared = pods.runp("shared", namespaces={"pid": 0})
    cut = pods.runp("cut", namespaces={"pid": 0})  # a pause task started, not yet recorded
    pid = pods.inspect(shared)["info"]["pid"]
    cut_pid = pods.inspect(cut)["info"]["pid"]
    assert pods.ctrd.stop(signal.SIGKILL) == -signal.SIGKILL
    # As if the daemon had died in the middle of the third RunPodSandbox: its record still
    # says so (the record is written `creating` first and rewritten at the end).
    with sqlite3.connect(pods.ctrd.root / "meta.db") as db:
        [(extensions,)] = db.execute("SELECT extensions FROM containers WHERE id = ?", (cut,))
        value = json.loads(extensions)
        type_url, data = value["io.cri-containerd.sandbox.metadata"]
        meta = json.loads(base64.b64decode(data))
        meta["creating"] = True
        meta["state"] = "notready"
        value["io.cri-containerd.sandbox.metadata"] = [
            type_url, base64.b64encode(json.dumps(meta).encode()).decode(),
        ]  # fmt: skip
        db.execute("UPDATE containers SET extensions = ? WHERE id = ?", (json.dumps(value), cut))
    pods.ctrd.start()

    listed = {p["id"]: p["state"] for p in pods.pods()}
    assert listed == {plain: "SANDBOX_READY", shared: "SANDBOX_READY"}
    assert pods.inspect(shared)["info"]["pid"] == pid
    assert nsenter(pods.pin_dir(plain) / "ipc", "ipc", "cat", "/proc/sys/fs/mqueue/msg_max") == (
        "17\n"
    )
    assert not pods.pin_dir(cut).exists()
    assert not pods.files(cut).exists()
    assert cut not in pods.containers()
    assert cut not in pods.ctrd.ctr("tasks", "ls", ns="k8s.io").stdout
    assert cut not in pods.ctrd.ctr("snapshots", "ls", ns="k8s.io").stdout
    assert not Path(f"/proc/{cut_pid}").exists()

    os.kill(pid, signal.SIGKILL)  # the pause process dies: its pod is not ready any more
    for _ in range(50):
        if pods.pods("--id", shared)[0]["state"] == "SANDBOX_NOTREADY":
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert pods.pods("--id", shared)[0]["state"] == "SANDBOX_NOTREADY"
    for pod in (plain, shared):
        pods.crictl("rmp", "-f", pod)
    assert pods.pods() == []
    assert pods.mounts() == []
    assert pods.containers() == []


def test_stopp_stops_the_pods_containers_and_rmp_removes_them(pods: Pods, busybox_image: Any):
    pod_config = pods.write("withc", namespaces={"pid": 0})  # a pause task too
    pod = pods.crictl("runp", pod_config).stdout.strip()
    pods.crictl("pull", busybox_image.ref)
    container_config = pods.ctrd.base / "container.json"
    container_config.write_text(
        json.dumps(
            {
                "metadata": {"name": "sleeper"},
                "image": {"image": busybox_image.ref},
                "command": ["sleep", "1000"],
            }
        )
    )
    cid = pods.crictl("create", pod, str(container_config), pod_config).stdout.strip()
    pods.crictl("start", cid)
    [running] = pods.json("ps")["containers"]
    assert (running["id"], running["state"]) == (cid, "CONTAINER_RUNNING")

    pods.crictl("stopp", pod)
    [stopped] = pods.json("ps", "-a")["containers"]
    assert (stopped["id"], stopped["state"]) == (cid, "CONTAINER_EXITED")
    assert pods.ctrd.ctr("tasks", "ls", "-q", ns="k8s.io").stdout.split() == []
    pods.crictl("rmp", pod)
    assert pods.json("ps", "-a")["containers"] == []
    assert pods.containers() == []
    assert pods.mounts() == []
