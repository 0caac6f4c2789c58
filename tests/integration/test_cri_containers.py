"""CRI containers on ctrd (runtime.v1): their lifecycle, spec and security context, driven
with the real crictl and with the generated stubs against a test ctrd (the fixture of
test_cri_images: `[cri] mirrors` send registry.k8s.io to the tests' loopback registry).

Pods come from RunPodSandbox (the sandboxes part) on the host's network (no CNI needed),
without a pause process (PID mode CONTAINER, kubelet's default).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from tests.integration import test_cri_images
from tests.integration.test_cri_images import Cri
from tests.support import images
from tests.support.registry import Registry

pytestmark = pytest.mark.integration
cri_ctrd = test_cri_images.cri_ctrd  # the fixture: a test ctrd whose mirrors reach the registry

NS = "k8s.io"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
IMAGE = "registry.k8s.io/library/cric:latest"
PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
web:x:1001:1002:web:/home/web:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = b"""\
root:x:0:
app:x:1000:
webgrp:x:1002:
staff:x:50:web,app
audio:x:63:web
nobody:x:65534:
"""


@pytest.fixture(scope="module")
def cric_image(registry: Registry) -> Any:
    """busybox with more users and groups, an entrypoint, a cmd, env and a stop signal."""
    etc = [images.Dir("etc"), images.File("etc/passwd", PASSWD), images.File("etc/group", GROUP)]
    image = images.build_image(
        [images.busybox_layer(), etc],
        config={
            "Entrypoint": ["/bin/echo", "entry"],
            "Cmd": ["image-cmd"],
            "Env": [images.PATH_ENV, "FROM_IMAGE=1", "OVERRIDE=image"],
            "StopSignal": "SIGUSR1",
            "WorkingDir": "/tmp",
        },
    )
    return registry.push("library/cric", "latest", image)


@dataclass
class Pod:
    id: str
    config: cri.PodSandboxConfig
    logs: Path


@pytest.fixture
def pod(cri_ctrd: Cri, cric_image: Any, short_tmp: Path) -> Pod:
    """The image pulled through the CRI and a pod in the host's namespaces (own PID ones)."""
    cri_ctrd.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE)), timeout=60)
    return make_pod(cri_ctrd, short_tmp)


def make_pod(c: Cri, base: Path, privileged: bool = False, name: str = "pod") -> Pod:
    """A pod through RunPodSandbox: the host's network (no CNI here), its own IPC namespace
    (pinned), no shared PID namespace (no pause), logs under `base`."""
    logs = base / f"logs-{name}"
    options = cri.NamespaceOption(network=cri.NODE, pid=cri.CONTAINER)
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname="podhost",
        log_directory=str(logs),
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(
                privileged=privileged, namespace_options=options
            )
        ),
    )
    reply = c.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60)
    return Pod(reply.pod_sandbox_id, config, logs)


def container_config(name: str = "c", **fields: Any) -> cri.ContainerConfig:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=IMAGE),
        log_path=f"{name}/0.log", **fields,
    )  # fmt: skip
    return config


def create(c: Cri, pod: Pod, config: cri.ContainerConfig) -> str:
    reply = c.runtime.CreateContainer(
        cri.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config),
        timeout=30,
    )
    return str(reply.container_id)


def status(c: Cri, cid: str) -> Any:
    return c.runtime.ContainerStatus(
        cri.ContainerStatusRequest(container_id=cid), timeout=10
    ).status


def wait_exit(c: Cri, cid: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status(c, cid)
        if found.state == cri.CONTAINER_EXITED:
            return found
        time.sleep(0.05)
    pytest.fail(f"container {cid} did not exit:\n{c.ctrd.log()[-3000:]}")


def output(path: str) -> str:
    """The content of a container's log (json-file or CRI format), stdout and stderr."""
    text = Path(path).read_text()
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line)["log"])
        else:
            _time, _stream, tag, content = [*line.split(" ", 3), ""][:4]
            out.append(content + ("\n" if tag == "F" else ""))
    return "".join(out)


def run(c: Cri, pod: Pod, config: cri.ContainerConfig) -> tuple[int, str]:
    """Create, start, wait: (exit code, output)."""
    cid = create(c, pod, config)
    c.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    done = wait_exit(c, cid)
    return done.exit_code, output(done.log_path)


