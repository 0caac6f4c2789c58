"""The Namespaces service, driven by the real ctr and by our stubs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as pb
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


def ls(ctrd) -> dict[str, str]:
    rows = ctrd.ctr("namespaces", "ls").stdout.splitlines()[1:]
    return {r.split()[0]: ([*r.split(), ""])[1] for r in rows}


def test_ctr_namespaces_create_ls_label_rm(ctrd):
    ctrd.ctr("namespaces", "create", "tapx", "foo=bar")
    assert ls(ctrd) == {"tapx": "foo=bar"}
    ctrd.ctr("namespaces", "label", "tapx", "foo=baz", "other=1")
    assert ls(ctrd) == {"tapx": "foo=baz,other=1"}
    ctrd.ctr("namespaces", "label", "tapx", "foo=")  # an empty value removes the label
    assert ls(ctrd) == {"tapx": "other=1"}
    assert ctrd.ctr("namespaces", "rm", "tapx").stdout.strip() == "tapx"
    assert ls(ctrd) == {}


def test_ctr_rejects_an_invalid_namespace_name(ctrd):
    result = ctrd.ctr("namespaces", "create", "Bad!", check=False)
    assert result.returncode == 1
    assert 'identifier "Bad!" must match' in result.stderr
    assert "invalid argument" in result.stderr
    assert ls(ctrd) == {}


def test_namespaces_survive_a_restart(ctrd):
    ctrd.ctr("namespaces", "create", "kept", "a=b")
    ctrd.restart()
    assert ls(ctrd) == {"kept": "a=b"}


@pytest.fixture
def stub(ctrd):
    return ctrd.stub(pb_grpc.NamespacesStub)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_get_of_a_namespace_never_written_is_ok_with_no_labels_and_creates_nothing(stub):
    # containerd answers so (its clients, dockerd first, ask before they write anything).
    got = stub.Get(pb.GetNamespaceRequest(name="nothere")).namespace
    assert (got.name, dict(got.labels)) == ("nothere", {})
    assert "nothere" not in {n.name for n in stub.List(pb.ListNamespacesRequest()).namespaces}


def test_create_twice_is_already_exists(stub):
    stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="twice")))
    assert (
        code_of(
            lambda: stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name="twice")))
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )


def test_delete_of_a_missing_namespace_is_not_found(stub):
    assert (
        code_of(lambda: stub.Delete(pb.DeleteNamespaceRequest(name="ghost")))
        == grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    "name", ["", "-lead", "trail-", "a..b", "x" * 77, "UPPER space", "ünïcode", "a/b"]
)
def test_invalid_names_are_invalid_argument_everywhere(stub, name):
    ns = pb.Namespace(name=name)
    for call in (
        lambda: stub.Create(pb.CreateNamespaceRequest(namespace=ns)),
        lambda: stub.Get(pb.GetNamespaceRequest(name=name)),
        lambda: stub.Update(pb.UpdateNamespaceRequest(namespace=ns)),
        lambda: stub.Delete(pb.DeleteNamespaceRequest(name=name)),
    ):
        assert code_of(call) == grpc.StatusCode.INVALID_ARGUMENT


def test_longest_valid_name_is_accepted(stub):
    name = "a" * 76
    stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name=name)))
    assert stub.Get(pb.GetNamespaceRequest(name=name)).namespace.name == name


def test_oversized_label_is_invalid_argument(stub):
    ns = pb.Namespace(name="big", labels={"k": "v" * 4096})
    assert (
        code_of(lambda: stub.Create(pb.CreateNamespaceRequest(namespace=ns)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_update_field_masks(stub):
    stub.Create(
        pb.CreateNamespaceRequest(namespace=pb.Namespace(name="m", labels={"a": "1", "b": "2"}))
    )

    def update(labels, paths):
        return dict(
            stub.Update(
                pb.UpdateNamespaceRequest(
                    namespace=pb.Namespace(name="m", labels=labels),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            ).namespace.labels
        )

    assert update({"a": "9", "c": "3"}, ["labels.a"]) == {"a": "9", "b": "2"}
    assert update({}, ["labels.b"]) == {"a": "9"}
    assert update({"z": "26"}, ["labels"]) == {"z": "26"}
    assert update({"y": "25"}, []) == {"y": "25"}
    assert dict(stub.Get(pb.GetNamespaceRequest(name="m")).namespace.labels) == {"y": "25"}
    with pytest.raises(grpc.RpcError) as e:
        update({}, ["name"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert '"name"' in e.value.details()


def test_list_is_sorted_by_name(stub):
    for name in ("zeta", "alpha", "mid"):
        stub.Create(pb.CreateNamespaceRequest(namespace=pb.Namespace(name=name)))
    names = [ns.name for ns in stub.List(pb.ListNamespacesRequest()).namespaces]
    assert names == ["alpha", "mid", "zeta"]
