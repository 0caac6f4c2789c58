"""Pushing an image from a content store to a registry (Docker Registry HTTP API v2 / OCI).

Two halves: `plan` reads what an image is made of from the content store (manifests, configs,
layers) and says what a push must send, in order; `Pusher` sends it.

Invariants:
- Nothing is sent that the registry has: each blob is asked for first (HEAD). A missing blob is
  mounted from another repository of the registry when its distribution source label names one
  (`sources.mount_candidate`), and uploaded only when the registry will not mount it: a POST
  opens the upload (or the refused mount opened it), a PUT of the whole blob to its `Location`
  (relative or absolute, its query kept, `digest=` added) closes it. Bytes stream from the
  content store, which verified them when they were written.
- Order: blobs first, up to `CONCURRENCY` at a time in plan order (each manifest's config, then
  its layers); then manifests, every child before the index listing it (children by digest),
  the root last, under the target's tag. A registry checks that what a manifest names exists.
- A plan is complete or refused: a blob or manifest missing from the store is NotFound naming
  it; an index whose manifests are not all present is refused unless a platform is chosen, in
  which case that platform's manifest alone is pushed, as the target.
- Authentication asks for `repository:<name>:pull,push`, plus `repository:<from>:pull` for a
  mount. A refusal is PermissionDenied ("push access denied"); a registry that cannot be
  reached is Unavailable naming the host (both from `transport`).
- After a push every pushed object's labels name the target repository as a source, so a
  later push to a sibling repository mounts instead of uploading (as docker does).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
import structlog

from supervisor.content.protocol import Info
from supervisor.distribution import auth, hosts, manifest, sources
from supervisor.distribution.manifest import MANIFEST_LIMIT, Descriptor
from supervisor.distribution.platforms import Matcher
from supervisor.distribution.reference import Reference
from supervisor.distribution.registry import Registry
from supervisor.distribution.transport import failure
from supervisor.errors import (
    CtrdError,
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unknown,
    first_error,
)

log = structlog.get_logger("ctrd.distribution")

CONCURRENCY = 3  # blobs sent at once
MAX_NESTING = 4  # indexes within indexes, as pulls allow
_DONE = frozenset({200, 201, 202, 204})  # registries answer a finished upload with any of these


class Content(Protocol):
    """What a push needs of a content store (`supervisor.content.protocol.Store` has it)."""

    async def info(self, digest: str) -> Info: ...

    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]: ...

    async def update(self, info: Info, paths: Sequence[str]) -> Info: ...


@dataclass(frozen=True)
class Blob:
    descriptor: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)  # the local content's labels


@dataclass(frozen=True)
class Document:
    """A manifest or index, with its bytes (sent as they are: the digest must not change)."""

    descriptor: Descriptor
    body: bytes
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    root: Descriptor  # what the target will name
    blobs: tuple[Blob, ...]  # configs and layers, each once, in the order they go
    manifests: tuple[Document, ...]  # children before their index, the root last


@dataclass(frozen=True)
class Progress:
    """One step of one object: preparing, waiting, pushing, pushed, exists or mounted."""

    descriptor: Descriptor
    status: str
    offset: int = 0
    mounted_from: str = ""  # with "mounted": the repository (in the same registry)


ProgressFn = Callable[[Progress], None]


# -- the plan ----------------------------------------------------------------------------------


async def plan(store: Content, root: Descriptor, matcher: Matcher | None, name: str) -> Plan:
    """What pushing the image `name` (whose target is `root`) sends.

    With a matcher, an index gives way to its manifest for that platform; without one, an
    index is pushed whole and each of its manifests must be present with all its blobs.
    """
    if matcher is not None:
        root = await _select(store, root, matcher, name)
    manifest.check_supported(root.media_type, f"image {name} {root.digest}")
    walk = _Walk(store, name)
    await walk.visit(root, 0)
    return Plan(root, tuple(walk.blobs.values()), tuple(walk.documents.values()))


async def _select(store: Content, root: Descriptor, matcher: Matcher, name: str) -> Descriptor:
    current = root
    for _ in range(MAX_NESTING + 1):
        if not manifest.is_index(current.media_type):
            return current
        where = f"image {name} index {current.digest}"
        body = await _document(store, current, where)
        entries = manifest.parse_index(body, current.media_type, where)
        current = manifest.select(entries, matcher, where)
        try:
            await store.info(current.digest)
        except NotFound:
            raise NotFound(
                f"image {name}: its manifest for {current.platform or matcher} "
                f"({current.digest}) is not present locally"
            ) from None
    raise InvalidArgument(f"image {name}: indexes nested more than {MAX_NESTING} deep")


async def _document(store: Content, descriptor: Descriptor, what: str) -> bytes:
    if descriptor.size > MANIFEST_LIMIT:
        raise InvalidArgument(f"{what}: {descriptor.size} bytes, more than {MANIFEST_LIMIT}")
    try:
        return b"".join([chunk async for chunk in store.read(descriptor.digest)])
    except NotFound:
        raise NotFound(f"{what} is not in the content store") from None


def _kind(descriptor: Descriptor) -> str:
    return manifest.ref_key(descriptor).partition("-")[0]


class _Missing(NotFound):
    """Part of an index's manifest is not in the store (the index says which platform)."""


