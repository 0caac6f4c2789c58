"""The pod network through a real ctrd and crictl: NetworkReady follows the node's CNI conf dir
without a restart, a pod gets its address from the real plugins and gives it back at stop.
The node (`tests.support.cri.CriNode`) has a conf dir, bridge and subnet of its own; its end
reports whatever a pod left (veths, leases, portmap's rules)."""

from __future__ import annotations

import ipaddress
import secrets
import signal
import subprocess
from typing import Any

import pytest

from tests.support.cri import CriNode, pod_net_leftovers

pytestmark = pytest.mark.integration


def network_ready(node: CriNode) -> dict[str, Any]:
    info = node.json("info")
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    return {"ready": conditions["NetworkReady"]["status"], **conditions["NetworkReady"], **info}


def test_network_ready_follows_the_conf_dir_and_a_pod_gets_its_address_back(cri_node: CriNode):
    net = cri_node.net
    (conflist,) = net.conf_dir.iterdir()
    aside = cri_node.base / "aside.json.off"
    conflist.rename(aside)  # the CNI DaemonSet has not written it yet
    before = network_ready(cri_node)
    assert before["ready"] is False
    assert before["reason"] == "NetworkPluginNotReady"
    assert before["message"] == (
        "Network plugin returns error: cni plugin not initialized: "
        f"no network config found in {net.conf_dir}"
    )
    aside.rename(conflist)  # now it has: no restart
    after = network_ready(cri_node)
    assert after["ready"] is True
    assert after["lastCNILoadStatus"] == "OK"
    assert [n["Config"]["Name"] for n in after["cniconfig"]["Networks"]] == [
        "cni-loopback",
        net.name,
    ]

    port = 20000 + secrets.randbelow(10000)
    pod = cri_node.run_pod(
        "netpod", port_mappings=[{"protocol": 0, "container_port": 80, "host_port": port}]
    )
    status = cri_node.json("inspectp", pod)
    ip = status["status"]["network"]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net.subnet)
    assert status["info"]["cniResult"]["Interfaces"]["eth0"]["IPConfigs"][0]["IP"] == ip
    assert (net.ipam_dir / net.name / ip).read_text().split()[0] == pod
    rules = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True)
    assert any(pod in r and f"--dports {port}" in r for r in rules.stdout.splitlines())

    cri_node.crictl("stopp", pod)
    assert pod_net_leftovers(net) == []  # address, veth, portmap's rule: given back at stop
    cri_node.crictl("rmp", pod)


def test_a_pod_keeps_its_address_across_a_sigkill_and_gives_it_back_after(cri_node: CriNode):
    net = cri_node.net
    pod = cri_node.run_pod("survivor")
    ip = cri_node.json("inspectp", pod)["status"]["network"]["ip"]
    cri_node.ctrd.stop(signal.SIGKILL)
    cri_node.ctrd.start()
    status = cri_node.json("inspectp", pod)
    assert status["status"]["state"] == "SANDBOX_READY"
    assert status["status"]["network"]["ip"] == ip
    assert (net.ipam_dir / net.name / ip).exists()
    cri_node.crictl("stopp", pod)  # the DEL from the record the killed daemon wrote
    assert pod_net_leftovers(net) == []
    cri_node.crictl("rmp", pod)
