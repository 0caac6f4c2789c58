"""Names on ctrd networks: containers reach each other by name, alias and short id through the
embedded resolver at 127.0.0.11, other names go to the host's resolvers, and a container of
another network neither resolves nor reaches them."""

from __future__ import annotations

import ipaddress
import os

from supervisor.network import netlink
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_network_labels import exec_in
from tests.integration.test_tasks import pull, run, wait_for


def subnet_for(offset: int) -> ipaddress.IPv4Network:
    pid = os.getpid()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{(pid // 50 + offset) % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    return subnet


def shell(ctrd, container: str, script: str) -> tuple[int, str]:
    done = ctrd.ctr("tasks", "exec", "--exec-id", f"s{os.urandom(3).hex()}", container,
                    "sh", "-c", script + "; echo status=$?", check=False)  # fmt: skip
    out = done.stdout.strip()
    return int(out.rsplit("status=", 1)[1]), out


def test_names_and_aliases_resolve_on_a_network_and_not_across(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    for name, offset in (("front", 11), ("back", 12)):
        made = ctrctl(ctrd, "network", "create", "--subnet", str(subnet_for(offset)), name)
        assert made.returncode == 0, made.stderr
    long_id = os.urandom(32).hex()
    run(ctrd, "-d", "--label", "ctrd.io/networks=front", "--label", "ctrctl.name=alpha",
        "--label", "ctrd.io/network-aliases=db,cache", ref, long_id, "sleep", "1000")  # fmt: skip
    run(ctrd, "-d", "--label", "ctrd.io/networks=front", ref, "beta", "sleep", "1000")
    run(ctrd, "-d", "--label", "ctrd.io/networks=back", ref, "gamma", "sleep", "1000")
    address = next(
        line.split()[3].split("/")[0]
        for line in exec_in(ctrd, long_id, "busybox", "ip", "-4", "-o", "addr").splitlines()
        if line.split()[1] == "eth0"
    )

    assert "nameserver 127.0.0.11" in exec_in(ctrd, "beta", "cat", "/etc/resolv.conf")
    # (a 64-hex id is longer than a DNS label may be: its short id stands for it, as docker's)
    for name in ("alpha", "db", "cache", long_id[:12]):
        status, out = shell(ctrd, "beta", f"busybox nslookup {name} 127.0.0.11")
        assert status == 0, out
        assert address in out, out
        status, out = shell(ctrd, "beta", f"busybox ping -c1 -W2 {name}")
        assert status == 0, out
    # the other network: neither the name nor the address
    status, out = shell(ctrd, "gamma", "busybox nslookup alpha 127.0.0.11")
    assert status != 0, out
    assert address not in out, out
    status, out = shell(ctrd, "gamma", f"busybox ping -c1 -W1 {address}")
    assert status != 0, out

    for name in (long_id, "beta", "gamma"):
        ctrd.ctr("tasks", "kill", "-s", "KILL", name)
        wait_for(lambda n=name: ctrd.ctr("tasks", "delete", n, check=False).returncode == 0)
