"""The CRI's stats and UpdateContainerResources on a test ctrd, against the cgroup files.

Containers are plain tasks of the CRI's namespace made with the real ctr and turned into CRI
containers by their record (`make_cri_container`), so that these tests need nothing of the
containers' part. Values are checked against the cgroup v1 files this host has (the v2
readers are tested on files: tests/unit/cri/test_usage.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from supervisor.api.containerd.services.containers.v1 import containers_pb2 as cpb
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc as cgrpc
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from supervisor.cri import model, usage
from supervisor.cri.containers import ContainerRecord
from tests.conftest import Ctrd, ns_metadata
from tests.integration.test_cri_images import CRICTL
from tests.integration.test_tasks import pull, run, wait_for
from tests.support.cri import BUSYBOX, CriNode

pytestmark = pytest.mark.integration

NS = "k8s.io"
MIB = 1 << 20
POD = "a" * 64
OTHER_POD = "b" * 64


def make_cri_container(
    ctrd: Ctrd, cid: str, labels: dict[str, str], sandbox: str = POD, started: bool = True
) -> None:
    """Give a container made by ctr the record of a CRI container named after its id."""
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=f"name-{cid}", attempt=1),
        labels=labels,
        annotations={"note": cid},
    )
    now = time.time_ns()
    record = ContainerRecord(
        id=cid, name=f"{cid}_pod_default_uid_0", sandbox_id=sandbox,
        config=config.SerializeToString(), image="busybox", image_ref="sha256:" + "0" * 64,
        created_at=now, started_at=now if started else 0,
    )  # fmt: skip
    container = cpb.Container(id=cid, labels={model.KIND_LABEL: model.KIND_CONTAINER})
    container.extensions[model.CONTAINER_EXTENSION].CopyFrom(
        any_pb2.Any(type_url=model.CONTAINER_TYPE_URL, value=record.to_json())
    )
    paths = [f"labels.{model.KIND_LABEL}", f"extensions.{model.CONTAINER_EXTENSION}"]
    cgrpc.ContainersStub(ctrd.channel).Update(
        cpb.UpdateContainerRequest(
            container=container, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=ns_metadata(NS),
    )


@pytest.fixture
def runtime(ctrd: Ctrd) -> Iterator[Any]:
    with grpc.insecure_channel(f"unix:{ctrd.address}") as channel:
        yield cri_grpc.RuntimeServiceStub(channel)


def crictl(ctrd: Ctrd, *args: str) -> str:
    if not os.access(CRICTL, os.X_OK):
        pytest.fail(f"crictl is not at {CRICTL} (../shared/tools/cri, or set CTRD_CRICTL)")
    (ctrd.base / "crictl.yaml").write_text("")
    endpoint = f"unix://{ctrd.address}"
    result = subprocess.run(
        [CRICTL, "--config", str(ctrd.base / "crictl.yaml"), "--runtime-endpoint", endpoint,
         "--image-endpoint", endpoint, "--timeout", "20s", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{ctrd.log()[-3000:]}"
    return result.stdout


def task_pid(ctrd: Ctrd, cid: str) -> int:
    for line in ctrd.ctr("tasks", "ls", ns=NS).stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == cid:
            return int(fields[1])
    raise AssertionError(f"no task {cid}")


def cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"{pid} has no {controller} cgroup")


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def memory_stat(directory: Path) -> dict[str, int]:
    lines = (directory / "memory.stat").read_text().splitlines()
    return {k: int(v) for k, v in (line.split() for line in lines)}


def upper_dir(pid: int) -> Path:
    """The container's writable layer: the upperdir of its root's overlay mount."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/" and "upperdir=" in line:
            return Path(re.search(r"upperdir=([^,\s]+)", line)[1])  # type: ignore[index]
    raise AssertionError("no overlay root")


def disk_usage(root: Path) -> tuple[int, int]:
    seen: dict[tuple[int, int], int] = {}
    for directory, dirs, files in os.walk(root):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            st = os.lstat(name)
            seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values()), len(seen)


def by_id(stats: Any) -> dict[str, Any]:
    return {s.attributes.id: s for s in stats}