def test_entrypoint_cmd_env_and_workdir_follow_dockers_rules(cri_ctrd: Cri, pod: Pod):
    code, out = run(cri_ctrd, pod, container_config("a"))
    assert (code, out) == (0, "entry image-cmd\n")
    code, out = run(cri_ctrd, pod, container_config("b", args=["given"]))
    assert out == "entry given\n"
    script = 'echo "$FROM_IMAGE $OVERRIDE $HOSTNAME $(pwd)"'
    config = container_config(
        "c", command=["/bin/sh", "-c"], args=[script],
        envs=[cri.KeyValue(key="OVERRIDE", value="cri")],
    )  # fmt: skip
    assert run(cri_ctrd, pod, config)[1] == "1 cri podhost /tmp\n"
    config = container_config("d", command=["/bin/sh", "-c", "pwd; exit 3"], working_dir="/home")
    assert run(cri_ctrd, pod, config) == (3, "/home\n")


def ids(text: str) -> list[str]:
    return text.split()


def test_users_by_id_name_and_group_get_the_images_groups_and_the_pods(cri_ctrd: Cri, pod: Pod):
    probe = ["/bin/sh", "-c", "id -u; id -g; id -G"]

    def user(name: str, **context: Any) -> list[list[str]]:
        security = cri.LinuxContainerSecurityContext(**context)
        config = container_config(
            name, command=probe, linux=cri.LinuxContainerConfig(security_context=security)
        )
        code, out = run(cri_ctrd, pod, config)
        assert code == 0, out
        return [line.split() for line in out.splitlines()]

    uid, gid, groups = user("by-id", run_as_user=cri.Int64Value(value=1001))
    assert (uid, gid, set(groups)) == (["1001"], ["1002"], {"1002", "50", "63"})
    uid, gid, groups = user("by-name", run_as_username="app")
    assert (uid, gid, set(groups)) == (["1000"], ["1000"], {"1000", "50"})
    uid, gid, groups = user(
        "with-group",
        run_as_user=cri.Int64Value(value=1000),
        run_as_group=cri.Int64Value(value=63),
        supplemental_groups=[1234, 5678],
    )
    assert (uid, gid, set(groups)) == (["1000"], ["63"], {"63", "50", "1234", "5678"})
    uid, gid, groups = user("unknown-uid", run_as_user=cri.Int64Value(value=4242))
    assert (uid, gid, groups) == (["4242"], ["0"], ["0"])
    uid, gid, groups = user("root")  # root of the image: its groups (none beyond root's)
    assert (uid, gid, groups) == (["0"], ["0"], ["0"])

    for bad in (
        {"run_as_group": cri.Int64Value(value=5)},  # a group without a user
        {"run_as_username": "nosuchuser"},
    ):
        security = cri.LinuxContainerSecurityContext(**bad)  # type: ignore[arg-type]
        config = container_config(
            "bad", command=probe, linux=cri.LinuxContainerConfig(security_context=security)
        )
        with pytest.raises(grpc.RpcError) as failed:
            create(cri_ctrd, pod, config)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def _status_field(out: str, key: str) -> str:
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    raise AssertionError(f"{key} not in {out!r}")


