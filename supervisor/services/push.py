"""ctrd.services.images.v1.Push: the daemon pushes an image of a namespace to a registry itself.

Translate, call `supervisor.distribution.push`, translate: the image is looked up by its name
as given, else by its normalized reference (busybox -> docker.io/library/busybox:latest); the
target is the request's `ref`, else the image's name; the plan is read from the namespace's
content store and sent with the registry settings of ctrd's `[registry]` config (credentials
from docker's config.json, read at each push). Progress is streamed: every status change of
every object, and "pushing" at most ~10 times a second per blob; the last message names the
reference and the digest it now has.

Nothing is written but labels (the distribution source of what was pushed), so no lease is
taken. supervisor.distribution (aiohttp) is imported inside the handler, as pull does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from supervisor.api.ctrd.services.images.v1 import push_pb2 as pb
from supervisor.api.ctrd.services.images.v1 import push_pb2_grpc as pb_grpc
from supervisor.config import RegistryConfig
from supervisor.errors import InvalidArgument, NotFound
from supervisor.metadata.content import ContentStore
from supervisor.metadata.images import Image, ImageStore
from supervisor.metrics import counts
from supervisor.services import rpc
from supervisor.services.pull import registry_settings

if TYPE_CHECKING:
    from supervisor.distribution.push import Progress

log = structlog.get_logger("ctrd.push")

Context = grpc.aio.ServicerContext[Any, Any]
Emit = Callable[[pb.PushProgress], None]
PROGRESS_INTERVAL = 0.1  # seconds between "pushing" messages of one blob


class Reporter:
    """Progress of a push as messages: status changes always, byte counts throttled."""

    def __init__(self, emit: Emit, interval: float = PROGRESS_INTERVAL) -> None:
        self._emit = emit
        self._interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, progress: Progress) -> None:
        descriptor = progress.descriptor
        if progress.status == "pushed":  # uploaded, not found there or mounted
            counts.PUSH_BYTES.inc(by=descriptor.size)
        if progress.status == "pushing" and 0 < progress.offset < descriptor.size:
            now = time.monotonic()
            if now - self._last.get(descriptor.digest, 0.0) < self._interval:
                return
            self._last[descriptor.digest] = now
        self._emit(
            pb.PushProgress(
                ref=descriptor.digest,
                status=progress.status,
                offset=progress.offset,
                total=descriptor.size,
                media_type=descriptor.media_type,
                mounted_from=progress.mounted_from,
            )
        )


class PushService(pb_grpc.PushServicer):
    def __init__(
        self,
        content: Callable[[str, str | None], ContentStore],
        images: Callable[[str], ImageStore],
        registry: RegistryConfig,
    ) -> None:
        self._content = content
        self._images = images
        self._registry = registry

    async def Push(self, request: pb.PushRequest, context: Context) -> AsyncIterator[Any]:
        ns = rpc.namespace(context)

        async def work(emit: Emit) -> None:
            try:
                await self._push(ns, request, emit)
            except BaseException:
                counts.PUSHES.inc("error")
                raise
            counts.PUSHES.inc("ok")

        async for message in rpc.emitted(work, "push"):
            yield message

    async def _push(self, ns: str, request: pb.PushRequest, emit: Emit) -> None:
        from supervisor.distribution import platforms, reference
        from supervisor.distribution.manifest import Descriptor
        from supervisor.distribution.push import Pusher, plan
        from supervisor.distribution.registry import Registry

        image = await self._image(ns, request.image)
        try:
            target = reference.parse(request.ref or image.name)
        except InvalidArgument as e:
            what = "target" if request.ref else "image name"
            raise InvalidArgument(f"push {request.ref or image.name}: {what}: {e.detail}") from None
        matcher = platforms.only(platforms.parse(request.platform)) if request.platform else None
        content = self._content(ns, None)
        root = Descriptor(image.target.media_type, image.target.digest, image.target.size)
        planned = await plan(content, root, matcher, image.name)
        hosts, credentials = registry_settings(self._registry)
        async with Registry(hosts=hosts, credentials=credentials) as registry:
            pushed = await Pusher(registry, target, Reporter(emit)).push(content, planned)
        log.info("push_done", ns=ns, ref=str(target), digest=pushed.digest)
        emit(
            pb.PushProgress(
                ref=str(target),
                status="done",
                offset=pushed.size,
                total=pushed.size,
                media_type=pushed.media_type,
                image=str(target),
                digest=pushed.digest,
            )
        )

    async def _image(self, ns: str, name: str) -> Image:
        """The image as named, else under the name docker's normalization gives it."""
        from supervisor.distribution import reference

        if not name:
            raise InvalidArgument("push: no image named")
        store = self._images(ns)
        try:
            return await store.get(name)
        except NotFound:
            try:
                normalized = str(reference.parse(name))
            except InvalidArgument:
                normalized = name
            if normalized == name:
                raise NotFound(f"push {name}: no such image in namespace {ns}") from None
        try:
            return await store.get(normalized)
        except NotFound:
            raise NotFound(f"push {name}: no such image in namespace {ns}") from None
