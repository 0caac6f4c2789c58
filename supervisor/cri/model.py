"""What the CRI's parts agree on: how a pod sandbox and a CRI container are kept, and the
seams between the sandboxes, the containers, the pod network (CNI) and the log writer.

Every CRI object is an ordinary ctrd object of the `[cri] namespace` (`k8s.io`), visible with
`ctr -n k8s.io`:

- A **pod sandbox** is a container record labelled `io.cri-containerd.kind=sandbox` whose
  extension `io.cri-containerd.sandbox.metadata` holds `SandboxRecord` (JSON, type URL
  `SANDBOX_TYPE_URL`). Its network, IPC and UTS namespaces are pinned files (bind mounts of
  `/proc/PID/ns/*` of a process that has gone); it has a task of its own (a pause process,
  its id the sandbox's) only when the pod shares one PID namespace (`pause`).
- A **CRI container** is a container record labelled `io.cri-containerd.kind=container` and
  `io.kubernetes.cri.sandbox-id=<sandbox id>`, with the extension
  `io.cri-containerd.container.metadata` holding its CRI record (JSON, `CONTAINER_TYPE_URL`,
  owned by `supervisor.cri.containers`). Its task has the container's id.

Labels and annotations that kubelet sent are kept byte for byte in the request it sent
(`config`, the serialised PodSandboxConfig or ContainerConfig): kubelet rebuilds its view of
pods from what List* answers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

KIND_LABEL = "io.cri-containerd.kind"
KIND_SANDBOX = "sandbox"
KIND_CONTAINER = "container"
SANDBOX_ID_LABEL = "io.kubernetes.cri.sandbox-id"  # on a CRI container's record

SANDBOX_EXTENSION = "io.cri-containerd.sandbox.metadata"
CONTAINER_EXTENSION = "io.cri-containerd.container.metadata"
SANDBOX_TYPE_URL = "types.ctrd.io/cri.v1.SandboxRecord"  # JSON of SandboxRecord
CONTAINER_TYPE_URL = "types.ctrd.io/cri.v1.ContainerRecord"  # JSON, supervisor.cri.containers

# OCI spec annotations, as containerd's CRI writes them (runtimes such as kata read them)
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"  # "sandbox" | "container"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"


@dataclass(frozen=True)
class Namespaces:
    """The paths a pod's containers join (`linux.namespaces[].path`). "" means the host's
    namespace of that kind (the NODE mode: the container gets no namespace of that type)."""

    network: str = ""
    ipc: str = ""
    uts: str = ""
    pid: str = ""  # the pause process's /proc/PID/ns/pid when the pod shares one; else ""
    host_network: bool = False
    host_ipc: bool = False
    host_pid: bool = False


@dataclass(frozen=True)
class SandboxRecord:
    """A pod sandbox as the other parts see it (`SandboxLookup.get`)."""

    id: str
    name: str  # the reserved key: podname_podnamespace_poduid_attempt
    config: bytes  # the PodSandboxConfig as kubelet sent it, serialised
    created_at: int  # ns since the epoch
    state: SandboxState
    namespaces: Namespaces
    files: str  # the directory holding `hostname`, `hosts`, `resolv.conf` for its containers
    shm: str  # the host path mounted at the containers' /dev/shm ("" = the host's /dev/shm)
    hostname: str
    runtime_handler: str = ""
    cgroup_parent: str = ""
    pause: bool = False  # a pause task (same id) holds the pod's PID namespace
    ip: str = ""
    additional_ips: tuple[str, ...] = ()


class SandboxLookup(Protocol):
    """Sandboxes for the containers' part: by full id or unique prefix, NotFound otherwise."""

    async def get(self, sandbox_id: str) -> SandboxRecord: ...

    async def list(self) -> Sequence[SandboxRecord]: ...


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "tcp" | "udp" | "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class PodRef:
    """Who a network attachment is for (CNI_ARGS' K8S_POD_*)."""

    sandbox_id: str
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodAddress:
    """What a pod's network setup gave: its IP (first IPv4 on eth0), the others, and the
    final CNI result as JSON (kept for PodSandboxStatus' verbose info)."""

    ip: str
    additional_ips: tuple[str, ...] = ()
    result: str = ""


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str = ""  # why not ready, in containerd's words ("cni plugin not initialized")
    networks: tuple[str, ...] = field(default_factory=tuple)  # the loaded networks' names


class PodNetwork(Protocol):
    """The pod network (CNI, `supervisor.network.cni`), as the sandboxes use it.

    Each attachment is recorded durably before a plugin runs and removed only when DEL has
    succeeded; `teardown` works from that record, also after a crash and when the netns is
    already gone (then `netns` is ""), and may be called again. `reconcile` DELs every
    recorded attachment whose sandbox is not in `live` (at the daemon's start).
    """

    def status(self) -> NetworkStatus: ...

    async def setup(
        self,
        pod: PodRef,
        netns: str,
        ports: Sequence[PortMapping],
        dns: DnsConfig | None,
        annotations: Mapping[str, str],
    ) -> PodAddress: ...

    async def teardown(self, sandbox_id: str, netns: str) -> None: ...

    async def reconcile(self, live: set[str]) -> None: ...
