"""Content, images, leases and garbage collection, driven by the real ctr and our stubs."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from supervisor.api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from supervisor.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from supervisor.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from tests.support import images

pytestmark = pytest.mark.integration


def blob_on_disk(ctrd, digest: str) -> bool:
    return (ctrd.root / "content" / "blobs" / "sha256" / digest.split(":")[1]).exists()


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_digests(ctrd, ns: str = "default") -> set[str]:
    return set(ctrd.ctr("content", "ls", "-q", ns=ns).stdout.split())


def test_ctr_content_ingest_ls_get_label_rm(ctrd):
    data = os.urandom(3 << 20)
    digest = digest_of(data)
    ctrd.ctr(
        "content", "ingest", "--expected-size", str(len(data)), "--expected-digest", digest,
        "myref", input=data,
    )  # fmt: skip
    assert content_digests(ctrd) == {digest}
    got = ctrd.ctr("content", "get", digest).stdout.encode("latin-1")
    assert digest_of(got) == digest
    ctrd.ctr("content", "label", digest, "foo=bar", "baz=1")
    row = ctrd.ctr("content", "ls").stdout.splitlines()[1]
    assert set(row.split("\t")[3].split(",")) == {"baz=1", "foo=bar"}
    assert row.split("\t")[1] == "3.146MB"
    assert blob_on_disk(ctrd, digest)
    assert ctrd.ctr("content", "active").stdout.splitlines()[1:] == []
    ctrd.ctr("content", "rm", digest)
    assert content_digests(ctrd) == set()
    assert wait_for(lambda: not blob_on_disk(ctrd, digest)), "GC should remove the bytes"


def test_ingest_with_a_wrong_digest_fails_and_publishes_nothing(ctrd):
    data = os.urandom(1000)
    wrong = "sha256:" + "0" * 64
    result = ctrd.ctr(
        "content", "ingest", "--expected-digest", wrong, "badref",
        input=data, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"unexpected commit digest {digest_of(data)}, expected {wrong}" in result.stderr
    assert '"badref"' in result.stderr
    assert content_digests(ctrd) == set()
    assert not blob_on_disk(ctrd, digest_of(data))
    blobs = list((ctrd.root / "content" / "blobs" / "sha256").iterdir())
    assert blobs == []
    # The ingest is kept so the writer can resume, as containerd does.
    assert "badref" in ctrd.ctr("content", "active").stdout


def test_ctr_content_fetch_stores_everything_and_creates_the_image(ctrd, busybox2_image):
    image = busybox2_image.image
    ctrd.ctr("content", "fetch", "--plain-http", busybox2_image.ref)
    expected = {image.digest, image.config_descriptor.digest} | {
        layer.descriptor.digest for layer in image.layers
    }
    assert content_digests(ctrd) == expected
    for digest in expected:
        assert blob_on_disk(ctrd, digest)
    listed = ctrd.ctr("images", "ls").stdout
    assert busybox2_image.ref in listed
    assert image.digest in listed
    # A second namespace sees none of it, though the bytes on disk are shared.
    assert content_digests(ctrd, ns="other") == set()
    assert ctrd.ctr("images", "ls", "-q", ns="other").stdout.strip() == ""
    # The namespace holding them cannot be removed.
    result = ctrd.ctr("namespaces", "rm", "default", check=False)
    assert result.returncode != 0
    assert 'namespace "default" must be empty, but it still has images, blobs' in result.stderr


def test_ctr_images_tag_export_rm_and_import_no_unpack(ctrd, busybox2_image, short_tmp):
    ctrd.ctr("content", "fetch", "--plain-http", busybox2_image.ref)
    tagged = busybox2_image.ref.replace("busybox2:latest", "tagged:1")
    ctrd.ctr("images", "tag", busybox2_image.ref, tagged)
    names = set(ctrd.ctr("images", "ls", "-q").stdout.split())
    assert names == {busybox2_image.ref, tagged}
    archive = short_tmp / "export.tar"
    ctrd.ctr("images", "export", str(archive), busybox2_image.ref)
    blobs = busybox2_image.image.content
    assert archive.stat().st_size > sum(len(b) for b in blobs.values())
    ctrd.ctr("images", "rm", tagged)
    assert set(ctrd.ctr("images", "ls", "-q").stdout.split()) == {busybox2_image.ref}
    ctrd.ctr("images", "import", "--no-unpack", str(archive), ns="imported")
    assert ctrd.ctr("images", "ls", "-q", ns="imported").stdout.split() == [busybox2_image.ref]
    # ctr also stores the archive's own index.json as a blob, as it does with containerd.
    assert content_digests(ctrd, ns="imported") >= content_digests(ctrd)


def test_ctr_images_import_of_a_built_oci_archive(ctrd, short_tmp):
    image = images.busybox2_image()
    archive = images.oci_archive(image, short_tmp / "bb.tar", "docker.io/library/bb:1")
    ctrd.ctr("images", "import", "--no-unpack", str(archive))
    listed = ctrd.ctr("images", "ls").stdout
    assert "docker.io/library/bb:1" in listed
    assert image.digest in listed
    assert image.config_descriptor.digest in content_digests(ctrd)


def test_images_rm_sync_removes_the_blobs_only_that_image_held(ctrd, busybox_image, busybox2_image):
    ctrd.ctr("content", "fetch", "--plain-http", busybox_image.ref)
    ctrd.ctr("content", "fetch", "--plain-http", busybox2_image.ref)
    one, two = busybox_image.image, busybox2_image.image
    shared_layer = one.layers[0].descriptor.digest
    assert shared_layer == two.layers[0].descriptor.digest
    only_two = {two.digest, two.config_descriptor.digest, two.layers[1].descriptor.digest}
    assert all(blob_on_disk(ctrd, d) for d in only_two)
    ctrd.ctr("images", "rm", "--sync", busybox2_image.ref)
    # --sync: collected before ctr returns, no waiting here.
    assert [d for d in only_two if blob_on_disk(ctrd, d)] == []
    assert blob_on_disk(ctrd, shared_layer)
    assert blob_on_disk(ctrd, one.digest)
    assert content_digests(ctrd) == {one.digest, one.config_descriptor.digest, shared_layer}


def test_ctr_leases_create_ls_rm(ctrd):
    ctrd.ctr("leases", "create", "--id", "mylease", "a=b")
    out = ctrd.ctr("leases", "ls").stdout
    assert "mylease" in out
    assert "a=b" in out
    ctrd.ctr("leases", "rm", "mylease")
    assert "mylease" not in ctrd.ctr("leases", "ls").stdout
    result = ctrd.ctr("leases", "rm", "mylease", check=False)
    assert result.returncode == 1
    assert 'lease "mylease": not found' in result.stderr


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_errors_have_the_right_codes_and_name_the_object(ctrd, md):
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    bad = rpc_error(
        lambda: content.Info(content_pb2.InfoRequest(digest="sha256:zz"), metadata=md())
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256:zz" in bad.details()
    missing = "sha256:" + "a" * 64
    err = rpc_error(lambda: content.Info(content_pb2.InfoRequest(digest=missing), metadata=md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert missing in err.details()
    err = rpc_error(
        lambda: content.Delete(content_pb2.DeleteContentRequest(digest=missing), metadata=md())
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(lambda: content.Status(content_pb2.StatusRequest(ref="nope"), metadata=md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert '"nope"' in err.details()
    err = rpc_error(lambda: content.Abort(content_pb2.AbortRequest(ref="nope"), metadata=md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(
        lambda: list(content.Read(content_pb2.ReadContentRequest(digest=missing), metadata=md()))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND

    imgs = ctrd.stub(images_pb2_grpc.ImagesStub)
    err = rpc_error(lambda: imgs.Get(images_pb2.GetImageRequest(name="no/such:1"), metadata=md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert '"no/such:1"' in err.details()
    err = rpc_error(
        lambda: imgs.Create(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(name="x", target={"digest": "nodigest", "size": 1})
            ),
            metadata=md(),
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    leases = ctrd.stub(leases_pb2_grpc.LeasesStub)
    err = rpc_error(lambda: leases.Delete(leases_pb2.DeleteRequest(id="ghost"), metadata=md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(
        lambda: leases.AddResource(
            leases_pb2.AddResourceRequest(
                id="ghost", resource=leases_pb2.Resource(id=missing, type="content")
            ),
            metadata=md(),
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    leases.Create(leases_pb2.CreateRequest(id="real"), metadata=md())
    err = rpc_error(
        lambda: leases.AddResource(
            leases_pb2.AddResourceRequest(
                id="real", resource=leases_pb2.Resource(id="x", type="volumes")
            ),
            metadata=md(),
        )
    )
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_read_past_the_end_is_out_of_range(ctrd, md):
    data = b"hello, world"
    digest = digest_of(data)
    ctrd.ctr("content", "ingest", "small", input=data.decode())
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    chunks = content.Read(content_pb2.ReadContentRequest(digest=digest, offset=7), metadata=md())
    assert b"".join(c.data for c in chunks) == b"world"
    chunks = content.Read(
        content_pb2.ReadContentRequest(digest=digest, offset=0, size=5), metadata=md()
    )
    assert b"".join(c.data for c in chunks) == b"hello"
    err = rpc_error(
        lambda: list(
            content.Read(content_pb2.ReadContentRequest(digest=digest, offset=13), metadata=md())
        )
    )
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert digest in err.details()


def write_under_lease(ctrd, md, lease: str, data: bytes) -> str:
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    digest = digest_of(data)
    requests = [
        content_pb2.WriteContentRequest(action=content_pb2.STAT, ref="leased", total=len(data)),
        content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, offset=0, data=data, total=len(data), expected=digest
        ),
    ]
    list(content.Write(iter(requests), metadata=(*md(), ("containerd-lease", lease))))
    return digest


def test_a_lease_holds_content_until_it_is_deleted(ctrd, md):
    leases = ctrd.stub(leases_pb2_grpc.LeasesStub)
    leases.Create(leases_pb2.CreateRequest(id="hold"), metadata=md())
    digest = write_under_lease(ctrd, md, "hold", os.urandom(4096))
    resources = leases.ListResources(leases_pb2.ListResourcesRequest(id="hold"), metadata=md())
    assert [(r.type, r.id) for r in resources.resources] == [("content", digest)]
    ctrd.ctr("content", "rm", digest)  # gone from the namespace view ...
    assert digest not in content_digests(ctrd)
    leases.Delete(leases_pb2.DeleteRequest(id="hold", sync=True), metadata=md())
    assert not blob_on_disk(ctrd, digest)


def test_unreferenced_leased_content_survives_gc_until_the_lease_goes(ctrd, md):
    leases = ctrd.stub(leases_pb2_grpc.LeasesStub)
    leases.Create(leases_pb2.CreateRequest(id="keep"), metadata=md())
    digest = write_under_lease(ctrd, md, "keep", os.urandom(4096))
    other = ctrd.stub(leases_pb2_grpc.LeasesStub)
    other.Create(leases_pb2.CreateRequest(id="trigger"), metadata=md())
    other.Delete(leases_pb2.DeleteRequest(id="trigger", sync=True), metadata=md())  # a GC run
    assert blob_on_disk(ctrd, digest)
    assert digest in content_digests(ctrd)
    leases.Delete(leases_pb2.DeleteRequest(id="keep", sync=True), metadata=md())
    assert not blob_on_disk(ctrd, digest)
    assert digest not in content_digests(ctrd)


def test_the_gc_timer_frees_an_expired_lease_on_an_idle_daemon(make_ctrd, short_tmp, md):
    config = short_tmp / "gc.toml"
    config.write_text("[gc]\ninterval = 0.3\n")
    daemon = make_ctrd()
    daemon.extra_args = ("--config", str(config))
    daemon.start()
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    leases = daemon.stub(leases_pb2_grpc.LeasesStub)
    leases.Create(
        leases_pb2.CreateRequest(id="short", labels={"containerd.io/gc.expire": expire}),
        metadata=md(),
    )
    digest = write_under_lease(daemon, md, "short", os.urandom(4096))
    assert blob_on_disk(daemon, digest)
    # Nothing else happens on this daemon: only the timer can collect.
    assert wait_for(lambda: not blob_on_disk(daemon, digest), timeout=6)
    assert leases.List(leases_pb2.ListRequest(), metadata=md()).leases == []


def test_an_interrupted_ingest_resumes_after_a_restart(ctrd, md):
    data = os.urandom(3 << 20)
    digest = digest_of(data)
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    first = [
        content_pb2.WriteContentRequest(
            action=content_pb2.WRITE, ref="resume-me", total=len(data), expected=digest,
            offset=0, data=data[: 1 << 20],
        )
    ]  # fmt: skip
    list(content.Write(iter(first), metadata=md()))  # the stream ends: the ingest stays
    ctrd.restart()
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    status = content.Status(content_pb2.StatusRequest(ref="resume-me"), metadata=md()).status
    assert (status.offset, status.total) == (1 << 20, len(data))
    rest = [
        content_pb2.WriteContentRequest(action=content_pb2.STAT, ref="resume-me"),
        content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, offset=1 << 20, data=data[1 << 20 :],
            total=len(data), expected=digest,
        ),
    ]  # fmt: skip
    replies = list(content.Write(iter(rest), metadata=md()))
    assert replies[0].offset == 1 << 20
    assert replies[1].digest == digest
    assert replies[1].offset == len(data)
    assert digest_of(ctrd.ctr("content", "get", digest).stdout.encode("latin-1")) == digest


def test_a_large_upload_interrupted_past_the_page_cache_limit_resumes_whole(ctrd, md):
    # Past 64 MiB the daemon writes around the page cache in 8 MiB stages; an upload that
    # stops anywhere keeps every byte it sent, in order, for the next writer.
    data = os.urandom((75 << 20) + 12345)
    digest = digest_of(data)
    sent = (73 << 20) + 777  # 64 MiB cached, one 8 MiB stage written direct, a ragged tail
    chunk = 1 << 20

    def writes(start: int, end: int, action: int) -> list[content_pb2.WriteContentRequest]:
        return [
            content_pb2.WriteContentRequest(
                action=action, ref="big", total=len(data), expected=digest,
                offset=at, data=data[at : min(at + chunk, end)],
            )
            for at in range(start, end, chunk)
        ]  # fmt: skip

    content = ctrd.stub(content_pb2_grpc.ContentStub)
    list(content.Write(iter(writes(0, sent, content_pb2.WRITE)), metadata=md()))
    status = content.Status(content_pb2.StatusRequest(ref="big"), metadata=md()).status
    assert status.offset == sent
    ctrd.restart()
    content = ctrd.stub(content_pb2_grpc.ContentStub)
    rest = writes(sent, len(data), content_pb2.WRITE)
    rest[-1].action = content_pb2.COMMIT
    replies = list(content.Write(iter(rest), metadata=md()))
    assert (replies[-1].offset, replies[-1].digest) == (len(data), digest)
    got = ctrd.ctr("content", "get", digest, timeout=120).stdout.encode("latin-1")
    assert got == data


def test_blob_files_are_read_only_and_ingests_leave_no_partial_blob(ctrd, md):
    data = os.urandom(100_000)
    digest = digest_of(data)
    ctrd.ctr("content", "ingest", "ro", input=data)
    path: Path = ctrd.root / "content" / "blobs" / "sha256" / digest.split(":")[1]
    assert path.stat().st_mode & 0o777 == 0o444
    assert list((ctrd.root / "content" / "ingest").iterdir()) == []


def test_a_start_collects_what_a_crash_left_behind(ctrd):
    data = os.urandom(10_000)
    digest = digest_of(data)
    ctrd.ctr("content", "ingest", "kept", input=data)
    ctrd.ctr("content", "label", digest, "containerd.io/gc.root=yes")
    assert ctrd.stop(signal.SIGKILL) == -signal.SIGKILL
    # What a crash between the bytes and the records leaves: a blob no namespace knows, an
    # ingest no record names, a snapshot directory the snapshotter does not know.
    orphan = ctrd.root / "content" / "blobs" / "sha256" / ("e" * 64)
    orphan.write_bytes(b"orphan")
    ingest = ctrd.root / "content" / "ingest" / ("f" * 64)
    ingest.mkdir()
    (ingest / "ref").write_text("default/lost")
    (ingest / "data").write_bytes(b"partial")
    stray = ctrd.root / "snapshots" / "overlayfs" / "snapshots" / "9999"
    stray.mkdir(parents=True)
    ctrd.start()
    assert wait_for(lambda: not orphan.exists() and not ingest.exists() and not stray.exists())
    assert blob_on_disk(ctrd, digest)  # a rooted blob stays