def test_capabilities_no_new_privs_seccomp_and_read_only_root(
    cri_ctrd: Cri, pod: Pod, short_tmp: Path
):
    probe = ["/bin/sh", "-c", "cat /proc/self/status; touch /probe && echo wrote"]

    def status_of(name: str, **context: Any) -> tuple[int, str]:
        security = cri.LinuxContainerSecurityContext(**context)
        config = container_config(
            name, command=probe, linux=cri.LinuxContainerConfig(security_context=security)
        )
        return run(cri_ctrd, pod, config)

    docker_default = sum(
        1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31)
    )  # chown dac_override fowner fsetid kill setgid setuid setpcap net_bind_service net_raw
    # sys_chroot mknod audit_write setfcap
    code, out = status_of("default")
    assert int(_status_field(out, "CapBnd"), 16) == docker_default
    assert _status_field(out, "NoNewPrivs") == "0"
    assert _status_field(out, "Seccomp") == "0"  # nothing asked: unconfined, as containerd
    assert "wrote" in out

    with open("/proc/self/status") as f:
        own = int(_status_field(f.read(), "CapEff"), 16)
    caps = cri.Capability(add_capabilities=["ALL"], drop_capabilities=["CHOWN"])
    out = status_of("all", capabilities=caps)[1]
    assert int(_status_field(out, "CapBnd"), 16) == own & ~1
    out = status_of("none", capabilities=cri.Capability(drop_capabilities=["ALL"]))[1]
    assert int(_status_field(out, "CapBnd"), 16) == 0
    caps = cri.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["NET_RAW"])
    out = status_of("some", capabilities=caps)[1]
    assert int(_status_field(out, "CapBnd"), 16) == (docker_default | 1 << 12) & ~(1 << 13)

    code, out = status_of("nnp-ro", no_new_privs=True, readonly_rootfs=True)
    assert _status_field(out, "NoNewPrivs") == "1"
    assert code != 0
    assert "Read-only file system" in out
    assert "wrote" not in out

    default = cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)
    assert _status_field(status_of("sc-default", seccomp=default)[1], "Seccomp") == "2"
    out = status_of("sc-path", seccomp_profile_path="runtime/default")[1]
    assert _status_field(out, "Seccomp") == "2"
    unconfined = cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
    assert _status_field(status_of("sc-unconfined", seccomp=unconfined)[1], "Seccomp") == "0"
    profile = short_tmp / "no-mkdir.json"
    blocked = [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": blocked}))
    local = cri.SecurityProfile(
        profile_type=cri.SecurityProfile.Localhost, localhost_ref=str(profile)
    )
    security = cri.LinuxContainerSecurityContext(seccomp=local)
    config = container_config(
        "sc-local", command=["/bin/sh", "-c", "mkdir /tmp/d || echo refused"],
        linux=cri.LinuxContainerConfig(security_context=security),
    )  # fmt: skip
    out = run(cri_ctrd, pod, config)[1]
    assert "Operation not permitted" in out
    assert "refused" in out
    out = status_of("sc-local-path", seccomp_profile_path=f"localhost/{profile}")[1]
    assert _status_field(out, "Seccomp") == "2"
    for bad in (str(profile), "nonsense"):  # a path without localhost/ is refused
        security = cri.LinuxContainerSecurityContext(seccomp_profile_path=bad)
        config = container_config(
            "bad", command=probe, linux=cri.LinuxContainerConfig(security_context=security)
        )
        with pytest.raises(grpc.RpcError) as failed:
            create(cri_ctrd, pod, config)
        assert "invalid profile" in (failed.value.details() or "")


def test_a_device_is_there_with_its_permissions(cri_ctrd: Cri, pod: Pod, short_tmp: Path):
    link = short_tmp / "loop-link"
    link.symlink_to("/dev/loop-control")  # resolved, as containerd does (runc allows tun)
    device = cri.Device(container_path="/dev/xloop", host_path=str(link), permissions="r")
    script = (
        "stat -c %t:%T /dev/xloop; (exec 3</dev/xloop) && echo read-ok; "
        "(exec 4>/dev/xloop) || echo write-refused"
    )
    config = container_config("dev", command=["/bin/sh", "-c", script], devices=[device])
    out = run(cri_ctrd, pod, config)[1]
    assert out.splitlines()[0] == "a:ed"  # 10:237
    assert "read-ok" in out
    assert "write-refused" in out


def test_masked_and_read_only_paths_are_those_given(cri_ctrd: Cri, pod: Pod):
    security = cri.LinuxContainerSecurityContext(
        masked_paths=["/etc/group"], readonly_paths=["/tmp"]
    )
    config = container_config(
        "paths",
        command=["/bin/sh", "-c", "wc -c < /etc/group; touch /tmp/test"],
        linux=cri.LinuxContainerConfig(security_context=security),
    )
    code, out = run(cri_ctrd, pod, config)
    assert code != 0
    assert out.splitlines()[0].strip() == "0"  # /dev/null over it
    assert "touch: /tmp/test: Read-only file system" in out
    # Without any given, none (kubelet sends the defaults): /proc/kcore is readable as a file.
    config = container_config(
        "nopaths", command=["/bin/sh", "-c", "grep -c kcore /proc/self/mountinfo"]
    )
    assert run(cri_ctrd, pod, config)[1].strip() == "0"


def _crictl_configs(base: Path, pod: Pod, name: str, command: list[str]) -> tuple[str, str]:
    """crictl's container and pod config files for `command` in `pod`."""
    from google.protobuf import json_format

    container = base / f"{name}.json"
    container.write_text(
        json.dumps(
            {
                "metadata": {"name": name},
                "image": {"image": "cric"},  # a short name, normalised as kubelet's are
                "command": command,
                "log_path": f"{name}/0.log",
                "labels": {"app": name},
            }
        )
    )
    sandbox = base / f"{name}-pod.json"
    sandbox.write_text(
        json_format.MessageToJson(
            pod.config, preserving_proto_field_name=True, use_integers_for_enums=True
        )
    )
    return str(container), str(sandbox)


def test_crictl_create_start_ps_inspect_logs_stop_rm(cri_ctrd: Cri, pod: Pod, short_tmp: Path):
    # The image's stop signal is SIGUSR1: a shell that exits 7 on it proves it was sent.
    script = "trap 'echo bye; exit 7' USR1; echo hello; while true; do sleep 0.05; done"
    files = _crictl_configs(short_tmp, pod, "web", ["/bin/sh", "-c", script])
    cri_ctrd.ctrd.ctr("images", "tag", IMAGE, "docker.io/library/cric:latest", ns=NS)
    cid = cri_ctrd.crictl("create", "--no-pull", pod.id, *files).stdout.strip()
    assert len(cid) == 64
    [listed] = cri_ctrd.json("ps", "-a")["containers"]
    assert (listed["id"], listed["state"], listed["labels"]) == (
        cid, "CONTAINER_CREATED", {"app": "web"},
    )  # fmt: skip
    names = cri_ctrd.ctrd.ctr("containers", "ls", "-q", ns=NS).stdout.split()
    assert cid in names  # an ordinary ctrd container of k8s.io
    cri_ctrd.crictl("start", cid[:13])
    [listed] = cri_ctrd.json("ps", "--state", "running")["containers"]
    assert listed["id"] == cid
    inspected = cri_ctrd.json("inspect", cid)
    assert inspected["status"]["state"] == "CONTAINER_RUNNING"
    assert inspected["status"]["image"]["image"] == "docker.io/library/cric:latest"
    assert inspected["info"]["pid"] > 0
    assert inspected["info"]["runtimeSpec"]["process"]["args"][:2] == ["/bin/sh", "-c"]
    log_path = inspected["status"]["logPath"]
    assert log_path == str(pod.logs / "web" / "0.log")
    deadline = time.monotonic() + 5
    while "hello" not in output(log_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "hello" in cri_ctrd.crictl("logs", cid).stdout
    first = Path(log_path).read_text().splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z stdout F hello", first)

    cri_ctrd.crictl("stop", "--timeout", "10", cid)
    done = status(cri_ctrd, cid)  # stop returned: dead and recorded
    assert (done.state, done.exit_code, done.reason) == (cri.CONTAINER_EXITED, 7, "Error")
    assert done.finished_at >= done.started_at > done.created_at > 0
    assert "bye" in output(log_path)
    cri_ctrd.crictl("stop", cid)  # again: nothing to do
    assert cri_ctrd.json("ps", "--state", "exited")["containers"][0]["id"] == cid
    cri_ctrd.crictl("rm", cid)
    assert cri_ctrd.json("ps", "-a")["containers"] == []
    assert cid not in cri_ctrd.ctrd.ctr("containers", "ls", "-q", ns=NS).stdout.split()
    assert cid not in cri_ctrd.ctrd.ctr("snapshots", "ls", ns=NS).stdout
    assert os.path.exists(log_path)  # kubelet's: not deleted
    # Removing or stopping what is not there is success (the API's idempotence).
    cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=10)
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=cid), timeout=10)


