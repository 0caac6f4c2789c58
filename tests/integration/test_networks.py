"""Networks, the control plane: ctrd's Networks service through its gRPC stub and ctrctl.

Only the record is exercised here (names, ids, subnets, endpoints as address leases); bridges
and namespaces are the data plane's.
"""

from __future__ import annotations

import ipaddress
import json
import re

import grpc
import pytest

from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as nspb
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc as nsgrpc
from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
from tests.conftest import ns_metadata
from tests.integration.test_ctrctl import ctrctl


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
    assert driver == (grpc.StatusCode.NOT_FOUND, 'plugin "overlay" not found'), driver
    assert names(ctrd) == ["first"]
    assert names(ctrd, "other") == []
    # the refused subnet is still free
    assert create(ctrd, "fourth", subnet="10.233.0.0/24").subnet == "10.233.0.0/24"


def test_list_filters_delete_and_prune(ctrd, busybox_image):
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
    absent = code_of(
        lambda: stub(ctrd).Connect(
            pb.ConnectRequest(network="red", container_id="box"), metadata=ns_metadata()
        )
    )
    assert absent[0] == grpc.StatusCode.NOT_FOUND, absent  # no such container
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    ctrd.ctr("containers", "create", busybox_image.ref, "box", "true")
    connected = (
        stub(ctrd)
        .Connect(pb.ConnectRequest(network="red", container_id="box"), metadata=ns_metadata())
        .endpoint
    )
    # a stopped container is connected by its label: its address comes when it starts
    assert (connected.container_id, connected.network_name) == ("box", "red")
    assert connected.address.startswith("0.0.0.0/")
    info = json.loads(ctrd.ctr("containers", "info", "box").stdout)
    assert info["Labels"]["ctrd.io/networks"] == "red"
    again = code_of(
        lambda: stub(ctrd).Connect(
            pb.ConnectRequest(network="red", container_id="box"), metadata=ns_metadata()
        )
    )
    assert again[0] == grpc.StatusCode.ALREADY_EXISTS, again
    in_use = code_of(
        lambda: stub(ctrd).Delete(pb.DeleteNetworkRequest(ref="red"), metadata=ns_metadata())
    )
    assert in_use[0] == grpc.StatusCode.FAILED_PRECONDITION, in_use
    pruned = stub(ctrd).Prune(pb.PruneNetworksRequest(), metadata=ns_metadata())
    assert list(pruned.deleted) == ["blue"]
    assert names(ctrd) == ["red"]
    stub(ctrd).Disconnect(
        pb.DisconnectRequest(network="red", container_id="box"), metadata=ns_metadata()
    )
    info = json.loads(ctrd.ctr("containers", "info", "box").stdout)
    assert "ctrd.io/networks" not in info["Labels"]
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


def test_ctrctl_network_commands_speak_dockers_words(ctrd):
    made = ctrctl(
        ctrd,
        "network",
        "create",
        "--subnet",
        "10.234.0.0/24",
        "--ip-range",
        "10.234.0.128/25",
        "--label",
        "team=a",
        "-o",
        "mtu=1400",
        "--internal",
        "net1",
    )
    assert made.returncode == 0, made.stderr
    net_id = made.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", net_id), made.stdout
    assert ctrctl(ctrd, "network", "create", "net2").returncode == 0
    listed = ctrctl(ctrd, "network", "ls").stdout.splitlines()
    assert listed[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert listed[1].split() == [net_id[:12], "net1", "bridge", "local"]
    assert len(listed) == 3
    assert ctrctl(ctrd, "network", "ls", "-q", "--filter", "name=t1").stdout == net_id[:12] + "\n"
    quiet = ctrctl(ctrd, "network", "ls", "-q", "--no-trunc", "-f", "label=team=a")
    assert quiet.stdout == net_id + "\n"
    both = ctrctl(ctrd, "network", "ls", "-q", "-f", "name=net1", "-f", "name=net2")
    assert len(both.stdout.split()) == 2
    assert ctrctl(ctrd, "network", "ls", "-q", "-f", "id=" + net_id[:5]).stdout.split() == [
        net_id[:12]
    ]
    bad = ctrctl(ctrd, "network", "ls", "-f", "colour=red")
    assert bad.returncode != 0
    assert "invalid filter 'colour'" in bad.stderr
    rows = [
        json.loads(line)
        for line in ctrctl(ctrd, "network", "ls", "--format", "json").stdout.splitlines()
    ]
    assert [(r["Name"], r["Scope"], r["Internal"]) for r in rows] == [
        ("net1", "local", "true"),
        ("net2", "local", "false"),
    ]

    [shown] = json.loads(ctrctl(ctrd, "network", "inspect", "net1").stdout)
    assert shown["Name"] == "net1"
    assert shown["Id"] == net_id
    assert (shown["Scope"], shown["Driver"], shown["Internal"]) == ("local", "bridge", True)
    assert shown["IPAM"] == {
        "Driver": "default",
        "Options": {},
        "Config": [
            {"Subnet": "10.234.0.0/24", "Gateway": "10.234.0.1", "IPRange": "10.234.0.128/25"}
        ],
    }
    assert (shown["Labels"], shown["Options"], shown["Containers"]) == (
        {"team": "a"},
        {"mtu": "1400"},
        {},
    )
    assert shown["Created"].endswith("Z")

    overlap = ctrctl(ctrd, "network", "create", "--subnet", "10.234.0.0/16", "net3")
    assert overlap.returncode != 0
    assert "overlap" in overlap.stderr
    missing = ctrctl(ctrd, "network", "inspect", "net1", "nope")
    assert missing.returncode == 1
    assert "No such network: nope" in missing.stderr
    assert [n["Name"] for n in json.loads(missing.stdout)] == ["net1"]

    removed = ctrctl(ctrd, "network", "rm", "net2", "nope")
    assert (removed.returncode, removed.stdout) == (1, "net2\n")
    assert "No such network: nope" in removed.stderr
    declined = ctrctl(ctrd, "network", "prune", input="n\n")
    assert "net1" not in declined.stdout
    pruned = ctrctl(ctrd, "network", "prune", "-f")
    assert pruned.stdout == "Deleted Networks:\nnet1\n"
    assert ctrctl(ctrd, "network", "ls", "-q").stdout == ""