def test_container_stats_are_the_cgroup_files_and_list_filters_select(ctrd, busybox_image, runtime):
    ref = pull(ctrd, busybox_image, ns=NS)
    busy = "head -c 1048576 /dev/zero > /big; while :; do :; done"
    run(ctrd, "-d", ref, "busy", "sh", "-c", busy, ns=NS)
    run(ctrd, "-d", ref, "idle", "sleep", "3600", ns=NS)
    run(ctrd, "-d", ref, "other", "sleep", "3600", ns=NS)
    ctrd.ctr("containers", "create", ref, "made", "true", ns=NS)  # no task: not listed
    make_cri_container(ctrd, "busy", {"app": "web", "tier": "front"})
    make_cri_container(ctrd, "idle", {"app": "web", "tier": "back"})
    make_cri_container(ctrd, "other", {"app": "db"}, sandbox=OTHER_POD)
    make_cri_container(ctrd, "made", {"app": "web"}, started=False)
    pids = {cid: task_pid(ctrd, cid) for cid in ("busy", "idle", "other")}
    upper = upper_dir(pids["busy"])
    wait_for(lambda: (upper / "big").exists() and (upper / "big").stat().st_size == MIB)

    cpu_before = read_int(cgroup_dir(pids["busy"], "cpuacct") / "cpuacct.usage")
    first = by_id(runtime.ListContainerStats(cri.ListContainerStatsRequest(), timeout=20).stats)
    cpu_after = read_int(cgroup_dir(pids["busy"], "cpuacct") / "cpuacct.usage")
    assert set(first) == {"busy", "idle", "other"}
    busy_stats = first["busy"]
    assert busy_stats.attributes.metadata == cri.ContainerMetadata(name="name-busy", attempt=1)
    assert dict(busy_stats.attributes.labels) == {"app": "web", "tier": "front"}
    assert dict(busy_stats.attributes.annotations) == {"note": "busy"}
    assert cpu_before <= busy_stats.cpu.usage_core_nano_seconds.value <= cpu_after
    assert busy_stats.cpu.usage_nano_cores.value == 0  # the first sample
    assert busy_stats.cpu.timestamp > 0
    assert busy_stats.memory.timestamp > 0
    assert (busy_stats.writable_layer.used_bytes.value,
            busy_stats.writable_layer.inodes_used.value) == disk_usage(upper)  # fmt: skip
    assert busy_stats.writable_layer.used_bytes.value >= MIB
    assert busy_stats.writable_layer.fs_id.mountpoint.endswith("overlayfs")

    memory = cgroup_dir(pids["idle"], "memory")
    idle = first["idle"].memory
    usage, stat = read_int(memory / "memory.usage_in_bytes"), memory_stat(memory)
    assert abs(idle.usage_bytes.value - usage) <= 64 * 1024  # an idle sleep's pages barely move
    assert idle.working_set_bytes.value == max(
        idle.usage_bytes.value - stat["total_inactive_file"], 0
    )
    assert idle.rss_bytes.value == stat["total_rss"]
    assert 0 < idle.page_faults.value <= stat["total_pgfault"]
    assert idle.available_bytes.value == 0  # no limit

    time.sleep(0.5)
    second = by_id(runtime.ListContainerStats(cri.ListContainerStatsRequest(), timeout=20).stats)
    assert second["busy"].cpu.usage_nano_cores.value > 300_000_000  # a busy loop: ~1 core
    assert second["idle"].cpu.usage_nano_cores.value < 50_000_000

    def listed(**wanted: Any) -> list[str]:
        request = cri.ListContainerStatsRequest(filter=cri.ContainerStatsFilter(**wanted))
        return sorted(by_id(runtime.ListContainerStats(request, timeout=20).stats))

    assert listed(id="bu") == ["busy"]  # a unique prefix
    assert listed(id="nope") == []
    assert listed(label_selector={"app": "web"}) == ["busy", "idle"]
    assert listed(label_selector={"app": "web", "tier": "back"}) == ["idle"]
    assert listed(id="idle", label_selector={"app": "db"}) == []

    one = runtime.ContainerStats(cri.ContainerStatsRequest(container_id="idl"), timeout=20)
    assert one.stats.attributes.id == "idle"
    with pytest.raises(grpc.RpcError) as e:
        runtime.ContainerStats(cri.ContainerStatsRequest(container_id="nope"), timeout=20)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:  # created, never started: no metrics
        runtime.ContainerStats(cri.ContainerStatsRequest(container_id="made"), timeout=20)
    assert "is not running" in (e.value.details() or "")

    shown = json.loads(crictl(ctrd, "stats", "-o", "json", "--label", "tier=front"))
    assert [s["attributes"]["id"] for s in shown["stats"]] == ["busy"]
    assert int(shown["stats"][0]["writableLayer"]["usedBytes"]["value"]) >= MIB
    table = crictl(ctrd, "stats", "-s", "0")
    assert "name-busy" in table
    assert "name-idle" in table

    ctrd.ctr("tasks", "kill", "-s", "KILL", "busy", ns=NS)
    wait_for(lambda: listed() == ["idle", "other"])  # an exited container is not listed


