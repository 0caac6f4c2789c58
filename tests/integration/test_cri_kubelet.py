"""The standalone kubelet (Kubernetes 1.26, `../shared/tools/cri/run-kubelet.sh`, static pods
only) running issue 17's pod on ctrd: two containers sharing an emptyDir, an exec readiness
probe, a memory limit that is enforced, a hostPort reachable from the host, a container that
crashes and is restarted with back-off; crictl shows them; removing the manifest tears the pod
down, and nothing is left once kubelet has stopped (the node's end checks veths, leases and
portmap's rules; /var/log/pods is checked here).

kubelet listens on 127.0.0.1:10350, 10348 (healthz) and 10355 (read-only): one at a time on
a machine. ~9 s (the node and the images aside); `CTRD_KUBELET_TEST=0` turns it off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cri import BUSYBOX, KUBELET_PORTS, PAUSE, TOOLS, CriNode, wait_for_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("CTRD_KUBELET_TEST") == "0", reason="CTRD_KUBELET_TEST=0 turns it off"
    ),
]

READ_ONLY = "http://127.0.0.1:10355"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Kubelet:
    def __init__(self, node: CriNode, work: Path) -> None:
        self.node = node
        self.work = work
        self.env = {**os.environ, "WORK": str(work)}

    def script(self, *args: str) -> str:
        done = subprocess.run(
            [str(TOOLS / "run-kubelet.sh"), *args], env=self.env,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, f"run-kubelet.sh {args}: {done.stdout}{done.stderr}"
        return done.stdout

    def pods(self) -> list[Any]:
        with _OPENER.open(f"{READ_ONLY}/pods", timeout=10) as answer:
            items: list[Any] = json.load(answer).get("items") or []
        return items

    def stop(self) -> None:
        """kubelet stopped; the node's pods noted first, so that run-kubelet.sh's stop removes
        their sandboxes and /var/log/pods dirs whether kubelet still knows them or not."""
        listed = self.node.crictl("pods", "-o", "json", check=False).stdout
        uids = [p["metadata"]["uid"] for p in json.loads(listed or "{}").get("items") or []]
        with open(self.work / "pod-uids", "a") as f:
            f.writelines(f"{uid}\n" for uid in uids)
        self.script("stop")

    def log(self) -> str:
        path = self.work / "logs" / "kubelet.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


@pytest.fixture
def kubelet(cri_node: CriNode, short_tmp: Path) -> Iterator[Kubelet]:
    wait_for_ports(KUBELET_PORTS)
    running = Kubelet(cri_node, short_tmp / "kubelet")
    running.script("start", cri_node.endpoint)
    try:
        yield running
    finally:
        running.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def manifest(name: str, host_port: int) -> dict[str, Any]:
    shared = [{"name": "shared", "mountPath": "/shared"}]
    term = 'trap "exit 0" TERM; '
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [
                {
                    "name": "writer", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", term + "echo hello > /shared/greeting; "
                                "touch /shared/ready; httpd -f -p 80 -h /shared & wait"],
                    "ports": [{"containerPort": 80, "hostPort": host_port, "protocol": "TCP"}],
                    "resources": {"limits": {"memory": "48Mi"}},
                    "volumeMounts": shared,
                    "readinessProbe": {
                        "exec": {"command": ["cat", "/shared/ready"]}, "periodSeconds": 1,
                    },
                },
                {
                    "name": "reader", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", term + "until cat /shared/greeting; do sleep 0.2;"
                                " done; sleep 100000 & wait"],
                    "volumeMounts": shared,
                },
                {
                    "name": "crasher", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "echo crashing; exit 3"],
                },
            ],
        },
    }  # fmt: skip


def wait_for(what: str, check: Callable[[], Any], timeout: float, kubelet: Kubelet) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    node = kubelet.node
    pytest.fail(
        f"{what}: not within {timeout} s\n{node.crictl('pods').stdout}"
        f"{node.crictl('ps', '-a').stdout}\n--- kubelet ---\n{kubelet.log()}"
    )


def running_ids(node: CriNode, name: str) -> list[str]:
    return node.crictl("ps", "--name", f"^{name}$", "--state", "Running", "-q").stdout.split()


@pytest.mark.timeout(900)  # it may wait for another kubelet's ports first
def test_kubelet_runs_the_issues_static_pod_on_ctrd(kubelet: Kubelet, cri_node: CriNode):
    node = cri_node
    for image in (BUSYBOX, PAUSE):
        node.crictl("pull", image)
    name = f"ctrdtest-{os.getpid()}-{time.time_ns() % 10**6}"
    host_port = free_port()
    path = kubelet.work / "manifests" / f"{name}.json"
    path.write_text(json.dumps(manifest(name, host_port)))
    full = f"{name}-"  # kubelet names a static pod <name>-<node name>

    writer = wait_for("writer running", lambda: running_ids(node, "writer"), 60, kubelet)[0]
    wait_for("reader running", lambda: running_ids(node, "reader"), 30, kubelet)

    def ready() -> bool:
        for pod in kubelet.pods():
            if pod["metadata"]["name"].startswith(full):
                states = pod.get("status", {}).get("containerStatuses") or []
                return any(s["name"] == "writer" and s.get("ready") for s in states)
        return False

    wait_for("the exec readiness probe passing", ready, 30, kubelet)

    # the emptyDir, shared: the reader printed what the writer wrote; served on the hostPort
    reader = running_ids(node, "reader")[0]
    assert "hello" in node.crictl("logs", reader).stdout
    with _OPENER.open(f"http://127.0.0.1:{host_port}/greeting", timeout=10) as answer:
        assert answer.read() == b"hello\n"

    # the memory limit, in the spec and enforced: a process past it is OOM-killed
    info = node.json("inspect", writer)["info"]
    assert info["runtimeSpec"]["linux"]["resources"]["memory"]["limit"] == 48 << 20
    hog = node.crictl(
        "exec", "--sync", "--timeout", "30", writer, "sh", "-c", "head -c 100m /dev/zero | tail",
        check=False,
    )  # fmt: skip
    assert "exited with 137" in hog.stderr, hog.stdout + hog.stderr  # tail, OOM-killed
    assert running_ids(node, "writer") == [writer], "the limit killed more than the hog"

    # the crasher: restarted after kubelet's back-off (CrashLoopBackOff, 10 s the first time)
    seen: dict[str, Any] = {}

    def restarted() -> bool:
        for pod in kubelet.pods():
            for status in pod.get("status", {}).get("containerStatuses") or []:
                waiting = status.get("state", {}).get("waiting") or {}
                if status["name"] == "crasher" and waiting.get("reason") == "CrashLoopBackOff":
                    seen.setdefault("back-off", waiting.get("message", ""))
                if status["name"] == "crasher" and status.get("restartCount", 0) >= 1:
                    seen["last"] = status.get("lastState", {}).get("terminated", {})
        return "back-off" in seen and "last" in seen

    wait_for("the crasher restarted after a back-off", restarted, 45, kubelet)
    assert "back-off 10s restarting failed container=crasher" in seen["back-off"], seen
    assert seen["last"].get("exitCode") == 3, seen
    [latest] = node.json("ps", "-a", "--name", "^crasher$", "--latest")["containers"]
    assert latest["metadata"]["attempt"] >= 1
    assert "crashing" in node.crictl("logs", latest["id"]).stdout

    # what crictl shows
    [pod] = node.json("pods", "--name", f"^{full}")["items"]
    assert pod["state"] == "SANDBOX_READY"
    assert {s["attributes"]["metadata"]["name"] for s in node.json("stats")["stats"]} >= {
        "writer", "reader"
    }  # fmt: skip
    assert node.json("inspectp", pod["id"])["status"]["network"]["ip"]

    # the manifest removed: the pod torn down
    path.unlink()

    def gone() -> bool:
        ready_pods = node.crictl("pods", "--id", pod["id"], "--state", "ready", "-q").stdout
        return not ready_pods.strip() and not node.crictl("ps", "--pod", pod["id"], "-q").stdout

    wait_for("the pod torn down", gone, 60, kubelet)
    kubelet.stop()  # the exited sandbox removed, and kubelet's log dirs
    assert node.json("pods")["items"] == []
    assert not list(Path("/var/log/pods").glob(f"default_{full}*"))
    assert not list(Path("/var/log/containers").glob(f"{full}*"))


@pytest.mark.timeout(900)
def test_ctrd_killed_under_kubelet_keeps_the_pod_and_reports_the_exit_meanwhile(
    kubelet: Kubelet, cri_node: CriNode
):
    node = cri_node
    node.crictl("pull", BUSYBOX)
    name = f"ctrdtest-{os.getpid()}-{time.time_ns() % 10**6}"
    pod_spec = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "keeper", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", 'trap "exit 0" TERM; sleep 100000 & wait'],
                },
                {
                    "name": "quitter", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "sleep 3; exit 7"],
                },
            ],
        },
    }  # fmt: skip
    path = kubelet.work / "manifests" / f"{name}.json"
    path.write_text(json.dumps(pod_spec))
    keeper = wait_for("keeper running", lambda: running_ids(node, "keeper"), 60, kubelet)[0]
    quitter = wait_for("quitter running", lambda: running_ids(node, "quitter"), 30, kubelet)[0]
    [pod] = node.json("pods", "--name", f"^{name}-")["items"]

    node.ctrd.stop(signal.SIGKILL)
    time.sleep(4)  # the quitter exits meanwhile
    node.ctrd.start()

    def quitter_reported() -> Any:
        for listed in kubelet.pods():
            for status in listed.get("status", {}).get("containerStatuses") or []:
                done = status.get("state", {}).get("terminated")
                if status["name"] == "quitter" and done:
                    return done
        return None

    done = wait_for("kubelet told of the quitter's exit", quitter_reported, 60, kubelet)
    assert done["exitCode"] == 7, done
    assert done["containerID"].endswith(quitter), done
    # the same sandbox and keeper, still running; no new sandbox or attempt
    assert [p["id"] for p in node.json("pods")["items"]] == [pod["id"]]
    assert node.json("inspectp", pod["id"])["status"]["state"] == "SANDBOX_READY"
    assert running_ids(node, "keeper") == [keeper]
    quit_status = node.json("inspect", quitter)["status"]
    assert (quit_status["state"], quit_status["exitCode"]) == ("CONTAINER_EXITED", 7)
    assert "Traceback" not in node.ctrd.log()

    path.unlink()
    wait_for("the keeper stopped", lambda: not running_ids(node, "keeper"), 60, kubelet)
    kubelet.stop()
    assert node.json("pods")["items"] == []
