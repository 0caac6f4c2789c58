"""Networks, the control plane: ctrd's Networks service through its gRPC stub and ctrctl.

Only the record is exercised here (names, ids, subnets, endpoints as address leases); bridges
and namespaces are the data plane's.
"""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as nspb
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc as nsgrpc
from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
from tests.conftest import ns_metadata


def stub(ctrd):
    return ctrd.stub(pb_grpc.NetworksStub)


def create(ctrd, name, ns="default", **fields):
    request = pb.CreateNetworkRequest(name=name, **fields)
    return stub(ctrd).Create(request, metadata=ns_metadata(ns)).network


def names(ctrd, ns="default", filters=()):
    listed = stub(ctrd).List(pb.ListNetworksRequest(filters=filters), metadata=ns_metadata(ns))
    return [n.name for n in listed.networks]


def code_of(call):
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def test_create_with_a_subnet_keeps_it_and_without_one_picks_a_free_one(ctrd):
    given = create(ctrd, "given", subnet="10.231.0.0/24", gateway="10.231.0.254", labels={"a": "b"})
    assert (given.subnet, given.gateway, given.driver) == (
        "10.231.0.0/24",
        "10.231.0.254",
        "bridge",
    )
    assert len(given.id) == 64
    assert dict(given.labels) == {"a": "b"}
    picked = create(ctrd, "picked")
    subnet = ipaddress.IPv4Network(picked.subnet)
    assert picked.gateway == str(subnet.network_address + 1)
    assert not subnet.overlaps(ipaddress.IPv4Network(given.subnet))
    got = stub(ctrd).Get(pb.GetNetworkRequest(ref="picked"), metadata=ns_metadata()).network
    assert got == picked
    by_id = stub(ctrd).Get(pb.GetNetworkRequest(ref=picked.id), metadata=ns_metadata()).network
    assert by_id.name == "picked"
    assert names(ctrd) == ["given", "picked"]


def test_bad_creates_are_refused_with_their_codes_and_leave_nothing(ctrd):
    create(ctrd, "first", subnet="10.232.0.0/16")
    overlap = code_of(lambda: create(ctrd, "second", subnet="10.232.5.0/24"))
    assert overlap[0] == grpc.StatusCode.FAILED_PRECONDITION, overlap
    # Subnets are the host's, not a namespace's: another namespace overlaps just the same.
    elsewhere = code_of(lambda: create(ctrd, "second", ns="other", subnet="10.232.0.0/24"))
    assert elsewhere[0] == grpc.StatusCode.FAILED_PRECONDITION, elsewhere
    duplicate = code_of(lambda: create(ctrd, "first", subnet="10.233.0.0/24"))
    assert duplicate[0] == grpc.StatusCode.ALREADY_EXISTS, duplicate
    driver = code_of(lambda: create(ctrd, "third", driver="overlay"))
    assert driver[0] == grpc.StatusCode.INVALID_ARGUMENT, driver
    assert names(ctrd) == ["first"]
    assert names(ctrd, "other") == []
    # the refused subnet is still free
    assert create(ctrd, "fourth", subnet="10.233.0.0/24").subnet == "10.233.0.0/24"


def test_list_filters_delete_and_prune(ctrd):
    create(ctrd, "red", labels={"team": "a"}, internal=True)
    create(ctrd, "blue", labels={"team": "b"})
    create(ctrd, "green")
    assert names(ctrd, filters=["labels.team==a"]) == ["red"]
    assert names(ctrd, filters=["name==blue", "internal==true"]) == ["blue", "red"]
    missing = code_of(
        lambda: stub(ctrd).Delete(pb.DeleteNetworkRequest(ref="nope"), metadata=ns_metadata())
    )
    assert missing[0] == grpc.StatusCode.NOT_FOUND, missing
    stub(ctrd).Delete(pb.DeleteNetworkRequest(ref="green"), metadata=ns_metadata())
    assert names(ctrd) == ["blue", "red"]
    connected = (
        stub(ctrd)
        .Connect(pb.ConnectRequest(network="red", container_id="box"), metadata=ns_metadata())
        .endpoint
    )
    assert connected.container_id == "box"
    assert connected.address.endswith("/16")
    in_use = code_of(
        lambda: stub(ctrd).Delete(pb.DeleteNetworkRequest(ref="red"), metadata=ns_metadata())
    )
    assert in_use[0] == grpc.StatusCode.FAILED_PRECONDITION, in_use
    got = stub(ctrd).Get(pb.GetNetworkRequest(ref="red"), metadata=ns_metadata()).network
    assert [e.container_id for e in got.endpoints] == ["box"]
    pruned = stub(ctrd).Prune(pb.PruneNetworksRequest(), metadata=ns_metadata())
    assert list(pruned.deleted) == ["blue"]
    assert names(ctrd) == ["red"]
    stub(ctrd).Disconnect(
        pb.DisconnectRequest(network="red", container_id="box"), metadata=ns_metadata()
    )
    assert list(stub(ctrd).Prune(pb.PruneNetworksRequest(), metadata=ns_metadata()).deleted) == [
        "red"
    ]


def test_namespaces_are_kept_apart_and_one_with_networks_is_not_deleted(ctrd):
    create(ctrd, "mine", ns="one")
    assert names(ctrd, "two") == []
    absent = code_of(
        lambda: stub(ctrd).Get(pb.GetNetworkRequest(ref="mine"), metadata=ns_metadata("two"))
    )
    assert absent[0] == grpc.StatusCode.NOT_FOUND, absent
    cross = code_of(
        lambda: stub(ctrd).Connect(
            pb.ConnectRequest(network="mine", container_id="c"), metadata=ns_metadata("two")
        )
    )
    assert cross[0] == grpc.StatusCode.NOT_FOUND, cross
    create(ctrd, "mine", ns="two")  # the same name in another namespace
    namespaces = ctrd.stub(nsgrpc.NamespacesStub)
    refused = code_of(lambda: namespaces.Delete(nspb.DeleteNamespaceRequest(name="one")))
    assert refused[0] == grpc.StatusCode.FAILED_PRECONDITION, refused
    stub(ctrd).Delete(pb.DeleteNetworkRequest(ref="mine"), metadata=ns_metadata("one"))
    namespaces.Delete(nspb.DeleteNamespaceRequest(name="one"))
    assert names(ctrd, "two") == ["mine"]
