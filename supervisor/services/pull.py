"""ctrd.services.images.v1.Pull: the daemon pulls an image from a registry itself.

A pull resolves the reference, fetches the index (if any), the manifest for the platform, its
config and its layers into the namespace's content store, creates or updates the image record
and, when asked, unpacks the layers into a snapshotter exactly as ctr does, so that `ctr run`
afterwards finds every snapshot and applies nothing.

Invariants:
- Everything runs under a lease of its own (expiring in a day, like ctr's), deleted when the
  pull ends however it ends: until the image record exists, the lease is what keeps the
  content and snapshots from the collector; after, the labels below are.
- Content is labelled as ctr labels it: an index `containerd.io/gc.ref.content.m.<n>` for the
  manifest fetched, a manifest `...content.config` and `...content.l.<n>` for its children;
  unpacked layers `containerd.io/uncompressed=<diffID>` and the config
  `containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>`; everything fetched (or found)
  `containerd.io/distribution.source.<host>=<repository>` as containerd writes it, which lets a
  later push to that registry mount blobs instead of uploading them.
- Unpacking follows ctr's protocol: per layer, a snapshot named by its chainID is reused when it
  exists; otherwise `extract-<n>-<rand> <chainID>` is prepared on the previous chainID, the layer
  applied (its diffID must match the config's), and committed as the chainID.
- Layers download up to `DOWNLOADS` at a time and are unpacked in order, each as soon as it and
  those before it are complete. Progress is at most ~10 messages a second per layer.
- supervisor.distribution (aiohttp) is imported inside the handler: it costs the daemon's
  start-up 180 ms otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from supervisor import digests
from supervisor.api.containerd.events import image_pb2 as events_pb2
from supervisor.api.ctrd.services.images.v1 import pull_pb2 as pb
from supervisor.api.ctrd.services.images.v1 import pull_pb2_grpc as pb_grpc
from supervisor.config import RegistryConfig
from supervisor.content.local import LocalStore
from supervisor.content.protocol import Info
from supervisor.errors import (
    AlreadyExists,
    CtrdError,
    DataLoss,
    InvalidArgument,
    NotFound,
    first_error,
)
from supervisor.events import Exchange
from supervisor.metadata.content import ContentStore
from supervisor.metadata.gc import Collector
from supervisor.metadata.images import Descriptor as ImageTarget
from supervisor.metadata.images import Image, ImageStore
from supervisor.metadata.leases import EXPIRE_LABEL, LeaseStore
from supervisor.metadata.snapshots import SnapshotStore
from supervisor.metrics import counts
from supervisor.services import rpc

if TYPE_CHECKING:
    from supervisor.distribution.manifest import Descriptor
    from supervisor.distribution.reference import Reference
    from supervisor.distribution.registry import Progress, Registry

log = structlog.get_logger("ctrd.pull")

Context = grpc.aio.ServicerContext[Any, Any]
Emit = Callable[[pb.PullProgress], None]
DOWNLOADS = 3  # layers fetched at once
MAX_NESTING = 4  # indexes within indexes, as the registry client allows
PROGRESS_INTERVAL = 0.1  # seconds between progress messages of one layer
DEFAULT_SNAPSHOTTER = "overlayfs"
DEFAULT_DOCKER_CONFIG = Path("/root/.docker/config.json")
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot"
UNCOMPRESSED = "containerd.io/uncompressed"


def lease_labels(now: datetime | None = None) -> dict[str, str]:
    expire = (now or datetime.now(UTC)) + timedelta(hours=24)
    return {EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass(frozen=True)
class Stores:
    """What one pull writes to: one namespace, under one lease."""

    ns: str
    content: ContentStore
    snapshots: SnapshotStore | None  # None: no unpacking


class Throttle:
    """Progress of one blob, at most one message per interval (the first and last always)."""

    def __init__(self, emit: Emit, interval: float = PROGRESS_INTERVAL) -> None:
        self._emit = emit
        self._interval = interval
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.offset >= progress.total
        if final or now - self._last >= self._interval:
            self._last = now
            self._emit(
                pb.PullProgress(
                    ref=progress.descriptor.digest,
                    status="downloading",
                    offset=progress.offset,
                    total=progress.total,
                )
            )


def registry_settings(config: RegistryConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hosts (mirrors, insecure) and credentials for a `Registry`, read afresh for each call."""
    from supervisor.distribution.auth import load_docker_config
    from supervisor.distribution.hosts import HostConfig

    names = set(config.mirrors) | set(config.insecure)
    hosts = {
        host: HostConfig(tuple(config.mirrors.get(host, ())), host in config.insecure)
        for host in names
    }
    path = Path(config.config_path) if config.config_path else DEFAULT_DOCKER_CONFIG
    credentials = dict(load_docker_config(path))  # a missing file: no credentials
    return hosts, credentials


