"""flush_udp_conntrack against the real conntrack table of a network namespace made for it.

The scenario runs in a child process under `unshare --net`: the host's conntrack table and
firewall are never touched, and the entries flushed are only the ones the child made. A fresh
namespace tracks nothing until a rule needs conntrack, so the child loads a one-rule nft table
(`ct state new counter` on output) and then sends real UDP datagrams over its loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

CHILD = r"""
import json, socket
from ipaddress import IPv4Address
from pyroute2 import Conntrack, IPRoute
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
from supervisor.network import nft
from supervisor.network.ports import flush_udp_conntrack

with IPRoute() as ipr:
    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
nft.run(
    "add table inet cttest\n"
    "add chain inet cttest out { type filter hook output priority 0; }\n"
    "add rule inet cttest out ct state new counter\n"
)

def udp_entries():
    with Conntrack() as ct:
        wanted = NFCTAttrTuple(proto=socket.IPPROTO_UDP)
        return sorted(
            [e.tuple_orig.daddr, e.tuple_orig.dport] for e in ct.dump_entries(tuple_orig=wanted)
        )

servers = []
for port in (4001, 4002):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    servers.append(s)
for port in (4001, 4001, 4002):  # two clients of 4001: two flows
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"hello", ("127.0.0.1", port))
    c.close()
with Conntrack() as ct:  # a flow to another address of the same port, as a remote client's
    ct.entry(
        "add",
        timeout=120,
        tuple_orig=NFCTAttrTuple(
            saddr="10.9.0.1", daddr="10.9.0.2", proto=17, sport=5000, dport=4001
        ),
        tuple_reply=NFCTAttrTuple(
            saddr="10.9.0.2", daddr="10.9.0.1", proto=17, sport=4001, dport=5000
        ),
    )
out = {"before": udp_entries()}
out["by_address"] = flush_udp_conntrack(4001, IPv4Address("127.0.0.1"))
out["after_address"] = udp_entries()
out["by_port"] = flush_udp_conntrack(4001)
out["after_port"] = udp_entries()
out["again"] = flush_udp_conntrack(4001)
print(json.dumps(out))
"""


def test_a_udp_publish_s_conntrack_entries_are_flushed_and_no_others():
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed"
    done = subprocess.run(
        [unshare, "--net", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["before"] == [
        ["10.9.0.2", 4001],
        ["127.0.0.1", 4001],
        ["127.0.0.1", 4001],
        ["127.0.0.1", 4002],
    ]
    assert out["by_address"] == 2
    assert out["after_address"] == [["10.9.0.2", 4001], ["127.0.0.1", 4002]]
    assert out["by_port"] == 1
    assert out["after_port"] == [["127.0.0.1", 4002]]
    assert out["again"] == 0
