"""The Containers service, driven by the real ctr and our stubs."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from supervisor.api.containerd.services.containers.v1 import containers_pb2 as pb
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def test_ctr_containers_create_ls_info_label_rm(ctrd, busybox_image):
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    ctrd.ctr("containers", "create", busybox_image.ref, "tapc1", "sleep", "10")
    rows = ctrd.ctr("containers", "ls").stdout.splitlines()[1:]
    assert [r.split() for r in rows] == [["tapc1", busybox_image.ref, "io.containerd.runc.v2"]]
    info = json.loads(ctrd.ctr("containers", "info", "tapc1").stdout)
    assert info["ID"] == "tapc1"
    assert info["Snapshotter"] == "overlayfs"
    assert info["SnapshotKey"] == "tapc1"
    assert info["Spec"]["process"]["args"] == ["sleep", "10"]
    snapshots = ctrd.ctr("snapshots", "ls").stdout
    assert "tapc1" in snapshots
    ctrd.ctr("containers", "label", "tapc1", "foo=bar")
    assert json.loads(ctrd.ctr("containers", "info", "tapc1").stdout)["Labels"]["foo"] == "bar"
    # The container holds its snapshot: a collection leaves it alone.
    ctrd.ctr("leases", "create", "--id", "flush")
    ctrd.ctr("leases", "rm", "--sync", "flush")
    assert "tapc1" in ctrd.ctr("snapshots", "ls").stdout
    ctrd.ctr("containers", "rm", "tapc1")
    assert ctrd.ctr("containers", "ls", "-q").stdout.strip() == ""
    assert "tapc1" not in ctrd.ctr("snapshots", "ls").stdout


def container(cid: str = "c1", **kwargs) -> pb.Container:
    spec = any_pb2.Any(type_url=SPEC_URL, value=b'{"ociVersion":"1.0.2"}')
    return pb.Container(
        id=cid, runtime=pb.Container.Runtime(name="io.containerd.runc.v2"), spec=spec, **kwargs
    )


@pytest.fixture
def stub(ctrd):
    return ctrd.stub(pb_grpc.ContainersStub)


def code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_create_get_update_delete_with_field_masks(stub, md):
    created = stub.Create(
        pb.CreateContainerRequest(
            container=container(
                labels={"a": "1"},
                image="img:1",
                extensions={"ext": any_pb2.Any(type_url="x/y", value=b"\x01")},
            )
        ),
        metadata=md(),
    ).container
    assert created.created_at.seconds > 0
    got = stub.Get(pb.GetContainerRequest(id="c1"), metadata=md()).container
    assert got.spec.value == b'{"ociVersion":"1.0.2"}'
    assert got.extensions["ext"].value == b"\x01"

    def update(c: pb.Container, paths: list[str]) -> pb.Container:
        return stub.Update(
            pb.UpdateContainerRequest(
                container=c, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=md(),
        ).container

    updated = update(container(labels={"b": "2"}), ["labels.b"])
    assert dict(updated.labels) == {"a": "1", "b": "2"}
    assert updated.image == "img:1"
    updated = update(container(image="img:2"), ["image"])
    assert updated.image == "img:2"
    assert code(lambda: update(container(), ["runtime"])) == grpc.StatusCode.INVALID_ARGUMENT
    other_runtime = container()
    other_runtime.runtime.name = "io.containerd.other"
    assert code(lambda: update(other_runtime, [])) == grpc.StatusCode.INVALID_ARGUMENT
    listed = stub.List(pb.ListContainersRequest(filters=["labels.b==2"]), metadata=md())
    assert [c.id for c in listed.containers] == ["c1"]
    streamed = stub.ListStream(pb.ListContainersRequest(filters=["image==nope"]), metadata=md())
    assert list(streamed) == []
    stub.Delete(pb.DeleteContainerRequest(id="c1"), metadata=md())
    assert code(lambda: stub.Get(pb.GetContainerRequest(id="c1"), metadata=md())) == (
        grpc.StatusCode.NOT_FOUND
    )


def test_bad_containers_are_refused(stub, md):
    def create(c: pb.Container):
        return lambda: stub.Create(pb.CreateContainerRequest(container=c), metadata=md())

    assert code(create(container(cid="bad id"))) == grpc.StatusCode.INVALID_ARGUMENT
    no_runtime = container()
    no_runtime.runtime.name = ""
    assert code(create(no_runtime)) == grpc.StatusCode.INVALID_ARGUMENT
    no_spec = container()
    no_spec.ClearField("spec")
    assert code(create(no_spec)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(create(container(snapshot_key="k"))) == grpc.StatusCode.INVALID_ARGUMENT
    stub.Create(pb.CreateContainerRequest(container=container()), metadata=md())
    assert code(create(container())) == grpc.StatusCode.ALREADY_EXISTS
    assert code(lambda: stub.Delete(pb.DeleteContainerRequest(id="zz"), metadata=md())) == (
        grpc.StatusCode.NOT_FOUND
    )


def test_a_namespace_with_containers_cannot_be_deleted(ctrd, stub, md):
    stub.Create(pb.CreateContainerRequest(container=container()), metadata=md("busy"))
    result = ctrd.ctr("namespaces", "rm", "busy", check=False)
    assert result.returncode == 1
    assert "containers" in result.stderr