def test_stop_with_no_timeout_kills_and_remove_forces_a_running_one(cri_ctrd: Cri, pod: Pod):
    sleeper = ["/bin/sh", "-c", "trap '' USR1 TERM; while true; do sleep 0.05; done"]
    first = create(cri_ctrd, pod, container_config("a", command=sleeper))
    second = create(cri_ctrd, pod, container_config("b", command=sleeper))
    for cid in (first, second):
        cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    started = time.monotonic()
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=first, timeout=0))
    assert time.monotonic() - started < 5
    done = status(cri_ctrd, first)
    assert (done.exit_code, done.reason) == (137, "Error")
    started = time.monotonic()
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=second, timeout=1))
    assert 1 <= time.monotonic() - started < 6  # the signal ignored: SIGKILL after 1 s
    third = create(cri_ctrd, pod, container_config("c", command=sleeper))
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=third), timeout=30)
    cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=third), timeout=30)
    listed = cri_ctrd.runtime.ListContainers(cri.ListContainersRequest()).containers
    assert sorted(c.id for c in listed) == sorted([first, second])
    assert not cri_ctrd.ctrd.ctr("tasks", "ls", "-q", ns=NS).stdout.split()  # tasks deleted
    # Names are reserved until removal; a removed one's may be taken again.
    with pytest.raises(grpc.RpcError) as failed:
        create(cri_ctrd, pod, container_config("a", command=sleeper))
    assert failed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert create(cri_ctrd, pod, container_config("c", command=sleeper))


