"""Manifest and index documents: parsing, media type detection, and refusing bad ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from supervisor.distribution import manifest
from supervisor.distribution.manifest import Descriptor
from supervisor.distribution.platforms import Platform
from supervisor.errors import InvalidArgument, Unimplemented

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def doc(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_parse_manifest():
    data = doc(
        {
            "schemaVersion": 2,
            "mediaType": manifest.DOCKER_MANIFEST,
            "config": {"mediaType": manifest.DOCKER_CONFIG, "digest": D1, "size": 10},
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": D2,
                    "size": 20,
                    "urls": ["https://example.com/layer"],
                }
            ],
        }
    )

    parsed = manifest.parse_manifest(data, manifest.DOCKER_MANIFEST)

    assert parsed.config == Descriptor(manifest.DOCKER_CONFIG, D1, 10)
    assert parsed.layers[0].size == 20
    assert parsed.layers[0].urls == ("https://example.com/layer",)


def test_parse_index_with_platforms():
    data = doc(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": manifest.OCI_MANIFEST,
                    "digest": D1,
                    "size": 5,
                    "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
                    "annotations": {"a": "b"},
                }
            ],
        }
    )

    (entry,) = manifest.parse_index(data)

    assert entry.platform == Platform("linux", "arm", "v7")
    assert entry.annotations == {"a": "b"}
    assert Descriptor.from_json(entry.to_json()) == entry


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (doc({"layers": []}), "config: a descriptor must be an object"),
        (doc({"config": {"mediaType": "x", "digest": D1, "size": -1}, "layers": []}), "size"),
        (
            doc({"config": {"mediaType": "x", "digest": "sha256:zz", "size": 1}, "layers": []}),
            "digest",
        ),
        (doc({"config": {"digest": D1, "size": 1}, "layers": []}), "mediaType"),
        (doc({"config": {"mediaType": "x", "digest": D1, "size": True}, "layers": []}), "size"),
        (doc({"config": {"mediaType": "x", "digest": D1, "size": 1}}), "missing layers"),
        (doc({"mediaType": manifest.OCI_INDEX, "manifests": []}), "declares media type"),
        (b" " * (manifest.MANIFEST_LIMIT + 1), "larger than"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(data: bytes, says: str):
    with pytest.raises(InvalidArgument, match=says):
        manifest.parse_manifest(data, manifest.OCI_MANIFEST)


@pytest.mark.parametrize(
    ("data", "served_as", "expected"),
    [
        (doc({"mediaType": manifest.OCI_INDEX}), "application/json", manifest.OCI_INDEX),
        (doc({"manifests": []}), "", manifest.OCI_INDEX),
        (doc({"config": {}, "layers": []}), "text/plain", manifest.OCI_MANIFEST),
        (doc({"schemaVersion": 1}), "application/json", manifest.DOCKER_SCHEMA1),
        (b"{}", manifest.DOCKER_MANIFEST + "; charset=utf-8", manifest.DOCKER_MANIFEST),
    ],
)
def test_detect_media_type(data: bytes, served_as: str, expected: str):
    assert manifest.detect_media_type(data, served_as) == expected


def test_schema1_is_unimplemented_and_other_types_invalid():
    with pytest.raises(Unimplemented, match="schema 1"):
        manifest.check_supported(manifest.DOCKER_SCHEMA1_SIGNED, "busybox")
    with pytest.raises(InvalidArgument, match="unexpected media type"):
        manifest.check_supported("text/html", "busybox")
    manifest.check_supported(manifest.OCI_INDEX, "busybox")


@pytest.mark.parametrize(
    ("media_type", "key"),
    [
        (manifest.OCI_MANIFEST, "manifest-"),
        (manifest.DOCKER_MANIFEST_LIST, "index-"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "layer-"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "layer-"),
        (manifest.DOCKER_CONFIG, "config-"),
        ("application/octet-stream", "unknown-"),
    ],
)
def test_ref_keys_are_containerds(media_type: str, key: str):
    assert manifest.ref_key(Descriptor(media_type, D1, 1)) == key + D1
