"""What ctrd's nftables table costs as published ports grow: medians, in ms, of

- `apply`: the whole table written (`nft.apply(ruleset)`, as at start or after a flush);
- `update`: one publish changed against the ruleset last applied (`nft.apply(new, previous)`:
  one element deleted, one added), what a container started or removed with `-p` costs;
- `fingerprint`: what the firewall watch reads back after every ruleset change;
- `listing`: nft's JSON listing of the table, what `fingerprint` used to read.

Runs in a network namespace of its own (re-executed under `unshare --net` unless
`--in-namespace`), so the host's ruleset is never touched:
`/opt/ctrd/bin/python bench/nft_publishes.py --sizes 0,100,500,1000`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from supervisor.network import nft

TABLE = "benchpub"
NET = nft.Network("bench", "br-bench", ipaddress.IPv4Network("10.200.0.0/16"))


def publishes(count: int, first_port: int = 10000) -> tuple[nft.Publish, ...]:
    hosts = NET.subnet.hosts()
    next(hosts)  # the gateway's
    return tuple(
        nft.Publish(NET.name, "tcp", None, first_port + i, next(hosts), 80) for i in range(count)
    )


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(count: int, runs: int) -> dict[str, float]:
    base = publishes(count)
    one = nft.Ruleset((NET,), base, TABLE)
    # the same less its last publish, plus one on another port: one element out, one in
    other = nft.Ruleset((NET,), (*base[:-1], *publishes(1, 60000)), TABLE)
    nft.apply(one)
    state = {"now": one}

    def flip() -> None:
        new = other if state["now"] is one else one
        nft.apply(new, previous=state["now"])
        state["now"] = new

    result = {
        "apply": median_ms(lambda: nft.apply(one), runs),
        "update": median_ms(flip, runs),
        "fingerprint": median_ms(lambda: nft.fingerprint(TABLE), runs),
        "listing": median_ms(lambda: nft.list_table(TABLE), runs),
    }
    assert nft.fingerprint(TABLE) == nft.shape(state["now"])
    nft.delete(TABLE)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,100,500,1000")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.in_namespace:
        command = [sys.executable, os.path.abspath(__file__), "--in-namespace", *sys.argv[1:]]
        sys.exit(subprocess.run(["unshare", "--net", *command], check=False).returncode)
    nft.prepare()
    print(f"{'publishes':>9} {'apply':>8} {'update':>8} {'fingerprint':>11} {'listing':>8}  (ms)")
    for size in (int(s) for s in args.sizes.split(",")):
        got = measure(size, args.runs)
        print(f"{size:>9} {got['apply']:>8.2f} {got['update']:>8.2f} "
              f"{got['fingerprint']:>11.2f} {got['listing']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
