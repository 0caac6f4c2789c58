"""The pure parts of a push: the plan read from a content store, upload URLs, scopes, and the
distribution source labels that let a push mount instead of upload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import digests
from supervisor.content.protocol import Info
from supervisor.distribution import auth, manifest, platforms, sources
from supervisor.distribution.manifest import Descriptor
from supervisor.distribution.platforms import Platform
from supervisor.distribution.push import Blob, plan, upload_url
from supervisor.distribution.reference import parse
from supervisor.errors import NotFound, PermissionDenied, Unimplemented, Unknown

T = TypeVar("T")
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


class Store:
    """Content in memory, with labels: what `plan` reads."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.labels: dict[str, dict[str, str]] = {}

    def add(self, data: bytes, media_type: str, **labels: str) -> Descriptor:
        digest = digests.of(data)
        self.blobs[digest] = data
        self.labels[digest] = dict(labels)
        return Descriptor(media_type, digest, len(data))

    async def info(self, digest: str) -> Info:
        if digest not in self.blobs:
            raise NotFound(f"content digest {digest}")
        return Info(digest, len(self.blobs[digest]), 0, 0, self.labels[digest])

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        await self.info(digest)
        yield self.blobs[digest]

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        self.labels[info.digest].update(info.labels)
        return await self.info(info.digest)


def image(store: Store, name: str, layers: Sequence[bytes], platform: Platform) -> Descriptor:
    config = store.add(json.dumps({"name": name}).encode(), manifest.OCI_CONFIG)
    blobs = [store.add(data, LAYER) for data in layers]
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [b.to_json() for b in blobs],
        }
    ).encode()
    found = store.add(body, manifest.OCI_MANIFEST)
    return Descriptor(found.media_type, found.digest, found.size, platform)


def index(store: Store, children: Sequence[Descriptor]) -> Descriptor:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest.OCI_INDEX,
            "manifests": [child.to_json() for child in children],
        }
    ).encode()
    return store.add(body, manifest.OCI_INDEX)


AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def digests_of(items: Sequence[Any]) -> list[str]:
    return [item.descriptor.digest for item in items]


# -- the plan ----------------------------------------------------------------------------------


def test_a_manifest_sends_its_config_then_its_layers_then_itself():
    store = Store()
    root = image(store, "one", [b"base", b"top"], AMD64)
    planned = run(plan(store, root, None, "one"))
    parsed = manifest.parse_manifest(store.blobs[root.digest])
    assert digests_of(planned.blobs) == [d.digest for d in (parsed.config, *parsed.layers)]
    assert [kind.descriptor.media_type for kind in planned.blobs] == [
        manifest.OCI_CONFIG, LAYER, LAYER,
    ]  # fmt: skip
    assert digests_of(planned.manifests) == [root.digest]
    assert planned.manifests[0].body == store.blobs[root.digest]
    assert planned.root.digest == root.digest


def test_an_index_sends_each_shared_blob_once_and_its_manifests_before_itself():
    store = Store()
    amd = image(store, "amd", [b"base", b"amd"], AMD64)
    arm = image(store, "arm", [b"base", b"arm"], ARM64)
    root = index(store, [amd, arm])
    planned = run(plan(store, root, None, "multi"))
    assert digests_of(planned.manifests) == [amd.digest, arm.digest, root.digest]
    sent = digests_of(planned.blobs)
    assert len(sent) == len(set(sent)) == 5  # two configs, base once, amd, arm
    assert digests.of(b"base") in sent


def test_a_platform_picks_its_manifest_out_of_the_index():
    store = Store()
    amd = image(store, "amd", [b"amd"], AMD64)
    arm = image(store, "arm", [b"arm"], ARM64)
    root = index(store, [amd, arm])
    planned = run(plan(store, root, platforms.only(ARM64), "multi"))
    assert planned.root.digest == arm.digest
    assert digests_of(planned.manifests) == [arm.digest]
    assert digests.of(b"amd") not in digests_of(planned.blobs)


def test_an_index_missing_a_platform_is_refused_naming_it_and_what_to_do():
    store = Store()
    amd = image(store, "amd", [b"amd"], AMD64)
    arm = image(store, "arm", [b"arm"], ARM64)
    root = index(store, [amd, arm])
    del store.blobs[arm.digest]
    with pytest.raises(NotFound, match=r"not present locally \(linux/arm64\).*--platform") as e:
        run(plan(store, root, None, "multi"))
    assert "(here: linux/amd64)" in str(e.value)
    assert run(plan(store, root, platforms.only(AMD64), "multi")).root.digest == amd.digest
    with pytest.raises(NotFound, match=f"manifest for linux/arm64 \\({arm.digest}\\) is not pres"):
        run(plan(store, root, platforms.only(ARM64), "multi"))


def test_an_index_whose_manifest_lacks_a_layer_is_refused_too():
    store = Store()
    amd = image(store, "amd", [b"amd"], AMD64)
    root = index(store, [amd])
    del store.blobs[digests.of(b"amd")]
    with pytest.raises(NotFound, match=r"linux/amd64"):
        run(plan(store, root, None, "multi"))


def test_a_manifest_missing_a_layer_names_the_layer():
    store = Store()
    root = image(store, "one", [b"gone"], AMD64)
    del store.blobs[digests.of(b"gone")]
    with pytest.raises(NotFound, match=f"layer {digests.of(b'gone')} is not in the content"):
        run(plan(store, root, None, "one"))


