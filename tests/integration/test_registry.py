"""The test registry: what we push to a real docker-registry comes back byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.support import images
from tests.support.registry import PushedImage, Registry

pytestmark = pytest.mark.integration


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_busybox_ref_names_the_registry_host_repo_and_tag(
    registry: Registry, busybox_image: PushedImage
):
    assert busybox_image.ref == f"127.0.0.1:{registry.port}/library/busybox:latest"
    assert busybox_image.digest == busybox_image.image.digest


def test_pushed_manifest_comes_back_with_its_digest_and_media_type(
    registry: Registry, busybox_image: PushedImage
):
    image = busybox_image.image
    assert isinstance(image, images.Image)

    for reference in ("latest", image.digest):
        resp = registry.request(
            "GET",
            f"/v2/library/busybox/manifests/{reference}",
            headers={"Accept": images.OCI_MANIFEST},
        )
        assert resp.status == 200
        assert resp.body == image.manifest
        assert resp.headers["docker-content-digest"] == image.digest
        assert resp.headers["content-type"] == images.OCI_MANIFEST


def test_every_pushed_blob_comes_back_with_its_digest(
    registry: Registry, busybox2_image: PushedImage
):
    image = busybox2_image.image
    assert isinstance(image, images.Image)
    assert len(image.blobs) == 3  # config and two layers

    for digest, data in image.blobs.items():
        resp = registry.request("GET", f"/v2/library/busybox2/blobs/{digest}")
        assert resp.status == 200
        assert sha(resp.body) == digest
        assert resp.body == data
        assert resp.headers["docker-content-digest"] == digest


def test_tags_list_shows_the_pushed_tag(registry: Registry, busybox_image: PushedImage):
    resp = registry.request("GET", "/v2/library/busybox/tags/list")

    assert resp.status == 200
    assert resp.json() == {"name": "library/busybox", "tags": ["latest"]}


def test_a_missing_manifest_is_404(registry: Registry, busybox_image: PushedImage):
    assert registry.request("GET", "/v2/library/busybox/manifests/nope").status == 404


def test_docker_schema2_image_is_served_as_docker_schema2(registry: Registry):
    image = images.busybox_image(schema="docker")
    pushed = registry.push("test/docker-schema2", "v1", image)

    resp = registry.request(
        "GET", "/v2/test/docker-schema2/manifests/v1", headers={"Accept": images.DOCKER_MANIFEST}
    )
    assert resp.headers["content-type"] == images.DOCKER_MANIFEST
    assert resp.body == image.manifest
    assert pushed.digest == image.digest


@pytest.mark.parametrize("schema", ["oci", "docker"])
def test_an_index_and_the_manifests_it_lists_are_all_served(
    registry: Registry, schema: images.Schema
):
    amd64 = images.busybox_image(schema=schema)
    arm64 = images.busybox_image(schema=schema, platform=images.Platform("arm64", variant="v8"))
    index = images.build_index([amd64, arm64])
    pushed = registry.push(f"test/index-{schema}", "multi", index)

    got = registry.request(
        "GET",
        f"/v2/test/index-{schema}/manifests/multi",
        headers={"Accept": index.descriptor.media_type},
    )
    assert got.body == index.index
    assert pushed.digest == got.headers["docker-content-digest"] == index.digest
    for image in (amd64, arm64):
        resp = registry.request(
            "GET",
            f"/v2/test/index-{schema}/manifests/{image.digest}",
            headers={"Accept": image.descriptor.media_type},
        )
        assert resp.body == image.manifest


def test_stop_ends_the_registry_process_and_removes_its_directory():
    registry = Registry()
    registry.start()
    assert registry.proc is not None
    pid, base = registry.proc.pid, registry.base

    registry.stop()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not base.exists()
