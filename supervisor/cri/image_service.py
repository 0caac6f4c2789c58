"""runtime.v1.ImageService: kubelet's images, as ordinary ctrd images of the CRI's namespace.

Every call works on the `[cri] namespace` (`k8s.io`), whatever namespace header it carries:
what it pulls is visible with `ctr -n k8s.io images ls`, and images put there by other means
(`ctr -n k8s.io images pull/import`) are the CRI's too. What an image is to the CRI is
`supervisor.cri.images`; how a pull reaches a registry is `supervisor.cri.registry`.

- PullImage goes through the daemon's own pull (`PullService.pull`: fetched, labelled, and
  unpacked into overlayfs as ctr would) and then names the image as containerd's CRI does:
  the reference pulled, its repo digest and its ID, each record labelled
  `io.cri-containerd.image=managed`. It answers the image ID. Identical requests in flight at
  once (same reference, same credentials) share one pull: the later ones wait for the first.
- RemoveImage deletes every record naming the image (all its tags and digests, and the ID);
  an image that is not there is success, as the API asks.
- ImageStatus of an unknown image is an empty answer, not an error (kubelet's rule).
- ImageFsInfo measures the overlayfs snapshotter's directory (bytes in use, inodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from supervisor.api.containerd.events import image_pb2 as events_pb2
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from supervisor.config import CriConfig, RegistryConfig
from supervisor.cri import images as catalogue
from supervisor.cri import registry
from supervisor.errors import AlreadyExists, CtrdError, InvalidArgument, NotFound
from supervisor.metadata.images import Descriptor, Image

if TYPE_CHECKING:
    from supervisor.cri.usage import LayerUsage
    from supervisor.events import Exchange
    from supervisor.metadata.content import ContentStore
    from supervisor.metadata.gc import Collector
    from supervisor.metadata.images import ImageStore
    from supervisor.services.pull import PullService

log = structlog.get_logger("ctrd.cri")

Context = grpc.aio.ServicerContext[Any, Any]
PullKey = tuple[str, bytes]
FS_USAGE_TTL = 10.0  # s between two walks of the snapshotter directory (ImageFsInfo)
FS_USAGE_WAIT = 1.0  # s an ImageFsInfo waits for a walk under way before answering the last


class ImageService(cri_grpc.ImageServiceServicer):
    def __init__(
        self,
        cri_config: CriConfig,
        registry_config: RegistryConfig,
        images: Callable[[str], ImageStore],
        content: Callable[[str, str | None], ContentStore],
        puller: Callable[[], PullService],
        events: Exchange,
        gc: Callable[[], Collector],
        image_fs: Path,
    ) -> None:
        self._ns = cri_config.namespace
        self._hosts = registry.hosts_config(cri_config, registry_config)
        self._images = images
        self._content = content
        self._puller = puller
        self._events = events
        self._gc = gc
        self._image_fs = image_fs
        self._contents: dict[str, catalogue.Content] = {}  # by target digest (immutable)
        self._pulls: dict[PullKey, asyncio.Task[str]] = {}
        self._fs_usage: LayerUsage | None = None  # ImageFsInfo's measures (made at its first)

    # -- the calls -------------------------------------------------------------------------

    async def ListImages(self, request: cri.ListImagesRequest, context: Context) -> Any:
        found = await self._catalogue()
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            try:
                found = [catalogue.lookup(found, wanted)]
            except NotFound:
                found = []
        return cri.ListImagesResponse(images=[_image(i) for i in found])

    async def ImageStatus(self, request: cri.ImageStatusRequest, context: Context) -> Any:
        try:
            image = catalogue.lookup(await self._catalogue(), request.image.image)
        except NotFound:
            return cri.ImageStatusResponse()
        info = catalogue.verbose_info(image) if request.verbose else {}
        return cri.ImageStatusResponse(image=_image(image), info=info)

    async def PullImage(self, request: cri.PullImageRequest, context: Context) -> Any:
        from supervisor.distribution import reference

        text = request.image.image
        try:
            ref = reference.parse(text)
        except InvalidArgument as e:
            raise InvalidArgument(f'failed to parse image reference "{text}": {e.detail}') from None
        auth = request.auth if request.HasField("auth") else None
        key = (str(ref), auth.SerializeToString() if auth is not None else b"")
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.create_task(self._pull(ref, auth), name=f"cri-pull {ref}")
            self._pulls[key] = task
            task.add_done_callback(lambda done: self._pull_done(key, done))
        image_id = await asyncio.shield(task)  # a caller going away leaves the pull to others
        self._fs_changed()
        return cri.PullImageResponse(image_ref=image_id)

    async def RemoveImage(self, request: cri.RemoveImageRequest, context: Context) -> Any:
        try:
            image = catalogue.lookup(await self._catalogue(), request.image.image)
        except NotFound:
            return cri.RemoveImageResponse()
        store = self._images(self._ns)
        for name in image.names:
            with contextlib.suppress(NotFound):  # removed meanwhile: as good
                await store.delete(name)
                await self._events.publish(
                    self._ns, "/images/delete", events_pb2.ImageDelete(name=name)
                )
        self._gc().mark_dirty()
        self._fs_changed()
        log.info("cri_image_removed", ns=self._ns, id=image.id, names=list(image.names))
        return cri.RemoveImageResponse()

    async def ImageFsInfo(self, request: cri.ImageFsInfoRequest, context: Context) -> Any:
        """The snapshotter directory's usage, measured at most every 10 s (containerd's
        snapshot sync period) by a walk on a thread: kubelet asks every few seconds, and a walk
        of a large image store costs seconds of disk reads. A walk that outlasts the call
        goes on while the call answers the last measure (the first one is waited for); the
        timestamp is the measure's. A CRI pull or removal makes the next call measure anew
        (containerd's stays up to 10 s old)."""
        if self._fs_usage is None:
            from supervisor.cri.usage import LayerUsage

            self._fs_usage = LayerUsage(ttl=FS_USAGE_TTL, wait=FS_USAGE_WAIT)
        size = await self._fs_usage.get(
            "", lambda: asyncio.to_thread(_usage, self._image_fs), patient=True
        )
        usage = cri.FilesystemUsage(
            timestamp=size.at,
            fs_id=cri.FilesystemIdentifier(mountpoint=str(self._image_fs)),
            used_bytes=cri.UInt64Value(value=size.used_bytes),
            inodes_used=cri.UInt64Value(value=size.inodes_used),
        )
        return cri.ImageFsInfoResponse(image_filesystems=[usage])

    def _fs_changed(self) -> None:
        """Images came or went: the next ImageFsInfo measures again, waiting for it."""
        if self._fs_usage is not None:
            self._fs_usage.keep([])

    async def pin(self, text: str) -> None:
        """Label every record of the image `text` names `io.cri-containerd.pinned=pinned`
        (the sandbox image, as containerd's CRI marks it: ImageStatus then says pinned)."""
        image = catalogue.lookup(await self._catalogue(), text)
        store = self._images(self._ns)
        path = f"labels.{catalogue.PINNED_LABEL}"
        for name in image.names:
            with contextlib.suppress(NotFound):  # removed meanwhile
                record = await store.get(name)
                labels = {catalogue.PINNED_LABEL: catalogue.PINNED}
                updated = await store.update(Image(name, record.target, labels), [path])
                event = events_pb2.ImageUpdate(name=name, labels=dict(updated.labels))
                await self._events.publish(self._ns, "/images/update", event)

    # -- pulls -----------------------------------------------------------------------------

    def _pull_done(self, key: PullKey, task: asyncio.Task[str]) -> None:
        if self._pulls.get(key) is task:
            del self._pulls[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it already

    async def _pull(self, ref: Any, auth: cri.AuthConfig | None) -> str:
        """Pull `ref` into the namespace, name it as the CRI does; its image ID."""
        from supervisor.api.ctrd.services.images.v1 import pull_pb2
        from supervisor.services.pull import registry_settings

        hosts, credentials = registry_settings(self._hosts)
        credentials = registry.request_credentials(auth, ref.domain, hosts, credentials)
        start = time.monotonic()
        try:
            await self._puller().pull(
                self._ns,
                pull_pb2.PullRequest(ref=str(ref), unpack=True),
                lambda _: None,
                (hosts, credentials),
            )
            record = await self._images(self._ns).get(str(ref))
            content = await self._content_of(record)
        except CtrdError as e:
            raise type(e)(f'failed to pull and unpack image "{ref}": {e.detail}') from None
        names = [str(ref), content.config_digest]
        if not ref.digest:
            names.insert(1, f"{ref.name}@{record.target.digest}")
        for name in names:
            await self._name(name, record.target)
        log.info(
            "cri_image_pulled",
            ns=self._ns,
            ref=str(ref),
            id=content.config_digest,
            ms=round((time.monotonic() - start) * 1000, 1),
        )
        return content.config_digest

    async def _name(self, name: str, target: Descriptor) -> None:
        """A record `name` -> `target`, labelled as the CRI's, made or brought up to date."""
        store = self._images(self._ns)
        labels = {catalogue.MANAGED_LABEL: catalogue.MANAGED}
        event: events_pb2.ImageCreate | events_pb2.ImageUpdate
        try:
            image = await store.create(Image(name, target, labels))
            topic, event = "/images/create", events_pb2.ImageCreate(name=name)
        except AlreadyExists:
            current = await store.get(name)
            if current.target == target and current.labels.get(catalogue.MANAGED_LABEL):
                return
            image = await store.update(
                Image(name, target, labels), ["target", f"labels.{catalogue.MANAGED_LABEL}"]
            )
            topic, event = "/images/update", events_pb2.ImageUpdate(name=name)
        event.labels.update(image.labels)
        await self._events.publish(self._ns, topic, event)

    # -- the catalogue ---------------------------------------------------------------------

    async def image(self, text: str) -> catalogue.CriImage:
        """The local image `text` names (ID, prefix, or reference with short names
        normalised), NotFound otherwise: what CreateContainer runs (never pulled)."""
        return catalogue.lookup(await self._catalogue(), text)

    async def _catalogue(self) -> list[catalogue.CriImage]:
        records = await self._images(self._ns).list()
        found = []
        for record in records:
            try:
                found.append((record, await self._content_of(record)))
            except (NotFound, InvalidArgument) as e:  # incomplete or unreadable: not listed
                log.debug("cri_image_skipped", ns=self._ns, name=record.name, error=str(e))
        return catalogue.group(found)

    async def _content_of(self, record: Image) -> catalogue.Content:
        cached = self._contents.get(record.target.digest)
        if cached is None:
            store = self._content(self._ns, None)

            async def read(digest: str) -> bytes:
                return b"".join([chunk async for chunk in store.read(digest)])

            cached = await catalogue.read_content(record, read)
            self._contents[record.target.digest] = cached
        return cached


def _image(image: catalogue.CriImage) -> cri.Image:
    uid, username = image.user()
    return cri.Image(
        id=image.id,
        repo_tags=list(image.repo_tags),
        repo_digests=list(image.repo_digests),
        size=image.size,
        uid=cri.Int64Value(value=uid) if uid is not None else None,
        username=username,
        pinned=image.pinned,
    )


def _usage(root: Path) -> tuple[int, int]:
    """(bytes, inodes) in use under `root`, hard links counted once; 0s when it is missing."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for directory, dirs, files in os.walk(root):
        for name in (directory, *(os.path.join(directory, n) for n in (*dirs, *files))):
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            used += st.st_blocks * 512
    return used, len(seen)