def test_list_container_stats_latency_at_10_and_50_containers(ctrd, busybox_image, runtime):
    ref = pull(ctrd, busybox_image, ns=NS)
    figures = {}
    made = 0
    for size in (10, 50):
        while made < size:
            cid = f"c{made:02d}"
            run(ctrd, "-d", ref, cid, "sleep", "3600", ns=NS)
            make_cri_container(ctrd, cid, {"n": str(made)})
            made += 1
        request = cri.ListContainerStatsRequest()
        assert len(runtime.ListContainerStats(request, timeout=20).stats) == size  # warm
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            assert len(runtime.ListContainerStats(request, timeout=20).stats) == size
            timings.append(time.perf_counter() - started)
        figures[size] = statistics.median(timings) * 1000
    print(f"ListContainerStats median: {figures[10]:.1f} ms at 10, {figures[50]:.1f} ms at 50")
    assert figures[50] < 1000


def test_update_container_resources_reaches_the_cgroup_and_the_spec_and_outlives_a_restart(
    ctrd, busybox_image, runtime
):
    ref = pull(ctrd, busybox_image, ns=NS)
    run(ctrd, "-d", ref, "u1", "sleep", "3600", ns=NS)
    make_cri_container(ctrd, "u1", {})
    pid = task_pid(ctrd, "u1")
    memory, cpu = cgroup_dir(pid, "memory"), cgroup_dir(pid, "cpu")

    linux = cri.LinuxContainerResources(
        memory_limit_in_bytes=64 * MIB, cpu_quota=50000, cpu_period=100000, cpu_shares=512,
        cpuset_cpus="0",
    )  # fmt: skip
    runtime.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(container_id="u1", linux=linux), timeout=20
    )
    assert read_int(memory / "memory.limit_in_bytes") == 64 * MIB
    assert read_int(memory / "memory.memsw.limit_in_bytes") == 64 * MIB  # no swapping
    assert read_int(cpu / "cpu.cfs_quota_us") == 50000
    assert read_int(cpu / "cpu.shares") == 512
    assert (cgroup_dir(pid, "cpuset") / "cpuset.cpus").read_text().strip() == "0"
    stats = runtime.ContainerStats(cri.ContainerStatsRequest(container_id="u1"), timeout=20)
    m = stats.stats.memory
    assert m.available_bytes.value == 64 * MIB - m.working_set_bytes.value

    def stored() -> dict[str, Any]:
        info = json.loads(ctrd.ctr("containers", "info", "u1", ns=NS).stdout)
        return info["Spec"]["linux"]["resources"]

    assert stored()["memory"]["limit"] == 64 * MIB
    assert stored()["cpu"]["quota"] == 50000

    def oom(adj: int) -> tuple[int, int]:
        runtime.UpdateContainerResources(
            cri.UpdateContainerResourcesRequest(
                container_id="u1", linux=cri.LinuxContainerResources(oom_score_adj=adj)
            ),
            timeout=20,
        )
        info = json.loads(ctrd.ctr("containers", "info", "u1", ns=NS).stdout)
        return read_int(Path(f"/proc/{pid}/oom_score_adj")), info["Spec"]["process"]["oomScoreAdj"]

    assert oom(500) == (500, 500)
    own = read_int(Path(f"/proc/{ctrd.proc.pid}/oom_score_adj"))
    assert oom(own - 300) == (own, own)  # never below the daemon's own ([cri] restrict...)
    assert stored()["memory"]["limit"] == 64 * MIB  # an update naming only the score

    ctrd.stop(signal.SIGKILL)
    ctrd.start()
    assert read_int(memory / "memory.limit_in_bytes") == 64 * MIB
    assert stored()["memory"] == {"limit": 64 * MIB, "swap": 64 * MIB}
    crictl(ctrd, "update", "--memory", str(96 * MIB), "u1")  # the task is taken back
    assert read_int(memory / "memory.limit_in_bytes") == 96 * MIB
    assert stored()["cpu"]["shares"] == 512  # what the update did not name is kept
    after = runtime.ContainerStats(cri.ContainerStatsRequest(container_id="u1"), timeout=20)
    assert after.stats.memory.available_bytes.value == (
        96 * MIB - after.stats.memory.working_set_bytes.value
    )  # listed again after the restart, with the new limit

    ctrd.ctr("containers", "create", ref, "u2", "sleep", "3600", ns=NS)
    make_cri_container(ctrd, "u2", {}, started=False)
    crictl(ctrd, "update", "--memory", str(32 * MIB), "u2")  # no task: the spec only
    ctrd.ctr("tasks", "start", "-d", "--fifo-dir", ctrd.fifo_dir(), "u2", ns=NS)
    started = cgroup_dir(task_pid(ctrd, "u2"), "memory")
    assert read_int(started / "memory.limit_in_bytes") == 32 * MIB

    ctrd.ctr("tasks", "kill", "-s", "KILL", "u2", ns=NS)
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls", ns=NS).stdout)
    crictl(ctrd, "update", "--memory", str(48 * MIB), "u2")  # exited: the spec only, no error
    with pytest.raises(grpc.RpcError) as e:
        runtime.UpdateContainerResources(
            cri.UpdateContainerResourcesRequest(container_id="nope", linux=linux), timeout=20
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


# --- pods, through RunPodSandbox and CreateContainer, on a node with a CNI network -----------


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A pod cgroup path of the test's own (kubelet's cgroupfs form), removed afterwards: a
    test names it before `cri_node`, so that the node's end (removing the pods and their
    containers' cgroups) comes first."""
    top = f"ctrd-test-{uuid.uuid4().hex[:12]}"
    yield f"/{top}/pod1"
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        made = hierarchy / top
        if made.is_dir():
            for directory in sorted(made.rglob("*"), key=lambda p: -len(p.parts)):
                if directory.is_dir():
                    directory.rmdir()
            made.rmdir()


