"""The CRI tests' harness (`tests/support/cri.py`): critest's images reach a node through the
mirrors of the three registries, and the node's pod network is one the real CNI plugins set
up, whose leftovers the harness finds and removes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cri import BUSYBOX, PAUSE, CriNode, PodNet, pod_net_leftovers, remove_pod_net

pytestmark = pytest.mark.integration


def test_a_node_pulls_critests_images_through_the_mirrors(cri_node: CriNode):
    out = cri_node.crictl("version").stdout
    assert "RuntimeName:  ctrd" in out
    for ref in (PAUSE, BUSYBOX, "gcr.io/k8s-staging-cri-tools/test-image-tags:2"):
        cri_node.crictl("pull", ref)
    tags = {t for image in cri_node.json("images")["images"] for t in image["repoTags"]}
    assert {PAUSE, BUSYBOX, "gcr.io/k8s-staging-cri-tools/test-image-tags:2"} <= tags
    assert cri_node.json("info")["config"]["namespace"] == "k8s.io"
    config = (cri_node.base / "ctrd-test.toml").read_text()
    assert f'"docker.io" = ["http://{cri_node.registry}"]' in config
    assert f'cni_conf_dir = "{cri_node.net.conf_dir}"' in config


def _plugin(net: PodNet, plugin: dict[str, Any], command: str, pin: Path, **more: Any) -> Any:
    conf = {"cniVersion": "1.0.0", "name": net.name, **plugin, **more}
    env = {
        **os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": "ctrdtestharness",
        "CNI_NETNS": str(pin), "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
    }  # fmt: skip
    done = subprocess.run(
        [f"/usr/lib/cni/{plugin['type']}"], input=json.dumps(conf), env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, f"{plugin['type']} {command}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_the_pod_network_works_with_the_real_plugins_and_its_leftovers_are_found(
    make_cri_node: Any, short_tmp: Path
):
    node: CriNode = make_cri_node()  # not started: only its network is used here
    net = node.net
    [conflist] = net.conf_dir.iterdir()
    bridge, portmap = json.loads(conflist.read_text())["plugins"]
    pin = short_tmp / "netns"
    pin.touch()
    subprocess.run(["unshare", f"--net={pin}", "true"], check=True)
    try:
        result = _plugin(net, bridge, "ADD", pin)
        ports = {"portMappings": [{"hostPort": 12099, "containerPort": 80, "protocol": "tcp"}]}
        _plugin(net, portmap, "ADD", pin, prevResult=result, runtimeConfig=ports)
        address = result["ips"][0]["address"]
        assert address.startswith(net.subnet.rsplit(".", 2)[0])
        left = pod_net_leftovers(net)
        assert any(f"address {address.split('/')[0]} still leased" in x for x in left), left
        assert any(x.startswith("veth ") for x in left), left
        assert any(x.startswith("portmap rule: ") for x in left), left
        remove_pod_net(net)  # as at a node's end: rules, chains, veths and the bridge go
        assert not any(x.startswith(("portmap", "veth")) for x in pod_net_leftovers(net))
        assert not Path(f"/sys/class/net/{net.bridge}").exists()
        # DEL as a runtime would run it, from the end of the chain
        _plugin(net, portmap, "DEL", pin, prevResult=result, runtimeConfig=ports)
        _plugin(net, bridge, "DEL", pin, prevResult=result)
        assert pod_net_leftovers(net) == []
    finally:
        subprocess.run(["umount", str(pin)], check=False)
        remove_pod_net(net)
