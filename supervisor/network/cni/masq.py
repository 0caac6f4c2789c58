"""What the bridge plugin leaves when its DEL runs without the pod's namespace: its ipMasq rules.

bridge (containernetworking-plugins 1.1, Debian 12's) finds the addresses to stop
masquerading on the interface inside the namespace; with `CNI_NETNS=""` it releases the
address (IPAM) and returns, leaving in the nat table
`POSTROUTING -s <ip> -m comment --comment 'name: "<net>" id: "<container>"' -j CNI-<hash>`
and the chain `CNI-<hash>`, for good (containerd leaks them the same way). After such a DEL
the runtime removes exactly those: the POSTROUTING rules whose comment names this network and
this container, then the chains they jumped to. Nothing else of the tables is touched.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
from typing import Any

from supervisor.network.cni.conf import NetworkList


def masquerades(network: NetworkList) -> bool:
    """The list has a bridge plugin that masquerades its pods."""
    return any(p.type == "bridge" and p.raw.get("ipMasq") is True for p in network.plugins)


async def sweep(network: str, container_id: str) -> list[str]:
    """Remove the bridge's masquerade rules and chains of `container_id` on `network` (IPv4
    and IPv6); the rules removed."""
    mark = f'--comment "name: \\"{network}\\" id: \\"{container_id}\\""'
    removed: list[str] = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        status, listed = await _run(tool, "-w", "-t", "nat", "-S", "POSTROUTING")
        if status != 0:
            continue
        for line in listed.splitlines():
            if mark not in line or not line.startswith("-A POSTROUTING "):
                continue
            args = shlex.split(line)
            status, _ = await _run(tool, "-w", "-t", "nat", "-D", *args[1:])
            if status != 0:
                continue
            removed.append(line)
            target = args[args.index("-j") + 1] if "-j" in args else ""
            if target.startswith("CNI-") and not target.startswith("CNI-HOSTPORT"):
                await _run(tool, "-w", "-t", "nat", "-F", target)
                await _run(tool, "-w", "-t", "nat", "-X", target)
    return removed


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out: Any
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")
