"""The registry client: resolve references, fetch manifests, fetch blobs into a content store.

Docker Registry HTTP API v2 / OCI distribution over aiohttp; the decisions are made by the pure
modules beside this one (names, platforms, documents, challenges, endpoints).

Invariants:
- Every request goes to the registry's mirrors in order, then to the registry itself; a mirror
  that fails (cannot be reached, lacks the object, refuses us, serves bad bytes) is skipped and
  logged, and the registry's own error is the one raised.
- Nothing fetched is trusted: manifests are size-limited and their digest checked; blobs go
  through a content-store writer that checks size and digest at commit, and a blob whose bytes
  do not verify has its ingest aborted so the next fetch starts afresh.
- A blob fetch resumes its ingest: with bytes already there, it asks for the rest with
  `Range: bytes=N-`; a registry that answers 200 (ignoring the range) gets the ingest
  truncated and the whole blob written. A connection lost mid-blob keeps what arrived.
- Authentication, redirects and connection errors are `transport`'s.
- Errors are the daemon's: NotFound (no such repository, tag, manifest or blob),
  PermissionDenied (authentication refused or impossible), Unavailable (the registry cannot
  be reached or broke off, naming the host), DataLoss (bytes that do not match their digest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import aiohttp
import structlog

from supervisor import digests
from supervisor.content.protocol import Store, Writer, open_writer
from supervisor.distribution import manifest, platforms
from supervisor.distribution.auth import Credentials
from supervisor.distribution.hosts import Endpoint, HostConfig, endpoints
from supervisor.distribution.manifest import ACCEPT, MANIFEST_LIMIT, Descriptor
from supervisor.distribution.platforms import Matcher, Platform
from supervisor.distribution.reference import Reference, parse
from supervisor.distribution.transport import USER_AGENT, Transport, describe, failure
from supervisor.errors import (
    AlreadyExists,
    CtrdError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

log = structlog.get_logger("ctrd.distribution")

T = TypeVar("T")
READ_CHUNK = 256 << 10  # what one read from the socket may return
WRITE_CHUNK = 1 << 20  # what one write to the ingest gets (fewer, larger writes)
MAX_NESTING = 4  # indexes within indexes, at most


@dataclass(frozen=True)
class Progress:
    """Where a blob fetch stands: reported when it starts and after every write."""

    descriptor: Descriptor
    offset: int  # bytes of the blob in the ingest
    fetched: int  # bytes this fetch downloaded (the rest were there before, or are to come)

    @property
    def total(self) -> int:
        return self.descriptor.size


ProgressFn = Callable[[Progress], None]


class Registry:
    """A client for every registry: one connection pool, one token cache. Close it after use."""

    def __init__(
        self,
        *,
        hosts: Mapping[str, HostConfig] | None = None,
        credentials: Mapping[str, Credentials] | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._hosts = dict(hosts or {})
        for domain in self._hosts:  # a malformed mirror fails here, not at the first pull
            endpoints(domain, self._hosts)
        self._http = Transport(
            hosts=self._hosts,
            credentials=credentials or {},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent=user_agent,
        )

    async def close(self) -> None:
        await self._http.close()

    @property
    def transport(self) -> Transport:
        """The connection pool and token cache, for other clients of the API (push)."""
        return self._http

    def push_endpoint(self, domain: str) -> Endpoint:
        """Where pushes to `domain` go: the registry itself, never a mirror."""
        return endpoints(domain, self._hosts)[-1]

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the API ---------------------------------------------------------------------------

    async def resolve(self, ref: Reference | str) -> Descriptor:
        """The root descriptor a reference names (a manifest or an index), from HEAD or GET."""
        reference = _reference(ref)
        return await self._each(reference, lambda ep: self._resolve(ep, reference))

    async def fetch_manifest(self, ref: Reference | str, descriptor: Descriptor) -> bytes:
        """A manifest or index by its descriptor, verified against its size and digest."""
        reference = _reference(ref)
        return await self._each(
            reference, lambda ep: self._fetch_manifest(ep, reference, descriptor)
        )

    async def select_manifest(
        self, ref: Reference | str, descriptor: Descriptor, platform: Platform | Matcher
    ) -> Descriptor:
        """The manifest for `platform` under a root descriptor, through (nested) indexes.

        A root that is a manifest is returned as it is: whether its config's platform fits is
        for the caller to check once it has the config (`platforms.Platform.from_json`).
        """
        matcher = platform if isinstance(platform, Matcher) else platforms.only(platform)
        current = descriptor
        for _ in range(MAX_NESTING + 1):
            if manifest.is_manifest(current.media_type):
                return current
            if not manifest.is_index(current.media_type):
                manifest.check_supported(current.media_type, f"{ref} {current.digest}")
            body = await self.fetch_manifest(ref, current)
            where = f"{ref} index {current.digest}"
            current = manifest.select(
                manifest.parse_index(body, current.media_type, where), matcher, where
            )
        raise InvalidArgument(f"{ref}: indexes nested more than {MAX_NESTING} deep")

    async def fetch_blob(
        self,
        ref: Reference | str,
        descriptor: Descriptor,
        store: Store,
        *,
        progress: ProgressFn | None = None,
        key: str = "",
    ) -> None:
        """Fetch a blob (or a manifest) into `store`, resuming the ingest `key` if it exists.

        `key` defaults to containerd's ref key (`layer-sha256:...`). Content the store already
        has (AlreadyExists, or a writer that reports it complete) costs no download.
        """
        reference = _reference(ref)
        key = key or manifest.ref_key(descriptor)
        await self._each(
            reference, lambda ep: self._fetch_blob(ep, reference, descriptor, store, key, progress)
        )

    # -- mirrors ---------------------------------------------------------------------------

    async def _each(self, reference: Reference, attempt: Callable[[Endpoint], Awaitable[T]]) -> T:
        planned = endpoints(reference.domain, self._hosts)
        for endpoint in planned[:-1]:
            try:
                return await attempt(endpoint)
            except CtrdError as e:
                log.info(
                    "registry_mirror_failed", host=endpoint.host, ref=str(reference), error=str(e)
                )
        return await attempt(planned[-1])

    # -- resolving and manifests -----------------------------------------------------------

    async def _resolve(self, ep: Endpoint, reference: Reference) -> Descriptor:
        path = f"/v2/{reference.path}/manifests/{reference.object}"
        what = f"manifest {reference}"
        async with self._http.request(ep, "HEAD", path, reference.path, {"Accept": ACCEPT}) as resp:
            if resp.status == 200:
                found = _head_descriptor(resp, reference)
                if found is not None:
                    return found
            elif resp.status not in (400, 405, 501):  # those: HEAD unsupported, try GET
                raise await failure(ep.host, resp, what)
        async with self._http.request(ep, "GET", path, reference.path, {"Accept": ACCEPT}) as resp:
            if resp.status != 200:
                raise await failure(ep.host, resp, what)
            body = await _read_limited(resp, MANIFEST_LIMIT, what)
            served_as = resp.headers.get("Content-Type", "")
        media_type = manifest.detect_media_type(body, served_as)
        manifest.check_supported(media_type, what)
        algorithm = digests.parse(reference.digest)[0] if reference.digest else "sha256"
        digest = digests.of(body, algorithm)
        if reference.digest and digest != reference.digest:
            raise DataLoss(f"{what} from {ep.host}: its bytes have digest {digest}")
        return Descriptor(media_type, digest, len(body))

    async def _fetch_manifest(
        self, ep: Endpoint, reference: Reference, descriptor: Descriptor
    ) -> bytes:
        what = f"manifest {descriptor.digest} of {reference.name}"
        if descriptor.size > MANIFEST_LIMIT:
            raise InvalidArgument(f"{what}: {descriptor.size} bytes, more than {MANIFEST_LIMIT}")
        path = f"/v2/{reference.path}/manifests/{descriptor.digest}"
        async with self._http.request(ep, "GET", path, reference.path, {"Accept": ACCEPT}) as resp:
            if resp.status != 200:
                raise await failure(ep.host, resp, what)
            body = await _read_limited(resp, descriptor.size, what)
        algorithm = digests.parse(descriptor.digest)[0]
        if len(body) != descriptor.size or digests.of(body, algorithm) != descriptor.digest:
            raise DataLoss(
                f"{what} from {ep.host}: got {len(body)} bytes with digest "
                f"{digests.of(body, algorithm)}, expected {descriptor.size}"
            )
        return body

    # -- blobs -----------------------------------------------------------------------------

    async def _fetch_blob(
        self,
        ep: Endpoint,
        reference: Reference,
        descriptor: Descriptor,
        store: Store,
        key: str,
        progress: ProgressFn | None,
    ) -> None:
        try:  # another pull fetching it: waited for, then found (or resumed where it stopped)
            writer = await open_writer(store, key, descriptor.size, descriptor.digest)
        except AlreadyExists:
            return
        try:
            offset = (await writer.status()).offset
            if offset > descriptor.size:
                await writer.truncate(0)
                offset = 0
            if offset < descriptor.size:
                await self._download(ep, reference, descriptor, writer, offset, progress)
            elif progress is not None:
                progress(Progress(descriptor, offset, 0))
            await writer.commit(descriptor.size, descriptor.digest)
        except AlreadyExists:
            pass
        except FailedPrecondition as e:  # size or digest did not verify: never resume these bytes
            with contextlib.suppress(CtrdError):
                await store.abort(key)
            raise DataLoss(f"blob {descriptor.digest} from {ep.host}: {e.detail}") from None
        finally:
            await writer.close()

    async def _download(
        self,
        ep: Endpoint,
        reference: Reference,
        descriptor: Descriptor,
        writer: Writer,
        offset: int,
        progress: ProgressFn | None,
    ) -> None:
        """Write the blob's bytes from `offset` on to `writer`."""
        kind = (
            "manifests"
            if manifest.is_manifest(descriptor.media_type)
            or manifest.is_index(descriptor.media_type)
            else "blobs"
        )
        path = f"/v2/{reference.path}/{kind}/{descriptor.digest}"
        what = f"blob {descriptor.digest} of {reference.name}"
        headers = {"Accept": ACCEPT} if kind == "manifests" else {}
        if offset and kind == "manifests":  # registries serve manifests whole
            await writer.truncate(0)
            offset = 0
        if offset:
            headers["Range"] = f"bytes={offset}-"
        async with self._http.request(ep, "GET", path, reference.path, headers) as resp:
            refused = offset > 0 and resp.status == 416  # the range is past the registry's end
            if not refused:
                offset = await _accept(ep, resp, descriptor, writer, offset, what)
                await _stream(ep, resp, descriptor, writer, offset, progress, what)
        if refused:
            log.info("registry_range_refused", host=ep.host, digest=descriptor.digest)
            await writer.truncate(0)
            await self._download(ep, reference, descriptor, writer, 0, progress)


