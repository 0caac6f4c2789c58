"""The kernel's networking objects in the network namespace this runs in, as one JSON line.

bench/network.py runs it inside ctrd's namespace (`nsenter --net=/proc/PID/ns/net -- python
bench/netns_objects.py TABLE`), since netlink and nftables answer for the caller's namespace:

- links, and of them veths and bridges (pyroute2, as ctrd's own netlink code);
- ctrd's nftables table `inet TABLE` (`supervisor.network.nft.fingerprint`, netlink dumps):
  chains, rules, and the elements of its maps of published ports (one per published port);
  all 0 when the table is absent.
"""

from __future__ import annotations

import json
import sys

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
    shape = nft.fingerprint(name)
    if shape is None:
        return {"nft_chains": 0, "nft_rules": 0, "nft_port_elements": 0}
    return {
        "nft_chains": shape.chains,
        "nft_rules": shape.rules,
        "nft_port_elements": shape.elements,
    }


def main() -> None:
    print(json.dumps({**links(), **table(sys.argv[1])}))


if __name__ == "__main__":
    main()
