"""Pod sandboxes as the daemon keeps them: their durable record, the in-memory table the
CRI answers from, and the reserved names.

A sandbox is a container record of the `[cri] namespace` labelled
`io.cri-containerd.kind=sandbox` (plus the pod's own labels), whose extension
`io.cri-containerd.sandbox.metadata` holds `SandboxMeta` as JSON (type URL
`model.SANDBOX_TYPE_URL`): the fields of `model.SandboxRecord` with the PodSandboxConfig's
bytes as kubelet sent them (base64), plus what a stop or a recovery needs (the pin directory,
the kinds pinned, whether the pod network was set up, its CNI result, the pause image).

Rules kept here:
- The table is loaded once (`load`), then every answer (get, list) comes from memory: kubelet
  polls List every second and it must never wait on a shim or the database.
- A record is written when a RunPodSandbox begins (`creating`, so that a crash in its middle
  is found and undone at the next start), when it ends (READY), at a stop (NOTREADY), and
  deleted at a remove.
- Names (`podname_podnamespace_poduid_attempt`) are reserved for one id at a time; a name
  being created is a future that a retried RunPodSandbox waits on (`reserve`).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from supervisor.cri import model
from supervisor.errors import AlreadyExists, InvalidArgument, NotFound, Unknown

if TYPE_CHECKING:
    from supervisor.metadata.containers import Container, ContainerStore

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNTIME_NAME = "io.containerd.runc.v2"
KIND_FILTER = f"labels.{json.dumps(model.KIND_LABEL)}=={model.KIND_SANDBOX}"


@dataclass(frozen=True)
class SandboxMeta:
    """A sandbox's whole record: what the other parts see (`record`) and what this part
    keeps for itself."""

    record: model.SandboxRecord
    pin_dir: str = ""  # the shared directory holding the pins and the shm mount
    pinned: tuple[str, ...] = ()  # the kinds of namespace ctrd made for the pod
    network: bool = False  # PodNetwork.setup was called: teardown owed
    cni_result: str = ""
    image: str = ""  # the pause image's ID when `record.pause`
    creating: bool = False  # RunPodSandbox had not finished when this was written
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> model.SandboxState:
        return self.record.state

    def with_state(self, state: model.SandboxState) -> SandboxMeta:
        return replace(self, record=replace(self.record, state=state))

    def to_json(self) -> bytes:
        value = asdict(self.record)
        value["config"] = base64.b64encode(self.record.config).decode()
        value["state"] = self.record.state.value
        value["additional_ips"] = list(self.record.additional_ips)
        own = {
            "pin_dir": self.pin_dir,
            "pinned": list(self.pinned),
            "network": self.network,
            "cni_result": self.cni_result,
            "image": self.image,
            "creating": self.creating,
        }
        return json.dumps({**value, **own}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SandboxMeta:
        value = json.loads(data)
        known = {f.name for f in fields(model.SandboxRecord)}
        fields_ = {k: v for k, v in value.items() if k in known}
        fields_["config"] = base64.b64decode(fields_.get("config", ""))
        fields_["state"] = model.SandboxState(fields_.get("state", "notready"))
        fields_["namespaces"] = model.Namespaces(**fields_.get("namespaces", {}))
        fields_["additional_ips"] = tuple(fields_.get("additional_ips", ()))
        return cls(
            record=model.SandboxRecord(**fields_),
            pin_dir=value.get("pin_dir", ""),
            pinned=tuple(value.get("pinned", ())),
            network=bool(value.get("network", False)),
            cni_result=value.get("cni_result", ""),
            image=value.get("image", ""),
            creating=bool(value.get("creating", False)),
        )


def meta_of(container: Container) -> SandboxMeta | None:
    """The sandbox a ctrd container holds, None if it is not one."""
    if container.labels.get(model.KIND_LABEL) != model.KIND_SANDBOX:
        return None
    found = container.extensions.get(model.SANDBOX_EXTENSION)
    if found is None or found[0] != model.SANDBOX_TYPE_URL:
        return None
    return SandboxMeta.from_json(found[1])


def pick(ids: Sequence[str], key: str) -> str:
    """The id that is `key` or the only one starting with it; NotFound otherwise."""
    if not key:
        raise InvalidArgument("sandbox id must not be empty")
    if key in ids:
        return key
    matched = [i for i in ids if i.startswith(key)]
    if not matched:
        raise NotFound(f'an error occurred when try to find sandbox "{key}"')
    if len(matched) > 1:
        raise InvalidArgument(f'sandbox id prefix "{key}" is ambiguous')
    return matched[0]


class SandboxStore:
    """Every sandbox of the CRI's namespace, in memory, written through to the records.

    Implements `model.SandboxLookup` for the containers, stats and logs parts.
    """

    def __init__(self, containers: Callable[[], ContainerStore]) -> None:
        self._containers = containers
        self._table: dict[str, SandboxMeta] = {}
        self._names: dict[str, str] = {}  # reserved name -> id
        self._creating: dict[str, asyncio.Future[str]] = {}  # name -> the id it will get
        self._loaded = False
        self._loading: asyncio.Lock = asyncio.Lock()

    # -- SandboxLookup ---------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> model.SandboxRecord:
        return self.find(sandbox_id).record

    async def list(self) -> list[model.SandboxRecord]:
        return [m.record for m in self.all()]

    # -- the table -------------------------------------------------------------------------

    async def load(self) -> builtins.list[SandboxMeta]:
        """Read every sandbox record once (later calls return at once); what was read."""
        async with self._loading:
            if self._loaded:
                return []
            found = [
                meta
                for meta in map(meta_of, await self._containers().list([KIND_FILTER]))
                if meta is not None
            ]
            for meta in found:
                self._table[meta.id] = meta
                self._names[meta.record.name] = meta.id
            self._loaded = True
            return found

    def find(self, key: str) -> SandboxMeta:
        return self._table[pick(list(self._table), key)]

    def maybe(self, key: str) -> SandboxMeta | None:
        try:
            return self.find(key)
        except NotFound:
            return None

    def all(self) -> builtins.list[SandboxMeta]:
        return sorted(self._table.values(), key=lambda m: (m.record.created_at, m.id))

    async def create(self, meta: SandboxMeta, container: Container) -> None:
        """Write the first record of a sandbox (its container, labelled and extended)."""
        await self._containers().create(container)
        self._table[meta.id] = meta

    async def put(self, meta: SandboxMeta) -> None:
        """Rewrite a sandbox's record (its extension) and its row in the table."""
        from supervisor.metadata.containers import Container

        extension = {model.SANDBOX_EXTENSION: (model.SANDBOX_TYPE_URL, meta.to_json())}
        await self._containers().update(
            Container(meta.id, RUNTIME_NAME, extensions=extension),
            [f"extensions.{model.SANDBOX_EXTENSION}"],
        )
        self._table[meta.id] = meta

    async def delete(self, sandbox_id: str) -> None:
        """Forget a sandbox: its record, its row and its name."""
        with contextlib.suppress(NotFound):
            await self._containers().delete(sandbox_id)
        meta = self._table.pop(sandbox_id, None)
        if meta is not None and self._names.get(meta.record.name) == sandbox_id:
            del self._names[meta.record.name]

    def forget(self, sandbox_id: str) -> None:
        """Drop a row that has no record (a RunPodSandbox that failed before writing it)."""
        self._table.pop(sandbox_id, None)

    # -- names -----------------------------------------------------------------------------

    async def reserve(self, name: str, sandbox_id: str) -> str | None:
        """Reserve `name` for `sandbox_id`: None when reserved (the caller creates it and
        ends with `created`), or the id of a sandbox of that name that another
        RunPodSandbox in flight has just made (the retry's answer). A name held by a
        finished sandbox is refused in containerd's words."""
        while True:
            pending = self._creating.get(name)
            if pending is not None:
                try:
                    return await asyncio.shield(pending)
                except Exception:
                    continue
            holder = self._names.get(name)
            if holder is not None:
                raise Unknown(
                    f'failed to reserve sandbox name "{name}": '
                    f'name "{name}" is reserved for "{holder}"',
                    plain=True,
                )
            self._names[name] = sandbox_id
            self._creating[name] = asyncio.get_running_loop().create_future()
            return None

    def created(self, name: str, sandbox_id: str, error: BaseException | None) -> None:
        """A RunPodSandbox holding `name` ended: its waiters get the id, or learn it failed
        (and the name is free again)."""
        future = self._creating.pop(name, None)
        if error is not None and self._names.get(name) == sandbox_id:
            del self._names[name]
        if future is not None and not future.done():
            if error is None:
                future.set_result(sandbox_id)
            else:
                future.set_exception(AlreadyExists(f'sandbox "{name}" failed: {error}'))
                future.exception()  # retrieved: waiters that remain see it
