"""CRI containers on ctrd (runtime.v1): their lifecycle, spec and security context, driven
with the real crictl and with the generated stubs against a test ctrd (the fixture of
test_cri_images: `[cri] mirrors` send registry.k8s.io to the tests' loopback registry).

Pods come from RunPodSandbox (the sandboxes part), without CNI: a network namespace with
only `lo`, and no pause process (PID mode CONTAINER, kubelet's default).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """A pod through RunPodSandbox: its own network, IPC and UTS namespaces (pinned, no
    CNI here), no shared PID namespace (no pause), logs under `base`."""
    logs = base / f"logs-{name}"
    options = cri.NamespaceOption(pid=cri.CONTAINER)
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
