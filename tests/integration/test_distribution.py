"""The registry client against a real docker-registry on loopback, into a real content store.

Auth, Range handling and failures are staged by `tests.support.registry_proxy`: the real
registry with htpasswd for basic auth; a proxy in front of it for bearer tokens, for a registry
that ignores Range, and for one that breaks off mid-blob.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from supervisor.content.local import LocalStore
from supervisor.distribution import manifest, platforms
from supervisor.distribution.auth import Credentials, load_docker_config
from supervisor.distribution.hosts import HostConfig
from supervisor.distribution.manifest import Descriptor
from supervisor.distribution.registry import Progress, Registry
from supervisor.errors import DataLoss, NotFound, PermissionDenied, Unavailable
from supervisor.metadata.content import ContentStore
from supervisor.metadata.db import Database
from tests.support import images
from tests.support import registry as test_registry
from tests.support.registry_proxy import (
    PASSWORD,
    SERVICE,
    TOKEN,
    USERNAME,
    HtpasswdRegistry,
    Proxy,
    ProxySettings,
)

pytestmark = pytest.mark.integration

Scenario = Callable[[ContentStore], Awaitable[None]]


@contextlib.asynccontextmanager
async def content_store(root: Path) -> AsyncIterator[ContentStore]:
    db = await Database.open(root / "meta.db")
    try:
        yield ContentStore(db, LocalStore(root / "content"), "default")
    finally:
        await db.close()


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        async with content_store(tmp_path) as store:
            await scenario(store)

    asyncio.run(main())


def descriptor(d: images.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size)


async def read(store: ContentStore, digest: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest)])


async def pull_image(client: Registry, ref: str, target: Descriptor, store: ContentStore) -> None:
    """Manifest, config and layers of one image into the store, checked as they go."""
    body = await client.fetch_manifest(ref, target)
    parsed = manifest.parse_manifest(body, target.media_type)
    for blob in (target, parsed.config, *parsed.layers):
        await client.fetch_blob(ref, blob, store)


@pytest.fixture(scope="module")
def multi_platform(registry: test_registry.Registry) -> test_registry.PushedImage:
    """An index of busybox for linux/amd64 and linux/arm64 (same layer, two configs)."""
    index = images.build_index(
        [
            images.busybox_image(platform=images.Platform("amd64")),
            images.busybox_image(platform=images.Platform("arm64")),
        ]
    )
    return registry.push("test/multi", "v1", index)


def layer_of(pushed: test_registry.PushedImage) -> tuple[Descriptor, bytes]:
    image = pushed.image
    assert isinstance(image, images.Image)
    layer = image.layers[0]
    return descriptor(layer.descriptor), layer.data


# -- resolve and fetch -------------------------------------------------------------------------


def test_resolve_and_fetch_a_single_manifest_image(
    tmp_path: Path, busybox_image: test_registry.PushedImage
):
    image = busybox_image.image
    assert isinstance(image, images.Image)

    async def scenario(store: ContentStore) -> None:
        async with Registry() as client:
            root = await client.resolve(busybox_image.ref)
            assert root == descriptor(image.descriptor)
            assert await client.select_manifest(busybox_image.ref, root, platforms.host()) == root
            await pull_image(client, busybox_image.ref, root, store)
        for digest, data in image.content.items():
            assert await read(store, digest) == data
        assert await store.list_statuses() == []  # every ingest committed

    run(tmp_path, scenario)


def test_resolve_by_digest_and_docker_schema2(tmp_path: Path, registry: test_registry.Registry):
    image = images.busybox_image(schema="docker")
    pushed = registry.push("test/docker-schema2-pull", "v1", image)

    async def scenario(store: ContentStore) -> None:
        async with Registry() as client:
            by_digest = f"{registry.host}/test/docker-schema2-pull@{image.digest}"
            root = await client.resolve(by_digest)
            assert root == descriptor(image.descriptor)
            assert root.media_type == manifest.DOCKER_MANIFEST
            assert await client.resolve(pushed.ref) == root
            await pull_image(client, by_digest, root, store)
        assert await read(store, image.config_descriptor.digest) == image.config

    run(tmp_path, scenario)


def test_an_index_of_two_platforms_gives_each_its_own_manifest(
    tmp_path: Path, multi_platform: test_registry.PushedImage
):
    index = multi_platform.image
    assert isinstance(index, images.Index)
    amd64, arm64 = index.images

    async def scenario(store: ContentStore) -> None:
        async with Registry() as client:
            root = await client.resolve(multi_platform.ref)
            assert root == descriptor(index.descriptor)
            assert root.media_type == manifest.OCI_INDEX

            chosen = await client.select_manifest(
                multi_platform.ref, root, platforms.parse("linux/arm64")
            )
            assert chosen.digest == arm64.digest
            assert chosen.platform == platforms.Platform("linux", "arm64")
            other = await client.select_manifest(
                multi_platform.ref, root, platforms.parse("linux/amd64")
            )
            assert other.digest == amd64.digest
            with pytest.raises(NotFound, match=r"linux/s390x .*linux/amd64, linux/arm64"):
                await client.select_manifest(
                    multi_platform.ref, root, platforms.parse("linux/s390x")
                )

            await client.fetch_blob(multi_platform.ref, root, store)
            await pull_image(client, multi_platform.ref, chosen, store)
        assert await read(store, index.digest) == index.index
        for digest, data in arm64.content.items():
            assert await read(store, digest) == data
        with pytest.raises(NotFound):
            await store.info(amd64.config_descriptor.digest)  # the other platform stayed away

    run(tmp_path, scenario)


def test_missing_tag_repository_and_blob_are_not_found(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    async def scenario(store: ContentStore) -> None:
        async with Registry() as client:
            with pytest.raises(
                NotFound, match=f"library/busybox:nope on {re.escape(registry.host)}"
            ):
                await client.resolve(f"{registry.host}/library/busybox:nope")
            with pytest.raises(NotFound, match="no/such/repo:latest"):
                await client.resolve(f"{registry.host}/no/such/repo")
            missing = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 10)
            with pytest.raises(NotFound, match=rf"blob sha256:0+ .*on {re.escape(registry.host)}"):
                await client.fetch_blob(busybox_image.ref, missing, store)

    run(tmp_path, scenario)


# -- resuming ----------------------------------------------------------------------------------


def test_a_prefilled_ingest_is_resumed_with_a_range_request(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, data = layer_of(busybox_image)
    prefilled = 300_000
    seen: list[Progress] = []

    async def scenario(store: ContentStore) -> None:
        writer = await store.writer(manifest.ref_key(layer), layer.size, layer.digest)
        await writer.write(data[:prefilled])
        await writer.close()
        with Proxy(registry.url) as proxy:
            async with Registry() as client:
                ref = f"{proxy.host}/library/busybox:latest"
                await client.fetch_blob(ref, layer, store, progress=seen.append)
            (get,) = proxy.blob_gets()
        assert get.headers.get("Range") == f"bytes={prefilled}-"
        assert await read(store, layer.digest) == data

    run(tmp_path, scenario)
    assert seen[0] == Progress(layer, prefilled, 0)
    assert seen[-1] == Progress(layer, layer.size, layer.size - prefilled)  # only the rest
    assert all(a.fetched <= b.fetched for a, b in itertools.pairwise(seen))


def test_a_registry_that_ignores_range_gets_the_whole_blob_again(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, data = layer_of(busybox_image)
    seen: list[Progress] = []

    async def scenario(store: ContentStore) -> None:
        writer = await store.writer(manifest.ref_key(layer), layer.size, layer.digest)
        await writer.write(data[:1000])
        await writer.close()
        with Proxy(registry.url, settings=ProxySettings(ignore_range=True)) as proxy:
            async with Registry() as client:
                ref = f"{proxy.host}/library/busybox:latest"
                await client.fetch_blob(ref, layer, store, progress=seen.append)
        assert await read(store, layer.digest) == data

    run(tmp_path, scenario)
    assert seen[-1] == Progress(layer, layer.size, layer.size)


def test_a_registry_going_away_mid_blob_is_unavailable_and_the_next_fetch_resumes(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, data = layer_of(busybox_image)
    cut = 700_000
    seen: list[Progress] = []

    async def scenario(store: ContentStore) -> None:
        key = manifest.ref_key(layer)
        proxy = Proxy(registry.url, settings=ProxySettings(cut_after=cut))
        ref = f"{proxy.host}/library/busybox:latest"
        try:
            async with Registry(read_timeout=10) as client:
                with pytest.raises(
                    Unavailable, match=f"{re.escape(proxy.host)} broke off after {cut} of"
                ):
                    await client.fetch_blob(ref, layer, store)
                assert (await store.status(key)).offset == cut  # what arrived is kept
        finally:
            proxy.stop()

        async with Registry(connect_timeout=5) as client:  # nobody listens there now
            with pytest.raises(
                Unavailable, match=f"registry {re.escape(proxy.host)} cannot be reached"
            ):
                await client.fetch_blob(ref, layer, store)

        with Proxy(registry.url, port=proxy.port) as back:
            async with Registry() as client:
                await client.fetch_blob(ref, layer, store, progress=seen.append)
            (get,) = back.blob_gets()
        assert get.headers.get("Range") == f"bytes={cut}-"
        assert await read(store, layer.digest) == data

    run(tmp_path, scenario)
    assert seen[0] == Progress(layer, cut, 0)
    assert seen[-1] == Progress(layer, layer.size, layer.size - cut)


def test_content_already_in_the_store_is_not_downloaded(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, data = layer_of(busybox_image)
    shared: list[Progress] = []

    async def scenario(store: ContentStore) -> None:
        other_ns = ContentStore(store.db, store.backend, "other")
        with Proxy(registry.url) as proxy:
            async with Registry() as client:
                ref = f"{proxy.host}/library/busybox:latest"
                await client.fetch_blob(ref, layer, store)
                await client.fetch_blob(ref, layer, store)  # AlreadyExists in this namespace
                # on disk for another namespace: its writer reports the blob complete
                await client.fetch_blob(ref, layer, other_ns, progress=shared.append)
            assert len(proxy.blob_gets()) == 1
        assert await read(other_ns, layer.digest) == data

    run(tmp_path, scenario)
    assert shared == [Progress(layer, layer.size, 0)]


def test_bytes_that_do_not_match_the_descriptor_are_data_loss_and_not_kept(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, _ = layer_of(busybox_image)

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url, settings=ProxySettings(corrupt=True)) as proxy:
            ref = f"{proxy.host}/library/busybox:latest"
            async with Registry() as client:
                with pytest.raises(DataLoss, match="unexpected commit digest"):
                    await client.fetch_blob(ref, layer, store)
                assert await store.list_statuses() == []  # the next fetch starts afresh
                longer = Descriptor(layer.media_type, layer.digest, layer.size + 1)
                with pytest.raises(DataLoss, match="bytes offered"):
                    await client.fetch_blob(busybox_image.ref, longer, store)
        with pytest.raises(NotFound):
            await store.info(layer.digest)

    run(tmp_path, scenario)


# -- authentication ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_registry() -> Iterator[HtpasswdRegistry]:
    with HtpasswdRegistry() as running:
        running.push("private/busybox", "latest", images.busybox_image())
        yield running


def docker_config(tmp_path: Path, host: str, username: str, password: str) -> Path:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {f"http://{host}": {"auth": auth}}}))
    return path


def test_basic_auth_with_credentials_from_a_docker_config(
    tmp_path: Path, htpasswd_registry: HtpasswdRegistry
):
    ref = f"{htpasswd_registry.host}/private/busybox:latest"
    credentials = load_docker_config(
        docker_config(tmp_path, htpasswd_registry.host, USERNAME, PASSWORD)
    )

    async def scenario(store: ContentStore) -> None:
        async with Registry(credentials=credentials) as client:
            root = await client.resolve(ref)
            await pull_image(client, ref, root, store)
        assert await read(store, root.digest) == images.busybox_image().manifest

    run(tmp_path, scenario)


def test_basic_auth_without_or_with_wrong_credentials_is_permission_denied(
    tmp_path: Path, htpasswd_registry: HtpasswdRegistry
):
    ref = f"{htpasswd_registry.host}/private/busybox:latest"
    wrong = {htpasswd_registry.host: Credentials(USERNAME, "not-the-password")}

    async def scenario(store: ContentStore) -> None:
        async with Registry() as client:
            with pytest.raises(PermissionDenied, match="no credentials are configured"):
                await client.resolve(ref)
        async with Registry(credentials=wrong) as client:
            with pytest.raises(
                PermissionDenied,
                match=f"on {re.escape(htpasswd_registry.host)}: pull access denied",
            ):
                await client.resolve(ref)

    run(tmp_path, scenario)


def test_bearer_token_from_the_challenge_realm_is_fetched_once_per_scope(
    tmp_path: Path, registry: test_registry.Registry, busybox2_image: test_registry.PushedImage
):
    image = busybox2_image.image
    assert isinstance(image, images.Image)

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url, settings=ProxySettings(require_token=True)) as proxy:
            ref = f"{proxy.host}/library/busybox2:latest"
            async with Registry() as client:
                root = await client.resolve(ref)
                await pull_image(client, ref, root, store)
            settings = proxy.settings
            assert settings.token_requests == [
                {"service": [SERVICE], "scope": ["repository:library/busybox2:pull"]}
            ]
            blob_gets = proxy.blob_gets()
            assert len(blob_gets) == 3  # config and two layers, each with the token up front
            assert {get.headers.get("Authorization") for get in blob_gets} == {f"Bearer {TOKEN}"}
        for digest, data in image.content.items():
            assert await read(store, digest) == data

    run(tmp_path, scenario)


def test_token_server_gets_basic_credentials_and_refuses_wrong_ones(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    settings = ProxySettings(require_token=True, token_credentials=("tok-user", "tok-pass"))

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url, settings=settings) as proxy:
            ref = f"{proxy.host}/library/busybox:latest"
            good = {proxy.host: Credentials("tok-user", "tok-pass")}
            async with Registry(credentials=good) as client:
                assert (await client.resolve(ref)).digest == busybox_image.digest
            async with Registry(
                credentials={proxy.host: Credentials("tok-user", "nope")}
            ) as client:
                with pytest.raises(
                    PermissionDenied,
                    match=re.escape(
                        f"token server http://{proxy.host}/token refused the credentials"
                    ),
                ):
                    await client.resolve(ref)
            async with Registry() as client:
                with pytest.raises(PermissionDenied, match="refused anonymous access"):
                    await client.resolve(ref)

    run(tmp_path, scenario)


def test_an_identity_token_is_posted_as_an_oauth_refresh_token(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    """`docker login`'s identitytoken (the CRI's identity_token): POSTed to the realm as the
    refresh_token grant, as docker and containerd do; a wrong one is refused in words; a token
    server without the endpoint (404) is asked by GET instead."""
    settings = ProxySettings(require_token=True, refresh_token="refresh-me")

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url, settings=settings) as proxy:
            ref = f"{proxy.host}/library/busybox:latest"
            good = {proxy.host: Credentials(identity_token="refresh-me")}
            async with Registry(credentials=good) as client:
                assert (await client.resolve(ref)).digest == busybox_image.digest
            [form] = settings.oauth_posts
            assert form["grant_type"] == ["refresh_token"]
            assert form["refresh_token"] == ["refresh-me"]
            assert form["service"] == [SERVICE]
            assert form["scope"] == ["repository:library/busybox:pull"]
            assert form["client_id"] == ["ctrd"]
            assert settings.token_requests == []  # no GET was needed
            async with Registry(credentials={proxy.host: Credentials(identity_token="x")}) as c:
                with pytest.raises(PermissionDenied, match="refused anonymous access"):
                    await c.resolve(ref)  # refused by POST (401), then by GET
            settings.refresh_token = None  # a token server without the OAuth endpoint
            async with Registry(credentials=good) as client:
                assert (await client.resolve(ref)).digest == busybox_image.digest
            assert len(settings.token_requests) == 2  # the refused one, and this one's GET

    run(tmp_path, scenario)


def test_a_redirect_to_another_origin_does_not_carry_the_token(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    layer, data = layer_of(busybox_image)

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url) as cdn:
            settings = ProxySettings(require_token=True, redirect_blobs=f"http://{cdn.host}")
            with Proxy(registry.url, settings=settings) as proxy:
                async with Registry() as client:
                    ref = f"{proxy.host}/library/busybox:latest"
                    await client.fetch_blob(ref, layer, store)
                challenged, asked = proxy.blob_gets()  # the first one learns of the token
                assert "Authorization" not in challenged.headers
                assert asked.headers.get("Authorization") == f"Bearer {TOKEN}"
            (redirected,) = cdn.blob_gets()
            assert "Authorization" not in redirected.headers
        assert await read(store, layer.digest) == data

    run(tmp_path, scenario)


# -- mirrors -----------------------------------------------------------------------------------


def test_a_mirror_without_the_image_falls_back_to_the_upstream(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    image = busybox_image.image
    assert isinstance(image, images.Image)

    async def scenario(store: ContentStore) -> None:
        with test_registry.Registry() as empty, Proxy(empty.url) as mirror:
            # The first mirror is down; the second is up but has nothing.
            with Proxy(registry.url) as gone:
                gone_host = gone.host
            hosts = {registry.host: HostConfig(mirrors=(gone_host, mirror.host))}
            async with Registry(hosts=hosts, connect_timeout=5) as client:
                root = await client.resolve(busybox_image.ref)
                await pull_image(client, busybox_image.ref, root, store)
            asked = [(s.method, s.path) for s in mirror.settings.seen]
            assert ("HEAD", "/v2/library/busybox/manifests/latest") in asked
            assert {s.query for s in mirror.settings.seen} == {f"ns={registry.host}"}
        for digest, data in image.content.items():
            assert await read(store, digest) == data

    run(tmp_path, scenario)


def test_a_mirror_with_the_image_spares_the_upstream(
    tmp_path: Path, registry: test_registry.Registry, busybox_image: test_registry.PushedImage
):
    image = busybox_image.image
    assert isinstance(image, images.Image)

    async def scenario(store: ContentStore) -> None:
        with Proxy(registry.url) as upstream, test_registry.Registry() as other:
            other.push("library/busybox", "latest", image)
            hosts = {upstream.host: HostConfig(mirrors=(other.host,))}
            ref = f"{upstream.host}/library/busybox:latest"
            async with Registry(hosts=hosts) as client:
                root = await client.resolve(ref)
                await pull_image(client, ref, root, store)
            assert upstream.settings.seen == []
        assert await read(store, image.digest) == image.manifest

    run(tmp_path, scenario)