class PullService(pb_grpc.PullServicer):
    def __init__(
        self,
        content: Callable[[str, str | None], ContentStore],
        snapshots: Callable[[str, str | None, str], SnapshotStore],
        snapshotters: frozenset[str],
        images: Callable[[str], ImageStore],
        leases: Callable[[str], LeaseStore],
        blobs: LocalStore,
        events: Exchange,
        gc: Collector,
        registry: RegistryConfig,
    ) -> None:
        self._content = content
        self._snapshots = snapshots
        self._snapshotters = snapshotters
        self._images = images
        self._leases = leases
        self._blobs = blobs
        self._events = events
        self._gc = gc
        self._registry = registry

    async def Pull(self, request: pb.PullRequest, context: Context) -> AsyncIterator[Any]:
        ns = rpc.namespace(context)

        async def work(emit: Emit) -> None:
            await self.pull(ns, request, emit)

        async for message in rpc.emitted(work, "pull"):
            yield message

    # -- the pull ------------------------------------------------------------------------------

    async def pull(
        self,
        ns: str,
        request: pb.PullRequest,
        emit: Emit,
        settings: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> None:
        """Pull `request.ref` into `ns`, telling `emit` the progress. `settings`: hosts and
        credentials (`registry_settings`'s shape) instead of the daemon's, for another service
        (the CRI's PullImage)."""
        from supervisor.distribution import platforms, reference
        from supervisor.distribution.registry import Registry

        ref = reference.parse(request.ref)
        matcher = platforms.only(platforms.parse(request.platform)) if request.platform else None
        snapshotter = request.snapshotter or DEFAULT_SNAPSHOTTER
        if request.unpack and snapshotter not in self._snapshotters:
            raise InvalidArgument(f'snapshotter "{snapshotter}" does not exist')
        lease_id = f"{time.time_ns()}-pull-{secrets.token_hex(2)}"
        await self._leases(ns).create(lease_id, lease_labels())
        ok = False
        try:
            stores = Stores(
                ns,
                self._content(ns, lease_id),
                self._snapshots(ns, lease_id, snapshotter) if request.unpack else None,
            )
            hosts, credentials = settings or self._registry_settings()
            async with Registry(hosts=hosts, credentials=credentials) as registry:
                puller = _Pull(registry, ref, stores, self._blobs, emit)
                target = await puller.run(matcher or platforms.default(), snapshotter)
            updated = await self._record(ns, str(ref), target)
            ok = True
        finally:
            counts.PULLS.inc("ok" if ok else "error")
            with contextlib.suppress(NotFound):
                await self._leases(ns).delete(lease_id)
            self._gc.mark_dirty()
        emit(
            pb.PullProgress(
                ref=str(ref),
                status="done" if updated else "exists",
                image=str(ref),
                digest=target.digest,
                total=target.size,
                offset=target.size,
            )
        )

    def _registry_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return registry_settings(self._registry)

    async def _record(self, ns: str, name: str, target: Descriptor) -> bool:
        """Create or update the image; whether its target changed (or it is new)."""
        store = self._images(ns)
        wanted = ImageTarget(target.media_type, target.digest, target.size)
        event: events_pb2.ImageCreate | events_pb2.ImageUpdate
        try:
            image = await store.create(Image(name, wanted))
            topic, event = "/images/create", events_pb2.ImageCreate(name=name)
            changed = True
        except AlreadyExists:
            changed = (await store.get(name)).target.digest != target.digest
            image = await store.update(Image(name, wanted), ["target"])
            topic, event = "/images/update", events_pb2.ImageUpdate(name=name)
        event.labels.update(image.labels)
        await self._events.publish(ns, topic, event)
        return changed


class _Pull:
    """One pull's fetching and unpacking."""

    def __init__(
        self, registry: Registry, ref: Reference, stores: Stores, blobs: LocalStore, emit: Emit
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.stores = stores
        self.blobs = blobs
        self.emit = emit

    async def run(self, matcher: Any, snapshotter: str) -> Descriptor:
        from supervisor.distribution import manifest

        self.emit(pb.PullProgress(ref=str(self.ref), status="resolving"))
        try:
            root = await self.registry.resolve(self.ref)
        except NotFound as e:
            raise NotFound(f"pull {self.ref}: {e.detail}") from None
        current = root
        for _ in range(MAX_NESTING + 1):
            if not manifest.is_index(current.media_type):
                break
            body = await self.registry.fetch_manifest(self.ref, current)
            where = f"{self.ref} index {current.digest}"
            child = manifest.select(
                manifest.parse_index(body, current.media_type, where), matcher, where
            )
            await self._store_document(current, body, {f"{CONTENT_REF}.m.0": child.digest})
            current = child
        manifest.check_supported(current.media_type, f"{self.ref} {current.digest}")
        body = await self.registry.fetch_manifest(self.ref, current)
        image = manifest.parse_manifest(body, current.media_type, f"{self.ref} {current.digest}")
        labels = {f"{CONTENT_REF}.config": image.config.digest}
        labels |= {f"{CONTENT_REF}.l.{i}": layer.digest for i, layer in enumerate(image.layers)}
        await self._store_document(current, body, labels)
        await self._fetch(image.config)
        config = json.loads(await self._read(image.config.digest))
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if self.stores.snapshots is not None and len(diff_ids) != len(image.layers):
            raise InvalidArgument(
                f"{self.ref}: config has {len(diff_ids)} diff ids for {len(image.layers)} layers"
            )
        await self._layers(list(image.layers), diff_ids, image.config, snapshotter)
        return root

    # -- content -------------------------------------------------------------------------------

    async def _store_document(
        self, descriptor: Descriptor, body: bytes, labels: Mapping[str, str]
    ) -> None:
        from supervisor.content.protocol import open_writer
        from supervisor.distribution import manifest

        counts.PULL_BYTES.inc(by=len(body))  # fetched from the registry by the caller
        store = self.stores.content
        try:  # another pull writing it: waited for (it is then there: AlreadyExists)
            writer = await open_writer(
                store, manifest.ref_key(descriptor), descriptor.size, descriptor.digest
            )
        except AlreadyExists:
            pass
        else:
            try:
                if (await writer.status()).offset != descriptor.size:
                    await writer.truncate(0)
                    await writer.write(body)
                with contextlib.suppress(AlreadyExists):
                    await writer.commit(descriptor.size, descriptor.digest)
            finally:
                await writer.close()
        await self._label(descriptor.digest, {**labels, **await self._source(descriptor.digest)})

    async def _source(self, digest: str) -> dict[str, str]:
        """The distribution source label naming this pull's repository, if not there yet."""
        from supervisor.distribution import sources

        info = await self.stores.content.info(digest)
        return sources.label_for(self.ref, info.labels)

    async def _label(self, digest: str, labels: Mapping[str, str]) -> None:
        await self.stores.content.update(
            Info(digest, 0, 0, 0, dict(labels)), [f"labels.{key}" for key in labels]
        )

    async def _read(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.stores.content.read(digest)])

    async def _fetch(self, descriptor: Descriptor) -> None:
        """A blob into the content store, with progress; "exists" when it is there already."""
        try:
            await self.stores.content.info(descriptor.digest)
        except NotFound:
            pass
        else:
            if source := await self._source(descriptor.digest):
                await self._label(descriptor.digest, source)
            self.emit(
                pb.PullProgress(
                    ref=descriptor.digest,
                    status="exists",
                    offset=descriptor.size,
                    total=descriptor.size,
                )
            )
            return
        await self.registry.fetch_blob(
            self.ref, descriptor, self.stores.content, progress=Throttle(self.emit)
        )
        counts.PULL_BYTES.inc(by=descriptor.size)
        if source := await self._source(descriptor.digest):
            await self._label(descriptor.digest, source)
        self.emit(
            pb.PullProgress(
                ref=descriptor.digest, status="done", offset=descriptor.size, total=descriptor.size
            )
        )

    # -- layers --------------------------------------------------------------------------------

    async def _layers(
        self, layers: list[Descriptor], diff_ids: list[str], config: Descriptor, snapshotter: str
    ) -> None:
        """Download up to DOWNLOADS layers at once; unpack each in order once it is complete."""
        slots = asyncio.Semaphore(DOWNLOADS)
        fetched = [asyncio.Event() for _ in layers]

        async def download(i: int, layer: Descriptor) -> None:
            async with slots:
                await self._fetch(layer)
            fetched[i].set()

        async def unpack() -> None:
            snapshots = self.stores.snapshots
            if snapshots is None:
                return
            chains = digests.chain_ids(diff_ids)
            for i, layer in enumerate(layers):
                await fetched[i].wait()
                await self._unpack(snapshots, i, layer, diff_ids[i], chains)
            if chains:
                await self._label(config.digest, {f"{SNAPSHOT_REF}.{snapshotter}": chains[-1]})

        try:
            async with asyncio.TaskGroup() as group:
                for i, layer in enumerate(layers):
                    group.create_task(download(i, layer))
                group.create_task(unpack())
        except ExceptionGroup as failed:  # the first layer to fail says why the pull failed
            raise first_error(failed) from None

    async def _unpack(
        self,
        snapshots: SnapshotStore,
        n: int,
        layer: Descriptor,
        diff_id: str,
        chains: list[str],
    ) -> None:
        chain, parent = chains[n], chains[n - 1] if n else ""
        try:
            await snapshots.hold(chain)  # leased at once: a collection may not take it now
        except NotFound:
            self.emit(pb.PullProgress(ref=layer.digest, status="unpacking", total=layer.size))
            await self._apply(snapshots, n, layer, diff_id, chain, parent)
            status = "unpacked"
        else:
            status = "exists"
        await self._label(layer.digest, {UNCOMPRESSED: diff_id})
        if status == "unpacked":
            self.emit(
                pb.PullProgress(
                    ref=layer.digest, status=status, offset=layer.size, total=layer.size
                )
            )

    async def _apply(
        self,
        snapshots: SnapshotStore,
        n: int,
        layer: Descriptor,
        diff_id: str,
        chain: str,
        parent: str,
    ) -> None:
        from supervisor.diff.apply import apply_layer, target_from_mounts

        key = f"extract-{n}-{secrets.token_hex(6)} {chain}"
        mounts = await snapshots.prepare(key, parent)
        try:
            target = target_from_mounts(mounts)
            applied = await asyncio.to_thread(
                apply_layer,
                self.blobs.blob_path(layer.digest),
                layer.media_type,
                target,
                layer.digest,
            )
            if applied.diff_id != diff_id:
                raise DataLoss(
                    f"layer {layer.digest}: unpacked to diff id {applied.diff_id}, "
                    f"the image's config says {diff_id}"
                )
            try:
                await snapshots.commit(chain, key)
            except AlreadyExists:  # unpacked meanwhile by someone else: theirs is as good
                await snapshots.remove(key)
        except BaseException:
            with contextlib.suppress(CtrdError):
                await snapshots.remove(key)
            raise
        log.debug("pull_layer_unpacked", ns=self.stores.ns, digest=layer.digest, key=chain)