def net_pin(node: CriNode, pod: str) -> str:
    return str(node.json("inspectp", pod)["info"]["pinnedNamespaces"]["net"])


def eth0(pin: str) -> usage.Interface:
    done = subprocess.run(
        ["nsenter", f"--net={pin}", "cat", "/proc/net/dev"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return next(i for i in usage.parse_net_dev(done.stdout) if i.name == "eth0")


def test_pod_stats_are_the_pod_cgroup_its_interfaces_and_its_containers(
    cgroup_parent: str, cri_node: CriNode
):
    node = cri_node
    pod = node.run_pod("web", labels={"app": "web"}, linux={"cgroup_parent": cgroup_parent})
    busy = node.run_container(pod, "web", "busy", ["sh", "-c", "while :; do :; done"])
    idle = node.run_container(pod, "web", "idle", ["sleep", "3600"])
    lone = node.run_pod("lone", labels={"app": "lone"})  # no cgroup parent
    alone = node.run_container(lone, "lone", "alone", ["sleep", "3600"])
    pin = net_pin(node, pod)
    address = node.json("inspectp", pod)["status"]["network"]["ip"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(3):
            udp.sendto(b"x" * 100, (address, 9))  # into the pod's eth0 (discarded there)

    cpu_file = Path("/sys/fs/cgroup/cpuacct") / cgroup_parent.lstrip("/") / "cpuacct.usage"
    cpu_before, net_before = read_int(cpu_file), eth0(pin)
    first = node.runtime.PodSandboxStats(
        cri.PodSandboxStatsRequest(pod_sandbox_id=pod[:12]), timeout=20
    ).stats
    cpu_after, net_after = read_int(cpu_file), eth0(pin)
    assert first.attributes.id == pod
    assert first.attributes.metadata.name == "web"
    assert dict(first.attributes.labels) == {"app": "web"}
    linux = first.linux
    assert cpu_before <= linux.cpu.usage_core_nano_seconds.value <= cpu_after
    assert linux.cpu.usage_nano_cores.value == 0  # the first sample
    memory = Path("/sys/fs/cgroup/memory") / cgroup_parent.lstrip("/")
    assert abs(linux.memory.rss_bytes.value - memory_stat(memory)["total_rss"]) <= 256 * 1024
    assert linux.memory.usage_bytes.value >= linux.memory.working_set_bytes.value > 0
    assert linux.process.process_count.value == 2
    assert sorted(s.attributes.id for s in linux.containers) == sorted([busy, idle])
    layer = next(s for s in linux.containers if s.attributes.id == busy).writable_layer
    assert layer.used_bytes.value >= 4096  # the container's upper dir (its snapshot's)
    assert layer.inodes_used.value >= 1
    default = linux.network.default_interface
    assert default.name == "eth0"
    assert net_before.tx_bytes <= default.tx_bytes.value <= net_after.tx_bytes
    assert net_before.rx_bytes <= default.rx_bytes.value <= net_after.rx_bytes
    assert default.rx_bytes.value >= 3 * 100  # the three datagrams at least
    assert [i.name for i in linux.network.interfaces] == ["eth0"]  # lo left out

    time.sleep(0.5)
    second = node.runtime.PodSandboxStats(
        cri.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=20
    )
    assert second.stats.linux.cpu.usage_nano_cores.value > 300_000_000

    def listed(**wanted: Any) -> list[str]:
        request = cri.ListPodSandboxStatsRequest(filter=cri.PodSandboxStatsFilter(**wanted))
        return sorted(s.attributes.id for s in node.runtime.ListPodSandboxStats(request).stats)

    assert listed() == sorted([pod, lone])
    assert listed(id=lone[:8]) == [lone]
    assert listed(label_selector={"app": "web"}) == [pod]
    lone_stats = node.runtime.PodSandboxStats(
        cri.PodSandboxStatsRequest(pod_sandbox_id=lone)
    ).stats.linux
    # Without a cgroup of its own the pod is the sum of its containers (here: one).
    (alone_stats,) = lone_stats.containers
    assert alone_stats.attributes.id == alone
    assert lone_stats.memory.usage_bytes.value == alone_stats.memory.usage_bytes.value > 0
    assert lone_stats.process.process_count.value == 1

    request = cri.ListContainerStatsRequest(
        filter=cri.ContainerStatsFilter(pod_sandbox_id=pod[:10])
    )
    found = [s.attributes.id for s in node.runtime.ListContainerStats(request).stats]
    assert sorted(found) == sorted([busy, idle])
    shown = node.json("statsp", "--label", "app=web")
    assert [s["attributes"]["id"] for s in shown["stats"]] == [pod]
    assert shown["stats"][0]["linux"]["network"]["defaultInterface"]["name"] == "eth0"
    shown = node.json("stats", "--pod", lone)
    assert [s["attributes"]["id"] for s in shown["stats"]] == [alone]

    node.crictl("stopp", lone)
    assert listed() == [pod]  # a NOTREADY pod is skipped
    with pytest.raises(grpc.RpcError) as e:
        node.runtime.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=lone), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    node.crictl("rmp", "-f", pod, lone)


def test_update_of_a_cri_container_created_then_started_reaches_its_cgroup(cri_node: CriNode):
    node = cri_node
    pod = node.run_pod("upd")
    node.crictl("pull", BUSYBOX, timeout=120)
    config = node.container_config(
        "u", ["sleep", "3600"], linux={"resources": {"memory_limit_in_bytes": 128 * MIB}}
    )
    cid = node.crictl("create", pod, str(config), str(node.base / "pod-upd.json")).stdout.strip()
    node.crictl("update", "--memory", str(40 * MIB), "--cpu-share", "256", cid)  # CREATED
    node.crictl("start", cid)
    task = int(node.json("inspect", cid)["info"]["pid"])
    assert read_int(cgroup_dir(task, "memory") / "memory.limit_in_bytes") == 40 * MIB
    assert read_int(cgroup_dir(task, "cpu") / "cpu.shares") == 256
    node.crictl("update", "--memory", str(24 * MIB), cid)  # RUNNING
    assert read_int(cgroup_dir(task, "memory") / "memory.limit_in_bytes") == 24 * MIB
    node.crictl("rmp", "-f", pod)
