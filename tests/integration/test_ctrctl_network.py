"""`ctrctl run --network NAME`: containers on a ctrd bridge network, as docker's user runs them."""

from __future__ import annotations

import ipaddress
import json
import os

from supervisor.network import netlink, nft
from supervisor.network.manager import bridge_name, endpoint_key
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_network_manager import links
from tests.integration.test_tasks import pull


def test_run_on_a_named_network_pings_a_peer_and_a_missing_one_is_refused(
    make_ctrd, busybox_image, tmp_path
):
    pid = os.getpid()
    table = f"ctrdc{pid}"
    config = tmp_path / "ctrd.toml"
    config.write_text(f'[network]\nnft_table = "{table}"\n')
    daemon = make_ctrd()
    daemon.extra_args = ("--config", str(config))
    daemon.start()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{pid // 50 % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    bridge = ""
    try:
        ref = pull(daemon, busybox_image)
        created = ctrctl(daemon, "network", "create", "--subnet", str(subnet), "front")
        assert created.returncode == 0, created.stderr
        [network] = json.loads(ctrctl(daemon, "network", "inspect", "front").stdout)
        bridge = bridge_name(network["Id"])
        started = ctrctl(daemon, "run", "-d", "--name", "a", "--network", "front", ref,
                         "sleep", "1000")  # fmt: skip
        assert started.returncode == 0, started.stderr + daemon.log()[-2000:]
        hosts = ctrctl(daemon, "exec", "a", "cat", "/etc/hosts").stdout
        [address] = [line.split()[0] for line in hosts.splitlines() if line.endswith("\ta")]
        assert ipaddress.ip_address(address) in subnet
        pinged = ctrctl(daemon, "run", "--rm", "--network", "front", ref,
                        "sh", "-c", f"ping -c1 -W2 {address}")  # fmt: skip
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        assert "1 packets received" in pinged.stdout

        missing = ctrctl(daemon, "run", "--rm", "--network", "nowhere", ref, "true")
        assert missing.returncode == 125
        assert missing.stderr == "Error response from daemon: network nowhere not found\n"
        assert ctrctl(daemon, "create", "--network", "nowhere", ref).returncode == 125

        veth = netlink.host_ifname(endpoint_key("default", network["Id"], "a"))
        assert {veth, bridge} <= links()
        assert ctrctl(daemon, "rm", "-f", "a").returncode == 0
        assert veth not in links()
        removed = ctrctl(daemon, "network", "rm", "front")
        assert removed.returncode == 0, removed.stderr
        assert "front" not in ctrctl(daemon, "network", "ls").stdout
        assert bridge not in links()  # the record, the bridge and the table's rules go together
    finally:
        daemon.stop()
        if bridge:
            netlink.remove_bridge(bridge)
        nft.delete(table)
