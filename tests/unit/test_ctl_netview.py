"""ctrctl's views of a container's network (ps PORTS, port, inspect) from ListEndpoints answers."""

from __future__ import annotations

import pytest

from ctl import netview
from ctl.netview import (
    NoPublicPort,
    Port,
    container_ports,
    displayable_ports,
    network_settings,
    port_lines,
    port_map,
)
from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.network.labels import NETWORK_CONTAINER_LABEL, NETWORKS_LABEL, PORTS_LABEL


def endpoint(network="bridge", ports=(), **fields):
    values = {
        "container_id": "c1", "address": "172.17.0.2/16", "mac": "02:42:ac:11:00:02",
        "network_id": "n" * 64, "network_name": network, "gateway": "172.17.0.1",
    }  # fmt: skip
    values.update(fields)
    mappings = [
        pb.PortMapping(protocol=proto, host_ip=ip, host_port=host, container_port=port)
        for proto, ip, host, port in ports
    ]
    return pb.Endpoint(ports=mappings, **values)


WEB = endpoint(ports=[("tcp", "", 8080, 80), ("tcp", "127.0.0.1", 49153, 80)])
EXPOSED = {"ctrctl.exposed-ports": "80/tcp,443/tcp"}


def test_port_map_is_dockers_with_unpublished_exposed_ports_null():
    assert port_map(EXPOSED, [WEB]) == {
        "443/tcp": None,
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "127.0.0.1", "HostPort": "49153"},
        ],
    }
    assert list(port_map(EXPOSED, [WEB])) == ["443/tcp", "80/tcp"]  # Go sorts map keys
    assert port_map(EXPOSED, []) == {}  # no endpoints (not running): no ports, as docker's


