"""ctrctl's image commands as docker's: images, tag, rmi, image inspect, image prune."""

from __future__ import annotations

import json

from supervisor.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from tests.conftest import Ctrd, ns_metadata
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_tasks import pull


def image_names(ctrd: Ctrd) -> list[str]:
    return sorted(ctrd.ctr("images", "ls", "-q").stdout.split())


def test_images_tag_inspect_and_rmi(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    listed = ctrctl(ctrd, "images")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    repository, tag, image_id, *_ = row.split()
    assert (repository, tag) == (ref.rsplit(":", 1)[0], "latest")
    [info] = json.loads(ctrctl(ctrd, "image", "inspect", ref).stdout)
    assert info["name"] == ref
    assert info["target"]["digest"] == busybox_image.digest
    assert info["configDigest"].startswith("sha256:")
    assert image_id == info["configDigest"][7:19]
    assert info["platform"]["os"] == "linux"
    assert info["unpacked"] is True
    assert info["size"] > 0
    assert ctrctl(ctrd, "images", "-q").stdout.split() == [image_id]
    [as_json] = json.loads(ctrctl(ctrd, "images", "--format", "json").stdout)
    assert (as_json["name"], as_json["id"]) == (ref, info["configDigest"])

    # tag: normalized as docker's (a short name lands on docker.io/library).
    assert ctrctl(ctrd, "tag", image_id[:8], "mybox:v1").returncode == 0
    assert "docker.io/library/mybox:v1" in image_names(ctrd)
    assert ctrctl(ctrd, "image", "tag", ref, "other/box").returncode == 0
    assert "docker.io/other/box:latest" in image_names(ctrd)
    assert "mybox" in ctrctl(ctrd, "image", "ls").stdout  # familiar names, as docker shows

    # By ID, an image with several names must be forced.
    refused = ctrctl(ctrd, "rmi", image_id)
    assert refused.returncode == 125
    assert "referenced in multiple repositories" in refused.stderr
    untagged = ctrctl(ctrd, "rmi", "mybox:v1")
    assert untagged.stdout.splitlines() == ["Untagged: mybox:v1"], untagged.stderr

    # The last name of an image a container uses is refused unless -f; others only untag.
    ctrctl(ctrd, "create", "--name", "user", ref, "true")
    assert ctrctl(ctrd, "image", "rm", "other/box").returncode == 0
    used = ctrctl(ctrd, "rmi", ref)
    assert used.returncode == 125
    assert "container user is using its referenced image" in used.stderr
    forced = ctrctl(ctrd, "rmi", "-f", ref)
    assert forced.stdout.splitlines() == [
        f"Untagged: {ref}",
        f"Deleted: {busybox_image.digest}",
    ], forced.stderr
    assert image_names(ctrd) == []
    # sync: the garbage collector ran before rmi answered; the container's snapshot keeps
    # the layers' snapshots, the blobs are gone.
    assert ctrd.ctr("content", "ls", "-q").stdout.split() == []

    missing = ctrctl(ctrd, "rmi", "nothing-here")
    assert (missing.returncode, missing.stderr.strip()) == (
        125,
        "ctrctl: No such image: nothing-here",
    )
    assert ctrctl(ctrd, "rm", "user").returncode == 0


def test_image_prune_removes_dangling_then_unused(ctrd, busybox_image, busybox2_image):
    used_ref = pull(ctrd, busybox_image)
    other_ref = pull(ctrd, busybox2_image)
    ctrctl(ctrd, "create", "--name", "keeper", used_ref, "true")
    # A digest-only name (docker's <none> tag) for busybox2, then its tag goes: dangling.
    images = images_pb2_grpc.ImagesStub(ctrd.channel)
    tagged = images.Get(images_pb2.GetImageRequest(name=other_ref), metadata=ns_metadata()).image
    dangling_name = f"{other_ref.rsplit(':', 1)[0]}@{busybox2_image.digest}"
    images.Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(name=dangling_name, target=tagged.target)
        ),
        metadata=ns_metadata(),
    )
    assert ctrctl(ctrd, "rmi", other_ref).stdout.splitlines() == [f"Untagged: {other_ref}"]
    listed = ctrctl(ctrd, "images").stdout
    assert "<none>" in listed

    # Asked without -f: "no" keeps everything.
    declined = ctrctl(ctrd, "image", "prune", input="n\n")
    assert "Are you sure you want to continue? [y/N]" in declined.stdout
    assert dangling_name in image_names(ctrd)

    pruned = ctrctl(ctrd, "image", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    lines = pruned.stdout.splitlines()
    assert lines[:3] == [
        "Deleted Images:",
        f"untagged: {dangling_name}",
        f"deleted: {busybox2_image.digest}",
    ]
    assert lines[-1].startswith("Total reclaimed space: ")
    assert lines[-1] != "Total reclaimed space: 0B"
    assert image_names(ctrd) == [used_ref]

    # -a: only images no container uses; the one "keeper" uses stays.
    ctrctl(ctrd, "tag", used_ref, "spare:1")
    ctrctl(ctrd, "rm", "keeper")
    ctrctl(ctrd, "create", "--name", "keeper", "spare:1", "true")
    everything = ctrctl(ctrd, "image", "prune", "-a", "-f")
    assert everything.returncode == 0, everything.stderr
    # Both names share one target, which a container uses: nothing goes.
    assert image_names(ctrd) == sorted([used_ref, "docker.io/library/spare:1"])
    ctrctl(ctrd, "rm", "keeper")
    everything = ctrctl(ctrd, "image", "prune", "-a", "-f")
    assert f"untagged: {used_ref}" in everything.stdout
    assert image_names(ctrd) == []