class _Walk:
    def __init__(self, store: Content, name: str) -> None:
        self.store = store
        self.name = name
        self.blobs: dict[str, Blob] = {}
        self.documents: dict[str, Document] = {}

    async def labels(self, descriptor: Descriptor, what: str) -> Mapping[str, str]:
        try:
            return (await self.store.info(descriptor.digest)).labels
        except NotFound:
            raise _Missing(f"{what} {descriptor.digest} is not in the content store") from None

    async def visit(self, descriptor: Descriptor, depth: int) -> None:
        if descriptor.digest in self.documents or descriptor.digest in self.blobs:
            return
        if depth > MAX_NESTING:
            raise InvalidArgument(f"image {self.name}: indexes nested more than {MAX_NESTING} deep")
        if not (
            manifest.is_index(descriptor.media_type) or manifest.is_manifest(descriptor.media_type)
        ):
            labels = await self.labels(descriptor, f"image {self.name}: {_kind(descriptor)}")
            self.blobs[descriptor.digest] = Blob(descriptor, labels)
            return
        kind = "index" if manifest.is_index(descriptor.media_type) else "manifest"
        where = f"image {self.name}: {kind} {descriptor.digest}"
        labels = await self.labels(descriptor, f"image {self.name}: {kind}")
        body = await _document(self.store, descriptor, where)
        if kind == "index":
            await self._children(descriptor, body, where, depth)
        else:
            parsed = manifest.parse_manifest(body, descriptor.media_type, where)
            for child in (parsed.config, *parsed.layers):
                await self.visit(child, depth + 1)
        self.documents[descriptor.digest] = Document(descriptor, body, labels)

    async def _children(self, index: Descriptor, body: bytes, where: str, depth: int) -> None:
        entries = manifest.parse_index(body, index.media_type, where)
        missing: list[str] = []
        present: list[str] = []
        for entry in entries:
            label = str(entry.platform) if entry.platform is not None else entry.digest
            try:
                await self.visit(entry, depth + 1)
            except _Missing:
                missing.append(label)
            else:
                present.append(label)
        if missing:
            raise NotFound(
                f"image {self.name}: its index {index.digest} lists {len(entries)} manifests, "
                f"not present locally ({', '.join(missing)}); push one platform with --platform"
                + (f" (here: {', '.join(present)})" if present else "")
            )


# -- sending -----------------------------------------------------------------------------------