async def _accept(
    ep: Endpoint,
    resp: aiohttp.ClientResponse,
    descriptor: Descriptor,
    writer: Writer,
    offset: int,
    what: str,
) -> int:
    """Check a blob answer against what was asked; returns the offset its body starts at.

    A 200 to a range request means the registry ignored the range: the ingest starts over.
    """
    if resp.status not in (200, 206):
        raise await failure(ep.host, resp, what)
    if offset and resp.status == 200:
        log.info("registry_range_ignored", host=ep.host, digest=descriptor.digest)
        await writer.truncate(0)
        offset = 0
    elif resp.status == 206:
        _check_content_range(resp.headers.get("Content-Range", ""), offset, what)
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != descriptor.size - offset:
        raise DataLoss(
            f"{what} from {ep.host}: {length} bytes offered for the "
            f"{descriptor.size - offset} expected from offset {offset}"
        )
    return offset


async def _stream(
    ep: Endpoint,
    resp: aiohttp.ClientResponse,
    descriptor: Descriptor,
    writer: Writer,
    offset: int,
    progress: ProgressFn | None,
    what: str,
) -> None:
    """Copy the body to the writer in large writes; on any failure, keep what arrived."""
    fetched = 0
    buffer = bytearray()

    async def flush() -> None:
        nonlocal offset, fetched
        if buffer:
            await writer.write(bytes(buffer))
            offset += len(buffer)
            fetched += len(buffer)
            buffer.clear()
        if progress is not None:
            progress(Progress(descriptor, offset, fetched))

    if progress is not None:
        progress(Progress(descriptor, offset, 0))
    try:
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            if offset + len(buffer) + len(chunk) > descriptor.size:
                raise DataLoss(
                    f"{what} from {ep.host}: more than the {descriptor.size} bytes expected"
                )
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                await flush()
    except (aiohttp.ClientError, TimeoutError) as e:
        await flush()
        raise Unavailable(
            f"{what}: registry {ep.host} broke off after {offset} of {descriptor.size} bytes "
            f"({describe(e)})"
        ) from e
    if buffer:
        await flush()
    if offset < descriptor.size:
        raise Unavailable(
            f"{what}: registry {ep.host} ended the body after {offset} of {descriptor.size} bytes"
        )


