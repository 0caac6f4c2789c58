"""What a pod's network costs through CNI (`supervisor.network.cni`): one setup (the record,
the ADDs of loopback and of the pod network side by side, the results stored) and one
teardown (the DELs, the records removed), with the real plugins, medians of `--runs`.

The network is the one containerd's CRI tests use (bridge + host-local + portmap, as
`../shared/tools/cri/anchor-containerd.sh` writes it) on a bridge `ctrdb<pid>` and a /24 in
10.80-89.x clear of the host's routes; each run's namespace is pinned in a temporary dir.
Two rounds: a pod without a hostPort (portmap has nothing to do) and one with one (portmap
writes its chain). Also the cost of `status()` (Status' NetworkReady) on an unchanged dir.
Everything is removed at the end (pins, bridge, state). Run as root with ctrd's interpreter:
`/opt/ctrd/bin/python bench/cni.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.cri.model import PodRef, PortMapping
from supervisor.metadata.db import Database
from supervisor.network import netlink
from supervisor.network.cni.pod import CniPodNetwork

BIN_DIRS = [d for d in ("/opt/cni/bin", "/usr/lib/cni") if Path(d).is_dir()]


def subnet() -> str:
    pid = os.getpid()
    taken = netlink.host_taken_prefixes()
    for n in range(256):
        net = ipaddress.ip_network(f"10.{80 + pid % 10}.{(pid // 10 + n) % 256}.0/24")
        if not any(net.overlaps(p) for p in taken):
            return str(net)
    raise SystemExit("no free subnet in 10.80-89.x.0/24")


def conflist(name: str, bridge: str, base: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": str(base / "ipam"),
                    "ranges": [[{"subnet": subnet()}]], "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }  # fmt: skip


async def rounds(base: Path, runs: int) -> dict[str, float]:
    db = await Database.open(base / "meta.db")
    network = CniPodNetwork(db, str(base / "net.d"), BIN_DIRS, str(base / "cache"))
    pins = base / "pins"
    out: dict[str, float] = {}
    try:
        for label, ports in (("no_port", []), ("host_port", [PortMapping("tcp", 80, 28999)])):
            adds: list[float] = []
            dels: list[float] = []
            for i in range(runs + 1):  # the first run makes the bridge: not counted
                sandbox = secrets.token_hex(32)
                pin = pins / f"p{i}"
                netlink.netns_create(pin)
                pod = PodRef(sandbox, f"bench{i}", "default", f"uid{i}")
                started = time.perf_counter()
                await network.setup(pod, str(pin), ports, None, {})
                added = time.perf_counter()
                await network.teardown(sandbox, str(pin))
                deleted = time.perf_counter()
                netlink.netns_remove(pin)
                if i:
                    adds.append(added - started)
                    dels.append(deleted - added)
            out[f"{label}_add_ms"] = round(statistics.median(adds) * 1000, 1)
            out[f"{label}_del_ms"] = round(statistics.median(dels) * 1000, 1)
        started = time.perf_counter()
        for _ in range(1000):
            network.status()
        out["status_us"] = round((time.perf_counter() - started) * 1000, 1)  # per call: /1000
    finally:
        await db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bridge = f"ctrdb{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory(prefix="ctrd-cni-bench-") as tmp:
        base = Path(tmp)
        (base / "net.d").mkdir()
        (base / "net.d" / "10-bench.conflist").write_text(
            json.dumps(conflist(f"ctrd-bench-{os.getpid()}", bridge, base))
        )
        try:
            result = asyncio.run(rounds(base, args.runs))
        finally:
            pins = base / "pins"
            if pins.exists():
                for pin in pins.iterdir():
                    netlink.netns_remove(pin)
                netlink.netns_release_dir(pins)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    print(json.dumps({"runs": args.runs, **result}))


if __name__ == "__main__":
    main()