def test_a_start_that_fails_is_a_start_error_with_exit_128(cri_ctrd: Cri, pod: Pod):
    cid = create(cri_ctrd, pod, container_config("broken", command=["/no/such/binary"]))
    with pytest.raises(grpc.RpcError):
        cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    done = status(cri_ctrd, cid)
    assert (done.state, done.exit_code, done.reason) == (cri.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such/binary" in done.message
    with pytest.raises(grpc.RpcError) as failed:  # not again
        cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = cri_ctrd.runtime.ListContainers(
        cri.ListContainersRequest(
            filter=cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_EXITED))
        )
    ).containers
    assert [c.id for c in listed] == [cid]
    assert not cri_ctrd.runtime.ListContainers(
        cri.ListContainersRequest(filter=cri.ContainerFilter(label_selector={"x": "y"}))
    ).containers


def test_resources_reach_the_cgroup_and_oom_score_adj_is_clamped(cri_ctrd: Cri, pod: Pod):
    with open("/proc/self/oom_score_adj") as f:
        floor = int(f.read())
    resources = cri.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, cpu_shares=512, oom_score_adj=floor - 500,
        hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=0)],  # as kubelet sends
    )  # fmt: skip
    config = container_config(
        "limited",
        command=["/bin/sh", "-c", "cat /proc/self/oom_score_adj; sleep 30"],
        linux=cri.LinuxContainerConfig(resources=resources),
    )
    cid = create(cri_ctrd, pod, config)
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    memory = Path("/sys/fs/cgroup/memory") / NS / cid / "memory.limit_in_bytes"
    if not memory.parent.exists():  # cgroup v2
        memory = Path("/sys/fs/cgroup") / NS / cid / "memory.max"
    assert int(memory.read_text()) == 64 << 20
    log_path = status(cri_ctrd, cid).log_path
    deadline = time.monotonic() + 5
    while not output(log_path).strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(output(log_path)) == floor  # raised to the daemon's own (cannot go lower)
    cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    resources = cri.LinuxContainerResources(oom_score_adj=500)
    config = container_config(
        "higher", command=["cat", "/proc/self/oom_score_adj"],
        linux=cri.LinuxContainerConfig(resources=resources),
    )  # fmt: skip
    assert run(cri_ctrd, pod, config)[1] == "500\n"


def task_states(c: Cri) -> dict[str, str]:
    """The CRI namespace's tasks as `ctr tasks ls` shows them: id -> status."""
    lines = c.ctrd.ctr("tasks", "ls", ns=NS).stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[-1] for line in lines}


