"""The offline image builder: exact tar contents, determinism, and self-consistent content."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support import images
from tests.support.images import (
    CharDevice,
    Dir,
    Entry,
    File,
    Hardlink,
    Opaque,
    Symlink,
    Whiteout,
)


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {info.name: info for info in archive.getmembers()}


def read(tar: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = archive.extractfile(name)
        assert member is not None, name
        return member.read()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


EVERY_KIND: list[Entry] = [
    Hardlink("usr/again", "usr/file"),
    File("usr/file", b"hello\n", 0o640, 1000, 1001),
    Dir("usr", 0o750, 2, 3),
    Symlink("usr/link", "../etc/target"),
    Whiteout("/etc/gone"),
    Opaque("var/cache"),
    CharDevice("dev/null", 1, 3),
]


def test_layer_tar_writes_every_entry_kind_with_its_metadata():
    got = members(images.layer_tar(EVERY_KIND))

    assert got["usr/file"].isreg()
    assert (got["usr/file"].mode, got["usr/file"].uid, got["usr/file"].gid) == (0o640, 1000, 1001)
    assert got["usr"].isdir()
    assert (got["usr"].mode, got["usr"].uid, got["usr"].gid) == (0o750, 2, 3)
    assert got["usr/link"].issym()
    assert got["usr/link"].linkname == "../etc/target"
    assert got["usr/again"].islnk()
    assert got["usr/again"].linkname == "usr/file"
    assert got["etc/.wh.gone"].isreg()
    assert got["etc/.wh.gone"].size == 0
    assert got["var/cache/.wh..wh..opq"].size == 0
    assert got["dev/null"].ischr()
    assert (got["dev/null"].devmajor, got["dev/null"].devminor) == (1, 3)
    assert read(images.layer_tar(EVERY_KIND), "usr/file") == b"hello\n"


def test_layer_tar_has_fixed_mtimes_and_no_user_or_group_names():
    for info in members(images.layer_tar(EVERY_KIND)).values():
        assert info.mtime == images.EPOCH
        assert (info.uname, info.gname) == ("", "")


def test_layer_tar_puts_parents_before_children_and_hard_links_last():
    names = list(members(images.layer_tar(EVERY_KIND)))

    assert names == [
        "dev/null",
        "etc/.wh.gone",
        "usr",
        "usr/file",
        "usr/link",
        "var/cache/.wh..wh..opq",
        "usr/again",
    ]


def test_layer_tar_does_not_depend_on_the_order_entries_are_given():
    assert images.layer_tar(EVERY_KIND) == images.layer_tar(reversed(EVERY_KIND))


@pytest.mark.parametrize("path", ["", "/", ".", "a/../../b", "../x"])
def test_layer_tar_refuses_paths_outside_the_root(path: str):
    with pytest.raises(ValueError, match="bad layer path"):
        images.layer_tar([File(path)])


def test_layer_tar_refuses_a_path_given_twice():
    with pytest.raises(ValueError, match="duplicate"):
        images.layer_tar([File("a"), Dir("/a")])


def test_gzip_layers_carry_no_timestamp_and_decompress_to_the_tar():
    layer = images.make_layer([File("a", b"x")])

    assert layer.data[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert gzip.decompress(layer.data) == layer.tar
    assert layer.descriptor.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_diff_id_is_the_sha256_of_the_uncompressed_tar():
    for compression in ("gzip", "none"):
        layer = images.make_layer([File("a", b"x")], compression=compression)
        assert layer.diff_id == sha(layer.tar)
        assert layer.descriptor.digest == sha(layer.data)
        assert layer.descriptor.size == len(layer.data)
    assert layer.data == layer.tar  # "none": the blob is the tar itself


def test_zstd_is_used_when_zstandard_is_importable_and_refused_otherwise():
    if images.zstd_available():
        layer = images.make_layer([File("a")], compression="zstd")
        assert layer.data.startswith(b"\x28\xb5\x2f\xfd")
        assert layer.descriptor.media_type.endswith("+zstd")
    else:
        with pytest.raises(RuntimeError, match="zstandard"):
            images.make_layer([File("a")], compression="zstd")


@pytest.mark.parametrize("schema", ["oci", "docker"])
def test_building_twice_gives_the_same_digests(schema: images.Schema):
    images.busybox_layer.cache_clear()
    first = images.busybox2_image(schema=schema)
    images.busybox_layer.cache_clear()
    second = images.busybox2_image(schema=schema)

    assert first.digest == second.digest
    assert first.content == second.content


def test_busybox_layer_has_the_applets_users_motd_and_directories():
    tar = images.busybox_layer().tar
    got = members(tar)

    assert read(tar, "bin/busybox") == images.BUSYBOX.read_bytes()
    assert got["bin/busybox"].mode == 0o755
    for applet in ("sh", "echo", "cat", "sleep", "seq", "id", "top", "hostname", "yes", "stat"):
        assert got[f"bin/{applet}"].issym()
        assert got[f"bin/{applet}"].linkname == "busybox"
    assert b"app:x:1000:1000:" in read(tar, "etc/passwd")
    assert b"nobody:x:65534:65534:" in read(tar, "etc/passwd")
    assert b"app:x:1000:" in read(tar, "etc/group")
    assert read(tar, "etc/motd") == images.MOTD
    assert got["tmp"].mode == 0o1777
    assert (got["home/app"].uid, got["home/app"].gid) == (1000, 1000)
    assert got["root"].isdir()


def test_busybox2_second_layer_adds_extra_and_whites_out_motd():
    image = images.busybox2_image()

    assert len(image.layers) == 2
    assert image.layers[0] == images.busybox_layer()
    second = image.layers[1].tar
    assert set(members(second)) == {"etc", "etc/extra", "etc/.wh.motd"}
    assert read(second, "etc/extra") == images.EXTRA


@pytest.mark.parametrize("schema", ["oci", "docker"])
def test_config_names_the_platform_command_and_every_diff_id_in_order(schema: images.Schema):
    image = images.busybox2_image(schema=schema)
    config = image.config_json()

    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"] == [images.PATH_ENV]
    assert config["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert image.diff_ids == [sha(layer.tar) for layer in image.layers]
    assert len(config["history"]) == len(image.layers)


def test_config_settings_can_be_added():
    image = images.build_image([[File("a")]], config={"User": "app", "Cmd": ["id"]})

    assert image.config_json()["config"]["User"] == "app"
    assert image.config_json()["config"]["Cmd"] == ["id"]


@pytest.mark.parametrize(
    ("schema", "manifest_type", "config_type", "layer_type"),
    [
        ("oci", images.OCI_MANIFEST, images.OCI_CONFIG, images.LAYER_TYPES["oci", "gzip"]),
        (
            "docker",
            images.DOCKER_MANIFEST,
            images.DOCKER_CONFIG,
            images.LAYER_TYPES["docker", "gzip"],
        ),
    ],
)
def test_manifest_names_every_blob_with_its_size_and_media_type(
    schema: images.Schema, manifest_type: str, config_type: str, layer_type: str
):
    image = images.busybox2_image(schema=schema)
    manifest = image.manifest_json()

    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == image.descriptor.media_type == manifest_type
    assert manifest["config"] == {
        "mediaType": config_type,
        "digest": sha(image.config),
        "size": len(image.config),
    }
    assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type] * 2
    named = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
    assert named == {digest: len(data) for digest, data in image.blobs.items()}
    assert all(sha(data) == digest for digest, data in image.content.items())
    assert image.digest == sha(image.manifest)


def test_many_layers_stacks_n_distinct_layers_on_busybox():
    image = images.many_layers(5)

    assert len(image.layers) == 5
    assert len(set(image.diff_ids)) == 5
    assert read(image.layers[4].tar, "layers/0004") == b"0004\n"
    assert len(image.manifest_json()["layers"]) == 5


@pytest.mark.parametrize(
    ("schema", "media_type"),
    [("oci", images.OCI_INDEX), ("docker", images.DOCKER_MANIFEST_LIST)],
)
def test_index_lists_each_manifest_with_its_platform(schema: images.Schema, media_type: str):
    amd64 = images.busybox_image(schema=schema)
    arm64 = images.busybox_image(schema=schema, platform=images.Platform("arm64", variant="v8"))
    index = images.build_index([amd64, arm64])
    listed = index.index_json()["manifests"]

    assert index.index_json()["mediaType"] == index.descriptor.media_type == media_type
    assert [m["digest"] for m in listed] == [amd64.digest, arm64.digest]
    assert [m["size"] for m in listed] == [len(amd64.manifest), len(arm64.manifest)]
    assert listed[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert arm64.config_json()["variant"] == "v8"
    assert index.digest == sha(index.index)
    assert {amd64.digest, arm64.digest, index.digest} <= set(index.content)


def test_oci_archive_has_the_layout_ctr_import_reads(tmp_path: Path):
    image = images.busybox2_image()
    path = images.oci_archive(image, tmp_path / "busybox.tar", "docker.io/library/busybox:1")
    tar = path.read_bytes()
    got = members(tar)

    assert json.loads(read(tar, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(read(tar, "index.json"))
    assert index["schemaVersion"] == 2
    [top] = index["manifests"]
    assert top["digest"] == image.digest
    assert top["mediaType"] == images.OCI_MANIFEST
    assert top["size"] == len(image.manifest)
    assert top["annotations"] == {
        "io.containerd.image.name": "docker.io/library/busybox:1",
        "org.opencontainers.image.ref.name": "1",
    }
    assert {"blobs", "blobs/sha256"} <= {name for name, info in got.items() if info.isdir()}
    blobs = {n.removeprefix("blobs/sha256/"): n for n in got if n.startswith("blobs/sha256/")}
    assert set(blobs) == {digest.removeprefix("sha256:") for digest in image.content}
    for digest, data in image.content.items():
        assert read(tar, blobs[digest.removeprefix("sha256:")]) == data


def test_oci_archive_with_a_bare_tag_names_it_only_in_the_oci_annotation(tmp_path: Path):
    path = images.oci_archive(images.busybox_image(), tmp_path / "a.tar", "latest")
    [top] = json.loads(read(path.read_bytes(), "index.json"))["manifests"]

    assert top["annotations"] == {"org.opencontainers.image.ref.name": "latest"}


def test_oci_archive_of_an_index_holds_the_index_and_all_its_images(tmp_path: Path):
    index = images.build_index(
        [images.busybox_image(), images.busybox_image(platform=images.Platform("arm64"))]
    )
    tar = images.oci_archive(index, tmp_path / "multi.tar", "multi:1").read_bytes()
    [top] = json.loads(read(tar, "index.json"))["manifests"]

    assert (top["digest"], top["mediaType"]) == (index.digest, images.OCI_INDEX)
    names = {name for name in members(tar) if name.startswith("blobs/sha256/")}
    assert names == {"blobs/" + digest.replace(":", "/") for digest in index.content}


def test_oci_layout_directory_holds_the_same_files_as_the_archive(tmp_path: Path):
    image = images.busybox_image()
    images.write_oci_layout(image, tmp_path / "layout", "latest")
    tar = images.oci_archive(image, tmp_path / "a.tar", "latest").read_bytes()

    on_disk = {
        str(p.relative_to(tmp_path / "layout")): p.read_bytes()
        for p in (tmp_path / "layout").rglob("*")
        if p.is_file()
    }
    in_tar = {name: read(tar, name) for name, info in members(tar).items() if info.isreg()}
    assert on_disk == in_tar


def test_docker_archive_is_in_docker_save_format(tmp_path: Path):
    image = images.busybox2_image()
    tar = images.docker_archive(image, tmp_path / "d.tar", "busybox2:latest").read_bytes()

    [entry] = json.loads(read(tar, "manifest.json"))
    assert entry["RepoTags"] == ["busybox2:latest"]
    assert read(tar, entry["Config"]) == image.config
    assert entry["Config"] == image.config_descriptor.digest.removeprefix("sha256:") + ".json"
    assert [read(tar, name) for name in entry["Layers"]] == [lay.tar for lay in image.layers]