def upload_url(request_url: str, location: str, digest: str) -> str:
    """Where to PUT a blob: the upload's Location (resolved against the URL that opened the
    upload when relative), its query kept, with `digest=` added. An upload opened over HTTPS
    never continues in plain HTTP (but to a loopback host)."""
    if not location:
        raise Unknown(f"the registry opened an upload at {request_url} without a Location")
    parts = urlsplit(urljoin(request_url, location))
    if (
        urlsplit(request_url).scheme == "https"
        and parts.scheme != "https"
        and not hosts.is_loopback(parts.netloc)
    ):  # the blob (and the upload's secrets in its URL) would leave in clear text: refuse
        raise PermissionDenied(
            f"the registry at {urlsplit(request_url).netloc} sent the upload to {parts.scheme}"
            f"://{parts.netloc}, not over HTTPS: refused"
        )
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("digest", digest)])
    return urlunsplit(parts._replace(query=query))


class Pusher:
    """Pushes plans to one reference's repository; progress goes to `progress`."""

    def __init__(
        self,
        registry: Registry,
        ref: Reference,
        progress: ProgressFn,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.http = registry.transport
        self.ep = registry.push_endpoint(ref.domain)
        self.ref = ref
        self.progress = progress
        self.concurrency = concurrency
        self.scopes = (auth.push_scope(ref.path),)

    async def push(self, store: Content, plan: Plan) -> Descriptor:
        """Send what the registry lacks; returns the root's descriptor, as the target names it."""
        if self.ref.digest and self.ref.digest != plan.root.digest:
            raise InvalidArgument(
                f"{self.ref} names digest {self.ref.digest}, the image is {plan.root.digest}"
            )
        for blob in plan.blobs:
            self.progress(Progress(blob.descriptor, "preparing"))
        slots = asyncio.Semaphore(self.concurrency)

        async def send(blob: Blob) -> None:
            if slots.locked():
                self.progress(Progress(blob.descriptor, "waiting"))
            async with slots:
                await self.blob(store, blob)

        try:
            async with asyncio.TaskGroup() as group:
                for blob in plan.blobs:
                    group.create_task(send(blob))
        except ExceptionGroup as group_error:  # the first failure is the push's: say that one
            raise first_error(group_error) from None
        for document in plan.manifests:
            root = document.descriptor.digest == plan.root.digest
            await self.manifest(document, self.ref.tag if root and self.ref.tag else "")
        await self._remember(store, plan)
        return plan.root

    # -- blobs ---------------------------------------------------------------------------------

    async def blob(self, store: Content, blob: Blob) -> str:
        """Push one blob unless the registry has it; returns the status it ended with."""
        descriptor = blob.descriptor
        if await self._exists(f"/v2/{self.ref.path}/blobs/{descriptor.digest}", descriptor):
            return self._done(descriptor, "exists")
        upload: tuple[str, str] | None = None
        source = sources.mount_candidate(self.ref, blob.labels)
        if source:
            mounted, upload = await self._mount(descriptor, source)
            if mounted:
                return self._done(descriptor, "mounted", source)
        if upload is None:
            upload = await self._start(descriptor)
        await self._upload(store, descriptor, upload_url(*upload, descriptor.digest))
        return self._done(descriptor, "pushed")

    def _done(self, descriptor: Descriptor, status: str, source: str = "") -> str:
        self.progress(Progress(descriptor, status, descriptor.size, source))
        return status

    async def _exists(self, path: str, descriptor: Descriptor) -> bool:
        headers = {"Accept": f"{descriptor.media_type}, */*"}
        async with self.http.request(
            self.ep, "HEAD", path, self.ref.path, headers, scopes=self.scopes
        ) as resp:
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            raise await failure(self.ep.host, resp, self._what(descriptor), "push")

    async def _mount(
        self, descriptor: Descriptor, source: str
    ) -> tuple[bool, tuple[str, str] | None]:
        """Ask for a mount: (True, None) if done, else the upload the registry opened instead
        (its request URL and Location), or None when it would not even open one."""
        query = urlencode({"mount": descriptor.digest, "from": source})
        path = f"/v2/{self.ref.path}/blobs/uploads/?{query}"
        scopes = (*self.scopes, auth.pull_scope(source))
        async with self.http.request(self.ep, "POST", path, self.ref.path, scopes=scopes) as resp:
            if resp.status == 201:
                return True, None
            if resp.status == 202:
                return False, (str(resp.url), resp.headers.get("Location", ""))
            # Refused (often: no access to the source): upload as if no mount had been asked.
            log.info(
                "registry_mount_refused",
                host=self.ep.host,
                digest=descriptor.digest,
                source=source,
                code=resp.status,
            )
            return False, None

    async def _start(self, descriptor: Descriptor) -> tuple[str, str]:
        path = f"/v2/{self.ref.path}/blobs/uploads/"
        async with self.http.request(
            self.ep, "POST", path, self.ref.path, scopes=self.scopes
        ) as resp:
            if resp.status != 202:
                raise await failure(self.ep.host, resp, self._what(descriptor), "push")
            return str(resp.url), resp.headers.get("Location", "")

    async def _upload(self, store: Content, descriptor: Descriptor, url: str) -> None:
        def body() -> AsyncIterator[bytes]:
            return self._stream(store, descriptor)

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(descriptor.size),
        }
        async with self.http.request(
            self.ep, "PUT", url, self.ref.path, headers, scopes=self.scopes, body=body
        ) as resp:
            if resp.status not in _DONE:
                raise await failure(self.ep.host, resp, self._what(descriptor), "push")
            self._check_digest(resp, descriptor)

    async def _stream(self, store: Content, descriptor: Descriptor) -> AsyncIterator[bytes]:
        sent = 0
        self.progress(Progress(descriptor, "pushing", 0))
        try:
            async for chunk in store.read(descriptor.digest):
                yield chunk
                sent += len(chunk)
                self.progress(Progress(descriptor, "pushing", sent))
        except NotFound:
            raise NotFound(
                f"{self._what(descriptor)}: gone from the content store during the push"
            ) from None
        if sent != descriptor.size:
            raise DataLoss(
                f"{self._what(descriptor)}: the content store has {sent} bytes, "
                f"the manifest says {descriptor.size}"
            )

    # -- manifests -----------------------------------------------------------------------------

    async def manifest(self, document: Document, tag: str = "") -> str:
        """PUT a manifest or index under `tag` (else its digest), unless, untagged, it exists."""
        descriptor = document.descriptor
        path = f"/v2/{self.ref.path}/manifests/{tag or descriptor.digest}"
        if not tag and await self._exists(path, descriptor):
            return self._done(descriptor, "exists")
        headers = {"Content-Type": descriptor.media_type}
        async with self.http.request(
            self.ep,
            "PUT",
            path,
            self.ref.path,
            headers,
            scopes=self.scopes,
            body=lambda: document.body,
        ) as resp:
            if resp.status not in _DONE:
                raise await failure(self.ep.host, resp, self._what(descriptor), "push")
            self._check_digest(resp, descriptor)
        return self._done(descriptor, "pushed")

    # -- helpers -------------------------------------------------------------------------------

    def _what(self, descriptor: Descriptor) -> str:
        return f"{_kind(descriptor)} {descriptor.digest} of {self.ref.name}"

    def _check_digest(self, resp: aiohttp.ClientResponse, descriptor: Descriptor) -> None:
        said = resp.headers.get("Docker-Content-Digest", "")
        if said and said != descriptor.digest:
            raise DataLoss(f"{self._what(descriptor)}: registry {self.ep.host} stored it as {said}")

    async def _remember(self, store: Content, plan: Plan) -> None:
        """Label what was pushed with the target repository as a source (best effort)."""
        pushed = [(b.descriptor.digest, b.labels) for b in plan.blobs]
        pushed += [(d.descriptor.digest, d.labels) for d in plan.manifests]
        for digest, labels in pushed:
            label = sources.label_for(self.ref, labels)
            if not label:
                continue
            try:
                await store.update(Info(digest, 0, 0, 0, label), [f"labels.{k}" for k in label])
            except CtrdError as e:  # the push is done; a label is only a hint for the next
                log.info("push_label_failed", digest=digest, error=str(e))
