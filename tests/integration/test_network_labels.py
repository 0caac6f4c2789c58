"""The labels of `supervisor.network.labels` on containers made by the real `ctr`: the same
plumbing as ctrctl's flags get, with no ctrd client involved."""

from __future__ import annotations

import ipaddress
import json
import os

from supervisor.network import netlink
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_network_manager import links
from tests.integration.test_tasks import pull, run, wait_for


def own_veths(ctrd, container: str) -> set[str]:
    """The host ends of the container's endpoints, by the names ctrd derives for them."""
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
    from supervisor.network.manager import endpoint_key
    from tests.conftest import ns_metadata

    listed = ctrd.stub(pb_grpc.NetworksStub).ListEndpoints(
        pb.ListEndpointsRequest(container_id=container), metadata=ns_metadata()
    )
    return {
        netlink.host_ifname(endpoint_key("default", e.network_id, container))
        for e in listed.endpoints
    }


def exec_in(ctrd, container: str, *command: str) -> str:
    done = ctrd.ctr("tasks", "exec", "--exec-id", f"x{os.urandom(3).hex()}", container, *command)
    return done.stdout


def test_ctr_labels_join_two_networks_share_a_namespace_and_leave_nothing(ctrd, busybox_image):
    pid = os.getpid()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{(pid // 50 + 7) % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    ref = pull(ctrd, busybox_image)
    assert ctrctl(ctrd, "network", "create", "--subnet", str(subnet), "two").returncode == 0
    run(ctrd, "-d",
        "--label", "ctrd.io/networks=bridge,two",
        "--label", "ctrd.io/extra-hosts=db:10.1.2.3,cache:10.1.2.4",
        "--label", "ctrd.io/dns=192.0.2.53", "--label", "ctrd.io/dns-search=example.test",
        "--label", "ctrd.io/dns-options=timeout:2",
        ref, "c1", "sleep", "1000")  # fmt: skip
    addresses = exec_in(ctrd, "c1", "busybox", "ip", "-4", "-o", "addr")
    names = {line.split()[1] for line in addresses.splitlines()}
    assert {"lo", "eth0", "eth1"} <= names, addresses
    [eth1] = [line.split()[3] for line in addresses.splitlines() if line.split()[1] == "eth1"]
    assert ipaddress.ip_interface(eth1).network == subnet
    [eth0] = [line.split()[3] for line in addresses.splitlines() if line.split()[1] == "eth0"]
    bridge_net = ipaddress.ip_interface(eth0).network
    routes = exec_in(ctrd, "c1", "busybox", "ip", "route")
    [default] = [line for line in routes.splitlines() if line.startswith("default")]
    assert default.split()[2] == str(next(bridge_net.hosts())), routes
    assert "eth0" in default, routes
    hosts = exec_in(ctrd, "c1", "cat", "/etc/hosts")
    assert "10.1.2.3\tdb" in hosts, hosts
    assert "10.1.2.4\tcache" in hosts, hosts
    resolv = exec_in(ctrd, "c1", "cat", "/etc/resolv.conf")
    assert "search example.test" in resolv, resolv
    assert "timeout:2" in resolv, resolv

    # a second container in the first one's namespace: same links, same files
    run(ctrd, "-d", "--label", "ctrd.io/network-container=c1", ref, "c2", "sleep", "1000")
    assert exec_in(ctrd, "c2", "busybox", "ip", "-4", "-o", "addr") == addresses
    assert exec_in(ctrd, "c2", "cat", "/etc/hosts") == hosts
    veths = own_veths(ctrd, "c1")
    assert len(veths) == 2
    assert veths <= links()
    assert own_veths(ctrd, "c2") == set()

    for name in ("c2", "c1"):
        ctrd.ctr("tasks", "kill", "-s", "KILL", name)
        wait_for(lambda n=name: ctrd.ctr("tasks", "delete", n, check=False).returncode == 0)
    wait_for(lambda: not veths & links())  # deleted with the namespace or in the background
    assert not list((ctrd.state / "netns" / "default").glob("*"))


def test_a_network_container_that_does_not_run_is_refused(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    ctrd.ctr("containers", "create", ref, "idle", "true")
    done = run(ctrd, "--rm", "--label", "ctrd.io/network-container=idle", ref, "c3", "true",
               check=False)  # fmt: skip
    assert done.returncode != 0
    assert "cannot join the network of container idle: it is not running" in done.stderr


def test_connect_and_disconnect_change_a_running_container_at_once(ctrd, busybox_image):
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
    from tests.conftest import ns_metadata

    pid = os.getpid()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{(pid // 50 + 9) % 256}.0/24")
    ref = pull(ctrd, busybox_image)
    assert ctrctl(ctrd, "network", "create", "--subnet", str(subnet), "late").returncode == 0
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", ref, "c4", "sleep", "1000")
    stub = ctrd.stub(pb_grpc.NetworksStub)
    endpoint = stub.Connect(
        pb.ConnectRequest(network="late", container_id="c4", aliases=["db"]),
        metadata=ns_metadata(),
    ).endpoint
    assert ipaddress.ip_interface(endpoint.address).network == subnet
    addresses = exec_in(ctrd, "c4", "busybox", "ip", "-4", "-o", "addr")
    assert endpoint.address in addresses, addresses
    hosts = exec_in(ctrd, "c4", "cat", "/etc/hosts")
    assert f"{endpoint.address.split('/')[0]}\tc4" in hosts, hosts
    routes = exec_in(ctrd, "c4", "busybox", "ip", "route")
    assert "eth1" not in next(line for line in routes.splitlines() if "default" in line)
    listed = stub.ListEndpoints(pb.ListEndpointsRequest(container_id="c4"), metadata=ns_metadata())
    assert sorted(e.network_name for e in listed.endpoints) == ["bridge", "late"]

    stub.Disconnect(pb.DisconnectRequest(network="late", container_id="c4"), metadata=ns_metadata())
    addresses = exec_in(ctrd, "c4", "busybox", "ip", "-4", "-o", "addr")
    assert endpoint.address not in addresses, addresses
    assert endpoint.address.split("/")[0] not in exec_in(ctrd, "c4", "cat", "/etc/hosts")
    info = json.loads(ctrd.ctr("containers", "info", "c4").stdout)
    assert info["Labels"]["ctrd.io/networks"] == "bridge"
    ctrd.ctr("tasks", "kill", "-s", "KILL", "c4")
    wait_for(lambda: ctrd.ctr("tasks", "delete", "c4", check=False).returncode == 0)


def test_a_flushed_firewall_table_is_written_again_at_once(ctrd, busybox_image):
    from supervisor.network import nft

    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", ref, "c5", "sleep", "1000")
    table = ctrd.nft_table
    shape = nft.fingerprint(table)  # (the daemon expects it from its model: nft.shape)
    assert shape is not None
    assert shape[1] > 0
    nft.delete(table)  # as `nft flush ruleset` would, for this table
    wait_for(lambda: nft.fingerprint(table) == shape, timeout=10)
    # at once: a change right after ctrd's own rewrite is not taken for it
    nft.run(f"flush table inet {table}")  # the chains stay, their rules go
    assert nft.fingerprint(table) != shape
    wait_for(lambda: nft.fingerprint(table) == shape, timeout=10)
    assert "firewall_restored" in ctrd.log()
    ctrd.ctr("tasks", "kill", "-s", "KILL", "c5")
    wait_for(lambda: ctrd.ctr("tasks", "delete", "c5", check=False).returncode == 0)


def _labelled(api, cid: str, labels: dict[str, str]) -> None:
    from google.protobuf import field_mask_pb2

    from supervisor.api.containerd.services.containers.v1 import containers_pb2

    got = api.containers.Get(
        containers_pb2.GetContainerRequest(id=cid), metadata=api.md, timeout=30
    ).container
    got.labels.update(labels)
    api.containers.Update(
        containers_pb2.UpdateContainerRequest(
            container=got, update_mask=field_mask_pb2.FieldMask(paths=["labels"])
        ),
        metadata=api.md,
        timeout=30,
    )


def test_the_process_finds_its_network_made_and_an_unstarted_task_leaves_nothing(
    ctrd, busybox_image
):
    """The links are made while runc creates the container, and the start waits for them: the
    process's first look sees its address, route and hosts. A task deleted without a start
    releases everything (its plumbing finished first)."""
    from tests.support.tasks import Api

    labels = {"ctrd.io/networks": "bridge", "ctrd.io/ports": "127.0.0.1::80"}
    probe = "ip -4 -o addr show eth0; ip route; cat /etc/hosts"
    with Api(ctrd, "default", busybox_image.ref) as api:
        for attempt in range(3):
            cid = f"first-look-{attempt}"
            api.container(cid, "sh", "-c", probe)
            _labelled(api, cid, labels)
            uri, path = api.log_file(f"{cid}.log")
            api.create(cid, stdout=uri, stderr=uri)
            api.start(cid)
            api.wait(cid)
            api.delete(cid)
            seen = path.read_text()
            [address] = [
                line.split()[3]
                for line in seen.splitlines()
                if " eth0 " in line and " inet " in line
            ]
            host = address.split("/")[0]
            assert any(line.startswith("default via ") for line in seen.splitlines()), seen
            assert f"{host}\t" in seen, seen  # /etc/hosts names it

        api.container("unstarted", "sleep", "1000")
        _labelled(api, "unstarted", labels)
        api.create("unstarted")
        veths = own_veths(ctrd, "unstarted")
        assert len(veths) == 1
        api.delete("unstarted")
        assert own_veths(ctrd, "unstarted") == set()  # the leases went with the task
        wait_for(lambda: not veths & links())
        assert not (ctrd.state / "netns" / "default" / "unstarted").exists()
        assert not (ctrd.state / "etc" / "default" / "unstarted").exists()
