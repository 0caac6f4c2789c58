"""RuntimeService.Status' NetworkReady follows the CNI conf dir at each call (no restart, no
watcher): the `network` part is `supervisor.network.cni`'s pod network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.config import CriConfig
from supervisor.cri.runtime_service import CriParts, RuntimeService
from supervisor.metadata.db import Database
from supervisor.network.cni.pod import CniPodNetwork

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [{"type": "bridge", "bridge": "cni9", "ipam": {"type": "host-local"}}],
}


def statuses(tmp_path: Path, steps: list[Any]) -> list[tuple[bool, str, dict[str, str]]]:
    """Status (verbose) after each step, from one RuntimeService all along."""
    conf_dir = tmp_path / "net.d"

    async def main() -> list[tuple[bool, str, dict[str, str]]]:
        db = await Database.open(tmp_path / "meta.db")
        config = CriConfig(cni_conf_dir=str(conf_dir), cni_bin_dirs=["/usr/lib/cni"])
        network = CniPodNetwork(db, str(conf_dir), config.cni_plugin_dirs(), str(tmp_path))
        service = RuntimeService(config, "test", CriParts({"network": lambda: network}))
        seen = []
        try:
            for step in steps:
                step(conf_dir)
                answer = await service.Status(cri.StatusRequest(verbose=True), None)  # type: ignore[arg-type]
                net = {c.type: c for c in answer.status.conditions}["NetworkReady"]
                seen.append((net.status, net.message, dict(answer.info)))
        finally:
            await db.close()
        return seen

    return asyncio.run(main())


def nothing(conf_dir: Path) -> None:
    pass


def make_dir(conf_dir: Path) -> None:
    conf_dir.mkdir()


def write(conf_dir: Path) -> None:
    (conf_dir / "10-podnet.conflist").write_text(json.dumps(CONFLIST))


def break_it(conf_dir: Path) -> None:
    (conf_dir / "05-broken.conflist").write_text('{"name": "x", "plugins": [')


def remove_all(conf_dir: Path) -> None:
    for path in conf_dir.iterdir():
        path.unlink()


def test_network_ready_turns_true_when_a_conflist_appears_and_back(tmp_path: Path):
    seen = statuses(tmp_path, [nothing, make_dir, write, break_it, remove_all])
    ready = [s[0] for s in seen]
    assert ready == [False, False, True, False, False]
    # no dir yet, then an empty dir: containerd's words, and why
    assert seen[0][1].startswith("Network plugin returns error: cni plugin not initialized")
    assert seen[1][1] == (
        "Network plugin returns error: cni plugin not initialized: "
        f"no network config found in {tmp_path / 'net.d'}"
    )
    assert seen[2][1] == ""
    # a broken first file names itself and the parse error
    assert (
        f"failed to load CNI config list file {tmp_path / 'net.d' / '05-broken.conflist'}"
        in (seen[3][1])
    )
    assert "error parsing configuration list" in seen[3][1]


def test_verbose_info_shows_the_loaded_networks_as_containerd(tmp_path: Path):
    seen = statuses(tmp_path, [make_dir, write, break_it])
    loaded = json.loads(seen[1][2]["cniconfig"])
    assert loaded["PluginDirs"] == ["/usr/lib/cni"]
    assert loaded["PluginConfDir"] == str(tmp_path / "net.d")
    assert [(n["Config"]["Name"], n["IFName"]) for n in loaded["Networks"]] == [
        ("cni-loopback", "lo"),
        ("podnet", "eth0"),
    ]
    assert json.loads(loaded["Networks"][1]["Config"]["Source"]) == CONFLIST
    assert seen[1][2]["lastCNILoadStatus"] == "OK"
    assert seen[2][2]["lastCNILoadStatus"].startswith(
        "cni config load failed: cni plugin not initialized: failed to load CNI config list"
    )
    assert json.loads(seen[2][2]["cniconfig"])["Networks"] == []