def test_a_platform_not_in_the_index_is_not_found():
    store = Store()
    root = index(store, [image(store, "amd", [b"amd"], AMD64)])
    with pytest.raises(NotFound, match="no manifest for platform"):
        run(plan(store, root, platforms.only(Platform("linux", "s390x")), "multi"))


def test_a_schema1_image_is_not_pushed():
    store = Store()
    root = store.add(b'{"schemaVersion": 1}', manifest.DOCKER_SCHEMA1)
    with pytest.raises(Unimplemented, match="schema 1"):
        run(plan(store, root, None, "old"))


def test_the_plan_carries_each_blob_labels_for_mounts():
    store = Store()
    layer = store.add(b"layer", LAYER, **{"containerd.io/distribution.source.r": "a/b"})
    assert store.labels[layer.digest]
    config = store.add(b"{}", manifest.OCI_CONFIG)
    body = json.dumps(
        {"schemaVersion": 2, "config": config.to_json(), "layers": [layer.to_json()]}
    ).encode()
    root = store.add(body, manifest.OCI_MANIFEST)
    planned = run(plan(store, root, None, "x"))
    assert Blob(layer, {"containerd.io/distribution.source.r": "a/b"}) in planned.blobs


# -- uploads and scopes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            "http://r:5000/v2/a/blobs/uploads/u1?_state=x%3D",
            "http://r:5000/v2/a/blobs/uploads/u1?_state=x%3D&digest=sha256%3Aab",
        ),
        ("/v2/a/blobs/uploads/u1", "http://r:5000/v2/a/blobs/uploads/u1?digest=sha256%3Aab"),
        ("u1?s=1", "http://r:5000/v2/a/blobs/uploads/u1?s=1&digest=sha256%3Aab"),
        ("https://storage.example/up/1", "https://storage.example/up/1?digest=sha256%3Aab"),
    ],
)
def test_an_upload_goes_to_its_location_resolved_with_the_digest_added(location, expected):
    opened = "http://r:5000/v2/a/blobs/uploads/"
    assert upload_url(opened, location, "sha256:ab") == expected


def test_an_upload_without_a_location_is_an_error():
    with pytest.raises(Unknown, match="without a Location"):
        upload_url("http://r/v2/a/blobs/uploads/", "", "sha256:ab")


def test_an_upload_opened_over_https_never_continues_in_plain_http():
    opened = "https://registry.example/v2/a/blobs/uploads/"
    with pytest.raises(PermissionDenied, match=r"to http://other\.example, not over HTTPS"):
        upload_url(opened, "http://other.example/upload/1", "sha256:ab")
    with pytest.raises(PermissionDenied, match="not over HTTPS"):
        upload_url(opened, "http://registry.example/upload/1", "sha256:ab")
    assert upload_url(opened, "http://127.0.0.1:5000/u", "sha256:ab").startswith("http://127.")
    assert upload_url(opened, "https://cdn.example/u?x=1", "sha256:ab") == (
        "https://cdn.example/u?x=1&digest=sha256%3Aab"
    )


def test_scopes_on_one_repository_are_merged():
    assert auth.merge_scopes(
        [auth.pull_scope("a"), auth.push_scope("a"), auth.pull_scope("b"), "repository:a:push"]
    ) == ["repository:a:pull,push", "repository:b:pull"]
    assert auth.merge_scopes(["repository:a:pull"]) == ["repository:a:pull"]
    assert auth.merge_scopes(["odd"]) == ["odd"]


# -- distribution source labels ----------------------------------------------------------------


def test_the_label_names_the_host_without_its_port_as_containerd_does():
    assert sources.label_key("127.0.0.1:5000") == "containerd.io/distribution.source.127.0.0.1"
    assert sources.label_key("docker.io") == "containerd.io/distribution.source.docker.io"
    assert sources.label_key("[::1]:5000") == "containerd.io/distribution.source.::1"


def test_a_label_lists_repositories_sorted_once():
    ref = parse("127.0.0.1:5000/b/app:v1")
    key = "containerd.io/distribution.source.127.0.0.1"
    assert sources.label_for(ref, {}) == {key: "b/app"}
    assert sources.label_for(ref, {key: "c/x,a/y"}) == {key: "a/y,b/app,c/x"}
    assert sources.label_for(ref, {key: "a/y,b/app"}) == {}  # already there
    assert sources.label_for(ref, {key: "x" * 4090}) == {}  # would be too large


def test_a_mount_comes_from_another_repository_of_the_same_host():
    key = "containerd.io/distribution.source.127.0.0.1"
    labels: Mapping[str, str] = {key: "library/busybox,mine/app"}
    assert sources.mount_candidate(parse("127.0.0.1:5000/mine/app:v1"), labels) == (
        "library/busybox"
    )
    assert sources.mount_candidate(parse("127.0.0.1:5000/library/busybox"), labels) == "mine/app"
    assert sources.mount_candidate(parse("example.com/mine/other"), labels) == ""
    assert sources.mount_candidate(parse("127.0.0.1/x"), {key: "x"}) == ""


repositories = st.lists(st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)?", fullmatch=True), max_size=6)


@given(repositories, st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)?", fullmatch=True))
def test_appending_is_sorted_idempotent_and_keeps_every_repository(current, repository):
    value = sources.appended(",".join(current), repository)
    listed = value.split(",")
    assert listed == sorted(set(listed))
    assert set(listed) == {*current, repository}
    assert sources.appended(value, repository) == value