def wait_task(c: Cri, cid: str, state: str | None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while task_states(c).get(cid) != state:
        assert time.monotonic() < deadline, f"task {cid}: {task_states(c).get(cid)}, not {state}"
        time.sleep(0.05)


def test_a_created_containers_task_is_made_ahead_updated_and_removed_with_it(
    cri_ctrd: Cri, pod: Pod
):
    """runc's create runs right after CreateContainer answers; the container stays CREATED
    until it is started, resources updated before the start are those it starts with, and
    one removed unstarted takes its task along without ever being EXITED."""
    limits = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
    config = container_config(
        "ahead", command=["sleep", "30"], linux=cri.LinuxContainerConfig(resources=limits)
    )
    cid = create(cri_ctrd, pod, config)
    bigger = cri.LinuxContainerResources(memory_limit_in_bytes=96 << 20)
    cri_ctrd.runtime.UpdateContainerResources(  # while its task is being made, most likely
        cri.UpdateContainerResourcesRequest(container_id=cid, linux=bigger), timeout=30
    )
    wait_task(cri_ctrd, cid, "CREATED")
    assert status(cri_ctrd, cid).state == cri.CONTAINER_CREATED
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    assert task_states(cri_ctrd)[cid] == "RUNNING"
    memory = Path("/sys/fs/cgroup/memory") / NS / cid / "memory.limit_in_bytes"
    if not memory.parent.exists():  # cgroup v2
        memory = Path("/sys/fs/cgroup") / NS / cid / "memory.max"
    assert int(memory.read_text()) == 96 << 20

    unstarted = create(cri_ctrd, pod, container_config("unstarted", command=["sleep", "30"]))
    wait_task(cri_ctrd, unstarted, "CREATED")
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=unstarted, timeout=0))
    time.sleep(0.3)  # an exit event, were one taken for the container's, would be in by now
    found = status(cri_ctrd, unstarted)
    assert (found.state, found.started_at, found.finished_at) == (cri.CONTAINER_CREATED, 0, 0)
    cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=unstarted))
    assert unstarted not in task_states(cri_ctrd)
    listed = cri_ctrd.runtime.ListContainers(cri.ListContainersRequest()).containers
    assert [c.id for c in listed] == [cid]
    cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
    assert task_states(cri_ctrd) == {}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_restarted_ctrd_keeps_states_and_reports_exits_from_while_it_was_down(
    cri_ctrd: Cri, pod: Pod, how: signal.Signals
):
    sleeper = ["/bin/sh", "-c", "echo up; exec sleep 1000"]
    running = create(cri_ctrd, pod, container_config("running", command=sleeper))
    dying = create(cri_ctrd, pod, container_config("dying", command=sleeper))
    created = create(cri_ctrd, pod, container_config("created", command=sleeper))
    for cid in (running, dying):
        cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    exited = run(cri_ctrd, pod, container_config("exited", command=["sh", "-c", "exit 3"]))
    assert exited[0] == 3
    wait_task(cri_ctrd, created, "CREATED")  # made ahead of a start that has not come
    before = {c: status(cri_ctrd, c) for c in (running, dying, created)}
    pid = json.loads(
        cri_ctrd.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=dying, verbose=True), timeout=10
        ).info["info"]
    )["pid"]

    assert cri_ctrd.ctrd.stop(how) in (0, -signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)  # an exit while no daemon runs
    cri_ctrd.ctrd.start()

    after = {
        c.id: c for c in cri_ctrd.runtime.ListContainers(cri.ListContainersRequest()).containers
    }
    assert len(after) == 4
    assert after[running].state == cri.CONTAINER_RUNNING
    assert after[created].state == cri.CONTAINER_CREATED
    wait_task(cri_ctrd, created, None)  # the unstarted task deleted: the container stays
    assert status(cri_ctrd, created).state == cri.CONTAINER_CREATED
    gone = status(cri_ctrd, dying)
    assert (gone.state, gone.exit_code, gone.reason) == (cri.CONTAINER_EXITED, 137, "Error")
    assert gone.started_at == before[dying].started_at
    kept = next(s for s in after.values() if s.metadata.name == "exited")
    done = status(cri_ctrd, kept.id)
    assert (done.state, done.exit_code, done.reason) == (cri.CONTAINER_EXITED, 3, "Error")
    alive = status(cri_ctrd, running)
    assert alive.started_at == before[running].started_at
    # The running one is still served: stopped through the restarted daemon, and its exit seen.
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=running, timeout=0))
    assert status(cri_ctrd, running).exit_code == 137
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=created), timeout=30)
    assert status(cri_ctrd, created).state == cri.CONTAINER_RUNNING