def _reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else parse(ref)


def _head_descriptor(resp: aiohttp.ClientResponse, reference: Reference) -> Descriptor | None:
    """A descriptor from a HEAD answer, or None when it lacks what a descriptor needs."""
    media_type = resp.headers.get("Content-Type", "").partition(";")[0].strip()
    digest = reference.digest or resp.headers.get("Docker-Content-Digest", "")
    length = resp.headers.get("Content-Length", "")
    if media_type not in manifest.MANIFEST_TYPES | manifest.INDEX_TYPES or not length.isdigit():
        return None
    try:
        digests.validate(digest)
    except InvalidArgument:
        return None
    if int(length) > MANIFEST_LIMIT:
        raise InvalidArgument(f"manifest {reference}: {length} bytes, more than {MANIFEST_LIMIT}")
    return Descriptor(media_type, digest, int(length))


def _check_content_range(header: str, offset: int, what: str) -> None:
    """A 206 must start where we asked: `bytes <offset>-<end>/<size or *>`."""
    unit, _, spec = header.partition(" ")
    span, _, _size = spec.partition("/")
    start = span.partition("-")[0]
    if unit != "bytes" or not start.isdigit() or int(start) != offset:
        raise DataLoss(f'{what}: asked for bytes={offset}-, got Content-Range "{header}"')


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise InvalidArgument(f"{what}: larger than {limit} bytes")
    return bytes(data)
