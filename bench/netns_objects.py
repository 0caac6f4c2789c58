"""The kernel's networking objects in the network namespace this runs in, as one JSON line.

bench/network.py runs it inside ctrd's namespace (`nsenter --net=/proc/PID/ns/net -- python
bench/netns_objects.py TABLE`), since netlink and nftables answer for the caller's namespace:

- links, and of them veths and bridges (pyroute2, as ctrd's own netlink code);
- ctrd's nftables table `inet TABLE` (libnftables, through supervisor.network.nft): chains,
  rules, and the rules with a `dnat` statement (one per published port and hook); all 0
  when the table is absent.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pyroute2 import IPRoute

from supervisor.network import nft


def links() -> dict[str, int]:
    counts = {"links": 0, "veths": 0, "bridges": 0}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            counts["links"] += 1
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if kind in ("veth", "bridge"):
                counts[f"{kind}s"] += 1
    return counts


def table(name: str) -> dict[str, int]:
    if not nft.table_exists(name):
        return {"nft_chains": 0, "nft_rules": 0, "nft_dnat_rules": 0}
    items: list[dict[str, Any]] = nft.list_table(name).get("nftables", [])
    rules = [item["rule"] for item in items if "rule" in item]
    return {
        "nft_chains": sum("chain" in item for item in items),
        "nft_rules": len(rules),
        "nft_dnat_rules": sum(any("dnat" in stmt for stmt in rule["expr"]) for rule in rules),
    }


def main() -> None:
    print(json.dumps({**links(), **table(sys.argv[1])}))


if __name__ == "__main__":
    main()
