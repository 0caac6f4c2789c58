"""The CRI's grouping of image records by ID, and what names find an image."""

from __future__ import annotations

import asyncio
import json

import pytest

from supervisor.cri import images
from supervisor.cri.image_service import _image
from supervisor.errors import InvalidArgument, NotFound
from supervisor.metadata.images import Descriptor, Image

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TARGET = "sha256:" + "a" * 64
CONFIG = "sha256:" + "c" * 64
OTHER_CONFIG = "sha256:" + "c" * 63 + "d"


def content(config: str = CONFIG, user: str = "") -> images.Content:
    return images.Content(config, {"config": {"User": user}}, 1234, ("sha256:" + "1" * 64,))


def record(name: str, target: str = TARGET) -> Image:
    return Image(name, Descriptor(MANIFEST, target, 500))


def busybox() -> list[images.CriImage]:
    return images.group(
        [
            (record("docker.io/library/busybox:latest"), content()),
            (record(f"docker.io/library/busybox@{TARGET}"), content()),
            (record(CONFIG), content()),
            (record("docker.io/library/busybox:1.36"), content()),
        ]
    )


def test_records_of_one_config_are_one_image_with_its_tags_and_repo_digests():
    [image] = busybox()
    assert image.id == CONFIG
    assert image.repo_tags == ("docker.io/library/busybox:1.36", "docker.io/library/busybox:latest")
    assert image.repo_digests == (f"docker.io/library/busybox@{TARGET}",)
    assert len(image.names) == 4


def test_a_digest_only_pull_has_no_tags_and_that_digest():
    [image] = images.group([(record(f"gcr.io/x/y@{TARGET}"), content())])
    assert (image.repo_tags, image.repo_digests) == ((), (f"gcr.io/x/y@{TARGET}",))


def test_different_configs_are_different_images():
    found = images.group(
        [
            (record("docker.io/library/a:latest"), content()),
            (record("b.io/b:1"), content(OTHER_CONFIG)),
        ]
    )
    assert [i.id for i in found] == [CONFIG, OTHER_CONFIG]


@pytest.mark.parametrize(
    "name",
    [
        CONFIG,
        CONFIG.removeprefix("sha256:"),
        "c" * 12,
        "busybox",
        "busybox:1.36",
        "docker.io/library/busybox:latest",
        f"busybox@{TARGET}",
    ],
)
def test_an_image_is_found_by_id_prefix_tag_short_name_and_digest(name: str):
    assert images.lookup(busybox(), name).id == CONFIG


def test_an_ambiguous_id_prefix_is_invalid_and_an_unknown_name_not_found():
    two = images.group(
        [
            (record("docker.io/library/a:latest"), content()),
            (record("b.io/b:1"), content(OTHER_CONFIG)),
        ]
    )
    with pytest.raises(InvalidArgument, match="ambiguous"):
        images.lookup(two, "cccc")
    with pytest.raises(NotFound):
        images.lookup(two, "nginx")
    with pytest.raises(NotFound):
        images.lookup(two, "Not A Reference")


@pytest.mark.parametrize(
    ("user", "uid", "username"),
    [
        ("", None, ""),
        ("1002", 1002, ""),
        ("www-data", None, "www-data"),
        ("1003:1004", 1003, ""),
        ("www-data:1004", None, "www-data"),
    ],
)
def test_uid_or_username_from_the_config_user(user: str, uid: int | None, username: str):
    [image] = images.group([(record("docker.io/library/u:latest"), content(user=user))])
    assert image.user() == (uid, username)
    message = _image(image)
    assert message.HasField("uid") == (uid is not None)
    assert (message.uid.value, message.username) == (uid or 0, username)


def test_verbose_info_holds_the_chain_id_and_the_config():
    [image] = busybox()
    info = json.loads(images.verbose_info(image)["info"])
    assert info == {"chainID": "sha256:" + "1" * 64, "imageSpec": {"config": {"User": ""}}}


def test_content_is_read_through_an_index_to_the_platforms_config():
    from supervisor.distribution import platforms

    here = platforms.host()
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:" + "2" * 64]}}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": CONFIG,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + "3" * 64,
                    "size": 100,
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": "sha256:" + "4" * 64,
                    "size": len(manifest),
                    "platform": {"os": here.os, "architecture": here.architecture},
                },
            ],
        }
    ).encode()
    blobs = {TARGET: index, "sha256:" + "4" * 64: manifest, CONFIG: config}

    async def read(digest: str) -> bytes:
        return blobs[digest]

    target = Image(
        "x.io/y:1", Descriptor("application/vnd.oci.image.index.v1+json", TARGET, len(index))
    )
    found = asyncio.run(images.read_content(target, read))
    assert found.config_digest == CONFIG
    assert found.size == len(index) + len(manifest) + len(config) + 100
    assert found.chain_id == "sha256:" + "2" * 64
