"""Volumes (issue #16) through a real daemon: the real `ctr` asks for them with the
`ctrd.io/volumes` label (`supervisor.volumes.labels`), real runc mounts them, and the API
(`ctrd.services.volumes.v1`) creates, inspects and removes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2 as pb
from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2_grpc as pb_grpc
from supervisor.volumes import copyup
from tests.conftest import ns_metadata
from tests.integration.test_tasks import pull, run, wait_for
from tests.support import images
from tests.support.images import Dir, File, Hardlink, Symlink

MANY = 40  # files under /srv/many: a copy a test can cut off


def volumes(ctrd):
    return ctrd.stub(pb_grpc.VolumesStub)


def create(ctrd, name: str = "", ns: str = "default", **options: str) -> pb.Volume:
    request = pb.CreateVolumeRequest(name=name, driver_opts=options)
    return volumes(ctrd).Create(request, metadata=ns_metadata(ns)).volume


def label(*mounts: dict) -> str:
    return "ctrd.io/volumes=" + json.dumps(list(mounts))


def mounted_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [p for p in (line.split()[1] for line in f) if p.startswith(str(path))]


@pytest.fixture(scope="module")
def app_image(registry):
    """busybox and a layer with /srv/app (owners, modes, links) and /srv/many (MANY files)."""
    layer = [
        Dir("srv"),
        Dir("srv/app", 0o750, 1000, 1001),
        File("srv/app/conf", b"config\n", 0o640, 1000, 1001),
        File("srv/app/run.sh", b"#!/bin/sh\necho run\n", 0o4755),
        Dir("srv/app/private", 0o700, 33, 33),
        File("srv/app/private/key", b"secret", 0o600, 33, 33),
        Symlink("srv/app/link", "conf"),
        Symlink("srv/app/abs", "/etc/passwd"),
        Symlink("srv/app/up", "../../../../../../.."),
        File("srv/app/data", b"linked\n"),  # 0:0 0644: what a hard link's header says too
        Hardlink("srv/app/data2", "srv/app/data"),
        Dir("srv/many"),
        *(File(f"srv/many/f{i:03}", f"{i}\n".encode()) for i in range(MANY)),
    ]
    image = images.build_image([images.busybox_layer(), layer])
    return registry.push("library/volapp", "latest", image)


def test_named_volume_keeps_data_across_containers_and_a_sigkill_and_is_not_removed_in_use(
    ctrd, busybox_image
):
    ref = pull(ctrd, busybox_image)
    made = create(ctrd, "data")
    assert made.mountpoint == str(ctrd.root / "volumes" / "default" / "data" / "_data")
    assert (made.driver, made.scope) == ("local", "local")
    data = label({"name": "data", "target": "/data"})
    run(ctrd, "--rm", "--label", data, ref, "w1", "sh", "-c", "echo kept > /data/f")
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    # read back from a new container that also asks for a network: both plumbings apply
    read = run(ctrd, "--rm", "--label", data, "--label", "ctrd.io/networks=bridge", ref, "r1",
               "sh", "-c", "cat /data/f; busybox ip -4 -o addr show eth0")  # fmt: skip
    assert read.stdout.splitlines()[0] == "kept"
    assert " eth0 " in read.stdout.splitlines()[1]

    ctrd.stop(signal.SIGKILL)
    ctrd.start()
    assert run(ctrd, "--rm", "--label", data, ref, "r2", "cat", "/data/f").stdout == "kept\n"
    readonly = label({"name": "data", "target": "/data", "readonly": True})
    denied = run(ctrd, "--rm", "--label", readonly, ref, "ro", "sh", "-c",
                 "echo no > /data/f", check=False)  # fmt: skip
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr + denied.stdout
    assert (Path(made.mountpoint) / "f").read_text() == "kept\n"

    # in use while a container names it, running or not; -f does not override that
    ctrd.ctr("containers", "create", "--label", data, ref, "holder", "true")
    for force in (False, True):
        with pytest.raises(grpc.RpcError) as refused:
            volumes(ctrd).Remove(
                pb.RemoveVolumeRequest(name="data", force=force), metadata=ns_metadata()
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "remove data: volume is in use - [holder]"
    got = volumes(ctrd).Get(pb.GetVolumeRequest(name="data"), metadata=ns_metadata()).volume
    assert list(got.containers) == ["holder"]
    assert got.usage.ref_count == 1

    ctrd.ctr("containers", "rm", "holder")
    volumes(ctrd).Remove(pb.RemoveVolumeRequest(name="data"), metadata=ns_metadata())
    assert not Path(made.mountpoint).exists()
    with pytest.raises(grpc.RpcError) as missing:
        volumes(ctrd).Remove(pb.RemoveVolumeRequest(name="data"), metadata=ns_metadata())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "get data: no such volume"
    volumes(ctrd).Remove(pb.RemoveVolumeRequest(name="data", force=True), metadata=ns_metadata())


def test_a_container_naming_a_missing_volume_is_not_created(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    failed = run(ctrd, "--rm", "--label", label({"name": "nope", "target": "/d"}), ref, "m1",
                 "true", check=False)  # fmt: skip
    assert failed.returncode != 0
    assert 'volume "nope" (label ctrd.io/volumes of container "m1"): not found' in failed.stderr
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []


def test_copy_up_keeps_owners_modes_and_links_and_happens_once(ctrd, app_image):
    ref = pull(ctrd, app_image)
    app = Path(create(ctrd, "app").mountpoint)
    empty = Path(create(ctrd, "empty").mountpoint)
    mounts = label({"name": "app", "target": "/srv/app"},
                   {"name": "empty", "target": "/srv/many", "nocopy": True})  # fmt: skip
    out = run(ctrd, "--rm", "--label", mounts, ref, "c1", "sh", "-c",
              "cat /srv/app/conf; ls /srv/many | wc -l").stdout  # fmt: skip
    assert out.split() == ["config", "0"]
    assert os.listdir(empty) == []

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = os.lstat(path)
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    assert owner_mode(app) == (1000, 1001, 0o750)
    assert owner_mode(app / "conf") == (1000, 1001, 0o640)
    assert owner_mode(app / "run.sh") == (0, 0, 0o4755)
    assert owner_mode(app / "private") == (33, 33, 0o700)
    assert owner_mode(app / "private" / "key") == (33, 33, 0o600)
    assert (app / "private" / "key").read_bytes() == b"secret"
    assert os.readlink(app / "link") == "conf"
    assert os.readlink(app / "abs") == "/etc/passwd"
    assert os.readlink(app / "up") == "../../../../../../.."
    assert os.lstat(app / "data2").st_ino == os.lstat(app / "data").st_ino
    assert (app.parent / copyup.DONE).exists()

    # emptied by a container, it is not filled again: it has been copied into once
    run(ctrd, "--rm", "--label", mounts, ref, "c2", "sh", "-c", "rm -rf /srv/app/* /srv/app/.??*")
    out = run(ctrd, "--rm", "--label", mounts, ref, "c3", "ls", "-a", "/srv/app").stdout
    assert out.split() == [".", ".."]


def test_a_copy_up_cut_off_by_a_crash_is_discarded_and_done_again(ctrd, app_image, monkeypatch):
    ref = pull(ctrd, app_image)
    many = Path(create(ctrd, "many").mountpoint)
    mounts = label({"name": "many", "target": "/srv/many"})
    ctrd.stop()
    monkeypatch.setenv(copyup.PAUSE_ENV, "0.1")  # the daemon sleeps after each entry
    ctrd.start()
    client = subprocess.Popen(
        ["ctr", "-a", ctrd.address, "run", "--fifo-dir", ctrd.fifo_dir(), "--label", mounts,
         ref, "cut", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: len(os.listdir(many)) >= 3)
        assert (many.parent / copyup.PENDING).exists()
        ctrd.stop(signal.SIGKILL)
    finally:
        client.kill()
        client.wait()
    assert 3 <= len(os.listdir(many)) < MANY
    monkeypatch.delenv(copyup.PAUSE_ENV)
    ctrd.start()
    assert os.listdir(many) == []  # never taken as complete
    assert not (many.parent / copyup.PENDING).exists()
    assert not (many.parent / copyup.DONE).exists()
    assert mounted_under(ctrd.root / "volumes") == []  # the rootfs mounted for the copy too
    ctrd.ctr("containers", "rm", "cut")
    out = run(ctrd, "--rm", "--label", mounts, ref, "again", "sh", "-c", "ls /srv/many | wc -l")
    assert out.stdout.split() == [str(MANY)]
    assert len(os.listdir(many)) == MANY


def test_tmpfs_volume_has_its_size_and_is_mounted_only_while_a_task_uses_it(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    made = create(ctrd, "scratch", type="tmpfs", device="tmpfs", o="size=1m")
    data = Path(made.mountpoint)
    assert not made.mounted
    mounts = label({"name": "scratch", "target": "/scratch"})
    run(ctrd, "-d", "--label", mounts, ref, "t1", "sleep", "1000")
    assert mounted_under(data) == [str(data)]
    got = volumes(ctrd).Get(pb.GetVolumeRequest(name="scratch"), metadata=ns_metadata()).volume
    assert got.mounted
    fs = os.statvfs(data)
    assert fs.f_blocks * fs.f_frsize == 1 << 20
    full = ctrd.ctr("tasks", "exec", "--exec-id", "dd", "t1", "sh", "-c",
                    "head -c 2000000 /dev/zero > /scratch/big", check=False)  # fmt: skip
    assert full.returncode != 0  # no room beyond 1 MiB

    ctrd.stop(signal.SIGKILL)  # a restart keeps the mount the running task uses
    ctrd.start()
    assert mounted_under(data) == [str(data)]
    ctrd.ctr("tasks", "kill", "-s", "KILL", "t1")
    wait_for(lambda: ctrd.ctr("tasks", "delete", "t1", check=False).returncode == 0)
    assert mounted_under(data) == []
    ctrd.ctr("containers", "rm", "t1")

    # mounted again at the next use; the daemon's stop leaves nothing mounted
    run(ctrd, "--rm", "--label", mounts, ref, "t2", "true")
    assert mounted_under(ctrd.root / "volumes") == []

    with pytest.raises(grpc.RpcError) as bad:
        create(ctrd, "bad", type="tmpfs", device="tmpfs", o="size=lots")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "create bad: invalid size: 'lots'"


def test_namespace_with_volumes_is_not_deleted_and_gc_leaves_volumes(ctrd, busybox_image):
    made = create(ctrd, "kept", ns="volns")
    (Path(made.mountpoint) / "f").write_text("mine")
    refused = ctrd.ctr("namespaces", "rm", "volns", check=False)
    assert refused.returncode != 0
    assert 'namespace "volns" must be empty, but it still has volumes' in refused.stderr

    ref = pull(ctrd, busybox_image)
    ctrd.ctr("images", "rm", "--sync", ref)  # a whole collection, every namespace's
    assert ctrd.ctr("snapshots", "ls").stdout.splitlines()[1:] == []  # it did collect
    got = volumes(ctrd).Get(pb.GetVolumeRequest(name="kept"), metadata=ns_metadata("volns"))
    assert (Path(got.volume.mountpoint) / "f").read_text() == "mine"

    volumes(ctrd).Remove(pb.RemoveVolumeRequest(name="kept"), metadata=ns_metadata("volns"))
    ctrd.ctr("namespaces", "rm", "volns")


def test_a_bind_volume_writes_to_the_host_directory_and_its_removal_keeps_it(
    ctrd, busybox_image, short_tmp
):
    ref = pull(ctrd, busybox_image)
    host = short_tmp / "hostdir"
    host.mkdir()
    (host / "before").write_text("host\n")
    made = create(ctrd, "hostbind", type="none", device=str(host), o="bind")
    mounts = label({"name": "hostbind", "target": "/data"})
    out = run(ctrd, "--rm", "--label", mounts, ref, "b1", "sh", "-c",
              "cat /data/before; echo from-container > /data/after").stdout  # fmt: skip
    assert out == "host\n"  # not empty: no copy-up over the host's files
    assert (host / "after").read_text() == "from-container\n"
    assert mounted_under(Path(made.mountpoint)) == []  # unmounted with its last task
    volumes(ctrd).Remove(pb.RemoveVolumeRequest(name="hostbind"), metadata=ns_metadata())
    assert sorted(os.listdir(host)) == ["after", "before"]