def _mount_dir(path: Path, propagation: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", f"--make-{propagation}", str(path)], check=True)


def _mounted(path: Path, table: str) -> bool:
    return any(line.split()[4] == str(path) for line in table.splitlines() if line.strip())


def test_privileged_containers_and_mount_propagation(cri_ctrd: Cri, pod: Pod, short_tmp: Path):
    sleeper = ["/bin/sh", "-c", "exec sleep 1000"]
    privileged = cri.LinuxContainerSecurityContext(
        privileged=True,
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
    )
    linux = cri.LinuxContainerConfig(security_context=privileged)
    with pytest.raises(grpc.RpcError) as failed:  # the pod is not privileged
        create(cri_ctrd, pod, container_config("p", command=sleeper, linux=linux))
    assert "no privileged container allowed in sandbox" in (failed.value.details() or "")

    priv_pod = make_pod(cri_ctrd, short_tmp, privileged=True, name="privpod")
    probe = ["/bin/sh", "-c", "cat /proc/self/status"]
    out = run(cri_ctrd, priv_pod, container_config("p", command=probe, linux=linux))[1]
    with open("/proc/self/status") as f:
        own = _status_field(f.read(), "CapEff")
    assert _status_field(out, "CapBnd") == own
    assert _status_field(out, "Seccomp") == "0"  # privileged: no filter, whatever was asked

    private, slave, shared = short_tmp / "private", short_tmp / "slave", short_tmp / "shared"
    try:
        _mount_dir(private, "rprivate")
        _mount_dir(slave, "rshared")
        _mount_dir(shared, "rshared")
        for propagation, words in (
            (cri.PROPAGATION_BIDIRECTIONAL, "is not a shared mount"),
            (cri.PROPAGATION_HOST_TO_CONTAINER, "is not a shared or slave mount"),
        ):
            mount = cri.Mount(
                container_path="/mnt", host_path=str(private), propagation=propagation
            )
            config = container_config("m", command=sleeper, linux=linux, mounts=[mount])
            with pytest.raises(grpc.RpcError) as failed:
                create(cri_ctrd, priv_pod, config)
            assert words in (failed.value.details() or "")
        mounts = [
            cri.Mount(container_path="/mnt/private", host_path=str(private)),
            cri.Mount(
                container_path="/mnt/slave", host_path=str(slave),
                propagation=cri.PROPAGATION_HOST_TO_CONTAINER,
            ),
            cri.Mount(
                container_path="/mnt/shared", host_path=str(shared),
                propagation=cri.PROPAGATION_BIDIRECTIONAL,
            ),
            cri.Mount(container_path="/mnt/made/here", host_path=str(short_tmp / "new" / "dir")),
        ]  # fmt: skip
        config = container_config("m", command=sleeper, linux=linux, mounts=mounts)
        cid = create(cri_ctrd, priv_pod, config)
        cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
        assert (short_tmp / "new" / "dir").is_dir()  # a missing host path is made
        (private / "sub").mkdir(exist_ok=True)
        (slave / "sub").mkdir(exist_ok=True)
        for where in (private, slave):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where / "sub")], check=True)

        def inside(*cmd: str) -> str:
            reply = cri_ctrd.runtime.ExecSync(
                cri.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10), timeout=20
            )
            return reply.stdout.decode()

        table = inside("cat", "/proc/self/mountinfo")
        assert _mounted(Path("/mnt/slave/sub"), table)  # host to container
        assert not _mounted(Path("/mnt/private/sub"), table)
        inside("mkdir", "-p", "/mnt/shared/back", "/mnt/private/back2")
        inside("mount", "-t", "tmpfs", "tmpfs", "/mnt/shared/back")
        inside("mount", "-t", "tmpfs", "tmpfs", "/mnt/private/back2")
        with open("/proc/self/mountinfo") as f:
            host = f.read()
        assert _mounted(shared / "back", host)  # container to host
        assert not _mounted(private / "back2", host)
        info = json.loads(
            cri_ctrd.runtime.ContainerStatus(
                cri.ContainerStatusRequest(container_id=cid, verbose=True)
            ).info["info"]
        )
        assert info["runtimeSpec"]["linux"]["rootfsPropagation"] == "rshared"
        cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    finally:
        for path in (shared / "back", slave / "sub", private / "sub", shared, slave, private):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_an_oom_kill_is_reported_as_oomkilled(cri_ctrd: Cri, pod: Pod):
    resources = cri.LinuxContainerResources(memory_limit_in_bytes=16 << 20)
    hog = ["/bin/sh", "-c", "a=$(head -c 100000000 /dev/urandom); echo survived"]
    config = container_config(
        "hog", command=hog, linux=cri.LinuxContainerConfig(resources=resources)
    )
    cid = create(cri_ctrd, pod, config)
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    done = wait_exit(cri_ctrd, cid, timeout=30)
    assert (done.exit_code, done.reason) == (137, "OOMKilled")