def test_the_same_binding_on_two_networks_shows_once():
    second = endpoint("front", ports=[("tcp", "", 8080, 80)])
    assert port_map({}, [WEB, second])["80/tcp"] == [
        {"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "49153"},
    ]  # fmt: skip


def test_ps_ports_as_docker_shows_them():
    assert displayable_ports(container_ports(EXPOSED, [WEB])) == (
        "443/tcp, 0.0.0.0:8080->80/tcp, 127.0.0.1:49153->80/tcp"
    )
    assert displayable_ports(container_ports(EXPOSED, [])) == ""


@pytest.mark.parametrize(
    ("ports", "shown"),
    [
        ([], ""),
        ([Port(80)], "80/tcp"),
        ([Port(81), Port(80), Port(82, type="udp")], "80-81/tcp, 82/udp"),
        ([Port(8000, "0.0.0.0", 8000), Port(8001, "0.0.0.0", 8001)],
         "0.0.0.0:8000-8001->8000-8001/tcp"),
        ([Port(80, "0.0.0.0", 8080), Port(81, "0.0.0.0", 8081)],
         "0.0.0.0:8080->80/tcp, 0.0.0.0:8081->81/tcp"),
        # docker's quirk: a gap emits the group at once; the next keeps the key's place
        ([Port(80), Port(82), Port(53, type="udp")], "80/tcp, 53/udp, 82/tcp"),
        ([Port(9000, "127.0.0.1", 9000), Port(80), Port(9001, "127.0.0.1", 9001),
          Port(443, "0.0.0.0", 8443)],
         "80/tcp, 127.0.0.1:9000-9001->9000-9001/tcp, 0.0.0.0:8443->443/tcp"),
    ],
)  # fmt: skip
def test_displayable_ports_follow_docker_clis_rules(ports, shown):
    assert displayable_ports(ports) == shown


def test_port_lists_every_binding_or_one_ports():
    db = endpoint(ports=[("udp", "", 5353, 53), ("tcp", "", 8080, 80)])
    assert port_lines({}, [db], "web") == ["53/udp -> 0.0.0.0:5353", "80/tcp -> 0.0.0.0:8080"]
    assert port_lines({}, [WEB], "web", "80") == ["0.0.0.0:8080", "127.0.0.1:49153"]
    assert port_lines({}, [db], "web", "53/udp") == ["0.0.0.0:5353"]


@pytest.mark.parametrize("asked", ["443", "53", "80/udp"])
def test_a_port_not_published_is_dockers_error(asked):
    with pytest.raises(NoPublicPort) as refused:
        port_lines(EXPOSED, [WEB], "web", asked)
    shown = asked if "/" in asked else f"{asked}/tcp"
    assert str(refused.value) == f"Error: No public port '{shown}' published for web"


def test_network_settings_on_the_default_bridge_fill_the_top_level_fields():
    settings = network_settings({"ctrd.io/networks": "bridge", **EXPOSED}, [WEB])
    assert settings["IPAddress"] == "172.17.0.2"
    assert settings["IPPrefixLen"] == 16
    assert settings["Gateway"] == "172.17.0.1"
    assert settings["MacAddress"] == "02:42:ac:11:00:02"
    assert settings["Ports"]["443/tcp"] is None
    assert settings["Networks"] == {
        "bridge": {
            "IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "n" * 64,
            "EndpointID": "", "Gateway": "172.17.0.1", "IPAddress": "172.17.0.2",
            "IPPrefixLen": 16, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "MacAddress": "02:42:ac:11:00:02", "DriverOpts": None,
        }
    }  # fmt: skip
    assert list(settings)[:6] == [
        "Bridge", "SandboxID", "HairpinMode", "LinkLocalIPv6Address", "LinkLocalIPv6PrefixLen",
        "Ports",
    ]  # fmt: skip


def test_network_settings_on_a_user_network_leave_the_top_level_empty():
    front = endpoint("front", address="10.9.0.5/24", gateway="10.9.0.1", aliases=["web"])
    labels = {"ctrd.io/networks": "front", "ctrd.io/ip": "10.9.0.5"}
    settings = network_settings(labels, [front])
    assert (settings["IPAddress"], settings["Gateway"], settings["IPPrefixLen"]) == ("", "", 0)
    entry = settings["Networks"]["front"]
    assert entry["IPAMConfig"] == {"IPv4Address": "10.9.0.5"}
    assert (entry["IPAddress"], entry["IPPrefixLen"], entry["Aliases"]) == ("10.9.0.5", 24, ["web"])


def test_network_settings_of_a_stopped_container_keep_what_it_was_given():
    labels = {"ctrd.io/networks": "front", "ctrd.io/network-aliases": "a,b", **EXPOSED}
    settings = network_settings(labels, [])
    assert settings["Ports"] == {}
    assert settings["Networks"]["front"]["Aliases"] == ["a", "b"]
    assert settings["Networks"]["front"]["IPAddress"] == ""


def test_network_settings_show_the_aliases_a_connect_gave_on_their_network():
    labels = {
        "ctrd.io/networks": "front,back",
        "ctrd.io/network-aliases": "a",
        "ctrd.io/network-aliases.back": "db",
    }
    settings = network_settings(labels, [])
    assert settings["Networks"]["front"]["Aliases"] == ["a"]
    assert settings["Networks"]["back"]["Aliases"] == ["db"]


def test_network_settings_list_networks_connected_after_create():
    later = endpoint("back", address="10.8.0.3/24")
    settings = network_settings({"ctrd.io/networks": "bridge"}, [WEB, later])
    assert list(settings["Networks"]) == ["bridge", "back"]


def test_network_settings_of_the_modes():
    assert list(network_settings({}, [])["Networks"]) == ["none"]
    assert list(network_settings({}, [], host_network=True)["Networks"]) == ["host"]
    assert network_settings({"ctrd.io/network-container": "x"}, [])["Networks"] == {}


def test_host_config_of_a_container_ctr_made_shows_what_its_labels_ask():
    """No ctrctl labels (ctr's `--label ctrd.io/...`): the mode is the first network, the
    bindings are the daemon's ports label; a label that is not a -p value is left out."""
    labels = {NETWORKS_LABEL: "front,back", PORTS_LABEL: "8080:80,127.0.0.1::53/udp,x:y:z"}
    config = netview.host_config(labels)
    assert config["NetworkMode"] == "front"
    assert config["PortBindings"] == {
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
    }
    assert (config["PublishAllPorts"], config["Dns"], config["ExtraHosts"]) == (False, [], None)
    assert netview.host_config({})["NetworkMode"] == "none"
    assert netview.host_config({}, host_network=True)["NetworkMode"] == "host"
    assert netview.host_config({NETWORK_CONTAINER_LABEL: "abc"})["NetworkMode"] == "container:abc"


def test_host_config_keeps_ports_as_given_and_pairs_ranges():
    labels = {
        "ctrctl.network-mode": "default",
        "ctrctl.publish": "0.0.0.0:9000-9001:90-91,7000-7010:70,82/UDP",
        "ctrctl.publish-all": "true",
    }
    config = netview.host_config(labels)
    assert config["PortBindings"] == {
        "70/tcp": [{"HostIp": "", "HostPort": "7000-7010"}],
        "82/udp": [{"HostIp": "", "HostPort": ""}],
        "90/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}],
        "91/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9001"}],
    }
    assert (config["NetworkMode"], config["PublishAllPorts"]) == ("default", True)
