"""CRI containers: their durable record and the lookup the other CRI parts use.

A CRI container is a container record of the `[cri] namespace` labelled
`io.cri-containerd.kind=container` and `io.kubernetes.cri.sandbox-id=<sandbox>`, whose
extension `io.cri-containerd.container.metadata` holds `ContainerRecord` as JSON (type URL
`model.CONTAINER_TYPE_URL`). The record is rewritten at every state change (created,
started, exited), so a daemon restarted after SIGKILL finds each container where it was.

State is derived from the record's times as containerd derives it from its status file:
`unknown` set -> UNKNOWN; finished_at -> EXITED; started_at -> RUNNING; else CREATED.
"""

from __future__ import annotations

import base64
import builtins
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from supervisor.cri import model
from supervisor.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from supervisor.metadata.containers import Container, ContainerStore


class ContainerState(enum.IntEnum):
    """runtime.v1's ContainerState values."""

    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class ContainerRecord:
    """What the extension holds (JSON): the container as the CRI sees it.

    `config` is the ContainerConfig kubelet sent, serialised (labels and annotations are
    answered from it byte for byte). Times are ns since the epoch; 0 = not yet.
    """

    id: str
    name: str  # the reserved key: name_podname_podnamespace_poduid_attempt
    sandbox_id: str
    config: bytes
    image: str  # the image as answered in statuses (first repo tag, else as asked)
    image_ref: str  # the image's ID (sha256:<config digest>)
    image_repo_ref: str = ""  # first repo digest if known (ContainerStatus' image_ref)
    log_path: str = ""  # absolute; "" = output discarded
    stop_signal: str = ""  # the image's StopSignal ("" = SIGTERM)
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    unknown: bool = False

    @property
    def state(self) -> ContainerState:
        if self.unknown:
            return ContainerState.UNKNOWN
        if self.finished_at:
            return ContainerState.EXITED
        if self.started_at:
            return ContainerState.RUNNING
        return ContainerState.CREATED

    def container_config(self) -> Any:
        """The ContainerConfig message (runtime.v1), parsed."""
        from supervisor.api.runtime.v1 import api_pb2 as cri

        config = cri.ContainerConfig()
        config.ParseFromString(self.config)
        return config

    def to_json(self) -> bytes:
        value = asdict(self)
        value["config"] = base64.b64encode(self.config).decode()
        return json.dumps(value, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ContainerRecord:
        value = json.loads(data)
        known = {f.name for f in fields(cls)}
        value = {k: v for k, v in value.items() if k in known}  # newer keys ignored
        value["config"] = base64.b64decode(value.get("config", ""))
        return cls(**value)


def record_of(container: Container) -> ContainerRecord | None:
    """The CRI record a ctrd container holds, None if it is not a CRI container."""
    if container.labels.get(model.KIND_LABEL) != model.KIND_CONTAINER:
        return None
    found = container.extensions.get(model.CONTAINER_EXTENSION)
    if found is None or found[0] != model.CONTAINER_TYPE_URL:
        return None
    return ContainerRecord.from_json(found[1])


def pick(records: Sequence[ContainerRecord], key: str) -> ContainerRecord:
    """The record whose id is `key` or starts with it (unique), NotFound otherwise."""
    if not key:
        raise InvalidArgument("container id must not be empty")
    matched = [r for r in records if r.id == key]
    if not matched:
        matched = [r for r in records if r.id.startswith(key)]
    if not matched:
        raise NotFound(f'container "{key}" not found')
    if len(matched) > 1:
        raise InvalidArgument(f'container id prefix "{key}" is ambiguous')
    return matched[0]


class CriContainerLookup:
    """CRI containers for the other parts (stats, logs, exec): by id or unique prefix, all,
    or a sandbox's. Read from the records (what the containers part wrote last)."""

    def __init__(self, store: Callable[[], ContainerStore]) -> None:
        self._store = store

    async def list(self) -> list[ContainerRecord]:
        containers = await self._store().list(
            [f"labels.{json.dumps(model.KIND_LABEL)}=={model.KIND_CONTAINER}"]
        )
        return [r for r in map(record_of, containers) if r is not None]

    async def get(self, key: str) -> ContainerRecord:
        return pick(await self.list(), key)

    async def list_by_sandbox(self, sandbox_id: str) -> builtins.list[ContainerRecord]:
        return [r for r in await self.list() if r.sandbox_id == sandbox_id]