def test_reopen_container_log_writes_to_a_new_file_at_the_path(cri_ctrd: Cri, pod: Pod):
    ticker = ["/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]
    cid = create(cri_ctrd, pod, container_config("ticker", command=ticker))
    log_path = Path(status(cri_ctrd, cid).log_path)
    with pytest.raises(grpc.RpcError) as failed:  # not running yet: refused, no file made
        cri_ctrd.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    assert "container is not running" in (failed.value.details() or "")
    assert not log_path.exists()
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=30)
    deadline = time.monotonic() + 5
    while "tick 2" not in (output(str(log_path)) if log_path.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rotated = log_path.with_name("0.log.1")
    log_path.rename(rotated)
    cri_ctrd.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    size = rotated.stat().st_size
    deadline = time.monotonic() + 5
    while not (log_path.exists() and "tick" in output(str(log_path))):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    assert rotated.stat().st_size == size  # the old file no longer grows
    cri_ctrd.runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(grpc.RpcError) as failed:
        cri_ctrd.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=cid))
    assert "container is not running" in (failed.value.details() or "")


def test_image_volumes_are_per_container_copies_of_the_image(
    cri_ctrd: Cri, pod: Pod, registry: Registry, short_tmp: Path
):
    data = [
        images.Dir("data", 0o750, 1000, 1000),
        images.File("data/seed", b"from the image\n", 0o640, 1000, 1000),
    ]
    image = images.build_image(
        [images.busybox_layer(), data], config={"Volumes": {"/data": {}}, "Cmd": ["sh"]}
    )
    pushed = registry.push("library/cricvol", "latest", image)
    name = "registry.k8s.io/library/cricvol:latest"
    cri_ctrd.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=name)), timeout=60)
    assert pushed.digest
    script = (
        "grep -c ' /data ' /proc/self/mountinfo; stat -c '%u %a' /data /data/seed; "
        "cat /data/seed; ls /data; echo more > /data/new"
    )

    def volume_run(cname: str, *mounts: cri.Mount) -> str:
        config = container_config(cname, command=["/bin/sh", "-c", script], mounts=list(mounts))
        config.image.image = name
        code, out = run(cri_ctrd, pod, config)
        assert code == 0, out
        return out

    first = volume_run("v1")
    assert first == "1\n1000 750\n1000 640\nfrom the image\nseed\n"  # a mount of its own
    assert volume_run("v2") == first  # its own copy: v1's new file is not there
    given = short_tmp / "given"
    given.mkdir()
    (given / "seed").write_text("from the host\n")
    covered = volume_run("v3", cri.Mount(container_path="/data", host_path=str(given)))
    assert covered.splitlines()[3:] == ["from the host", "seed"]
    volumes = cri_ctrd.ctrd.root / "cri" / "containers"
    assert len(list(volumes.iterdir())) == 2  # v1's and v2's; none for v3
    for c in cri_ctrd.runtime.ListContainers(cri.ListContainersRequest()).containers:
        cri_ctrd.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=c.id))
    assert not list(volumes.iterdir())


def test_a_target_pid_namespace_is_the_target_containers(cri_ctrd: Cri, pod: Pod):
    target = create(cri_ctrd, pod, container_config("target", command=["sleep", "1000"]))
    options = cri.NamespaceOption(pid=cri.TARGET, target_id=target)
    debug = cri.LinuxContainerConfig(
        security_context=cri.LinuxContainerSecurityContext(namespace_options=options)
    )
    config = container_config("debug", command=["ps", "-o", "pid,args"], linux=debug)
    with pytest.raises(grpc.RpcError) as failed:  # the target is not running yet
        create(cri_ctrd, pod, config)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    cri_ctrd.runtime.StartContainer(cri.StartContainerRequest(container_id=target), timeout=30)
    out = run(cri_ctrd, pod, config)[1]
    assert "1 sleep 1000" in out  # the target is PID 1 of the namespace it joined
    assert "1 ps" not in out
