"""The pod sandboxes with a fake pod network (`model.PodNetwork`), real pins and a real
metadata store: setup gets the pinned netns and the pod's ports and DNS, a failed setup is
undone (teardown, pins, files, record, name), stop tears down, recovery reconciles.

Runs as root (the pins are real namespaces, bind-mounted under a temporary state dir).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.cri import model, podfiles
from supervisor.cri.sandboxes import Places, Sandboxes
from supervisor.cri.sandboxstore import SandboxStore
from supervisor.errors import Unknown
from supervisor.events import Exchange
from supervisor.metadata.containers import ContainerStore
from supervisor.metadata.db import Database
from supervisor.network import netlink


@dataclass
class FakeNetwork:
    fail: bool = False
    setups: list[tuple[model.PodRef, str, Sequence[model.PortMapping], Any]] = field(
        default_factory=list
    )
    teardowns: list[tuple[str, str]] = field(default_factory=list)
    reconciled: list[set[str]] = field(default_factory=list)
    netns_had_lo: list[bool] = field(default_factory=list)
    gate: asyncio.Event | None = None  # setup waits for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # a setup began

    def status(self) -> model.NetworkStatus:
        return model.NetworkStatus(True)

    async def setup(
        self,
        pod: model.PodRef,
        netns: str,
        ports: Sequence[model.PortMapping],
        dns: model.DnsConfig | None,
        annotations: Mapping[str, str],
    ) -> model.PodAddress:
        self.setups.append((pod, netns, ports, dns))
        self.netns_had_lo.append(netlink.is_pinned(Path(netns)))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise Unknown("plugin type=bridge failed (add): boom", plain=True)
        return model.PodAddress("10.22.0.5", ("fd00::5",), '{"cniVersion": "1.0.0"}')

    async def teardown(self, sandbox_id: str, netns: str) -> None:
        self.teardowns.append((sandbox_id, netns))

    async def reconcile(self, live: set[str]) -> None:
        self.reconciled.append(live)


class NoContainers:
    async def stop_pod(self, sandbox_id: str) -> None:
        pass

    async def remove_pod(self, sandbox_id: str) -> None:
        pass


@dataclass
class World:
    sandboxes: Sandboxes
    network: FakeNetwork
    places: Places
    db: Database


Body = Callable[[World, Callable[[], Sandboxes]], Awaitable[None]]


def run(tmp_path: Path, body: Body) -> None:
    """`body(world, make)` on a fresh world (`make()`: another Sandboxes on the same store,
    as a restarted daemon); every pin it left is removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("these tests pin namespaces: they run as root")
    places = Places(tmp_path / "root" / "sandboxes", tmp_path / "state" / "sandboxes")

    async def main() -> None:
        db = await Database.open(tmp_path / "meta.db")
        network = FakeNetwork()

        def make() -> Sandboxes:
            store = SandboxStore(lambda: ContainerStore(db, "k8s.io"))
            return Sandboxes(
                "k8s.io", "unused/pause", places, store, None,  # type: ignore[arg-type]
                lambda: None, lambda: network, NoContainers(), Exchange(),
            )  # fmt: skip

        try:
            await body(World(make(), network, places, db), make)
        finally:
            await db.close()

    try:
        asyncio.run(main())
    finally:
        for pins in places.pins.glob("*"):
            podfiles.unmount_shm(pins / "shm")
            for kind in ("net", "ipc", "uts"):
                netlink.netns_remove(pins / kind)
            netlink.netns_release_dir(pins)


def pod(name: str = "web", **extra: Any) -> cri.RunPodSandboxRequest:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="ns", uid="uid-1", attempt=0),
        port_mappings=[cri.PortMapping(protocol=cri.UDP, container_port=53, host_port=5353)],
        dns_config=cri.DNSConfig(servers=["10.96.0.10"], searches=["ns.svc"]),
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)
            )
        ),
        **extra,
    )
    return cri.RunPodSandboxRequest(config=config)


def test_setup_gets_the_pinned_netns_ports_and_dns_and_stop_tears_it_down(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        sid = (await w.sandboxes.RunPodSandbox(pod(), None)).pod_sandbox_id
        [(ref, netns, ports, dns)] = w.network.setups
        assert ref == model.PodRef(sid, "web", "ns", "uid-1")
        assert netns == str(w.places.pins / sid / "net")
        assert w.network.netns_had_lo == [True]  # pinned before setup ran
        assert ports == [model.PortMapping("udp", 53, 5353, "")]
        assert dns == model.DnsConfig(("10.96.0.10",), ("ns.svc",), ())
        record = await w.sandboxes.get(sid[:12])
        assert (record.ip, record.additional_ips) == ("10.22.0.5", ("fd00::5",))
        status = await w.sandboxes.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), None
        )
        assert status.status.network.ip == "10.22.0.5"
        assert '"cniVersion": "1.0.0"' in status.info["info"]

        await w.sandboxes.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), None)
        assert w.network.teardowns == [(sid, netns)]
        assert not netlink.is_pinned(Path(netns))
        await w.sandboxes.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), None)
        await w.sandboxes.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), None)
        assert w.network.teardowns == [(sid, netns)]  # torn down once
        assert list(w.places.pins.iterdir()) == []
        assert list(w.places.files.iterdir()) == []

    run(tmp_path, body)


def test_a_failed_setup_is_undone_and_frees_the_name(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        w.network.fail = True
        with pytest.raises(Unknown, match="boom"):
            await w.sandboxes.RunPodSandbox(pod(), None)
        [(_, netns, _, _)] = w.network.setups
        sid = Path(netns).parent.name
        assert w.network.teardowns == [(sid, netns)]
        assert list(w.places.pins.iterdir()) == []
        assert list(w.places.files.iterdir()) == []
        assert await w.sandboxes.list() == []
        assert await ContainerStore(w.db, "k8s.io").list() == []
        w.network.fail = False
        again = (await w.sandboxes.RunPodSandbox(pod(), None)).pod_sandbox_id  # name free
        assert again != sid

    run(tmp_path, body)


def test_a_name_taken_is_refused_and_a_retry_in_flight_joins_the_first(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        first, second = await asyncio.gather(
            w.sandboxes.RunPodSandbox(pod(), None), w.sandboxes.RunPodSandbox(pod(), None)
        )
        assert first.pod_sandbox_id == second.pod_sandbox_id
        assert len(w.network.setups) == 1
        with pytest.raises(Unknown) as refused:
            await w.sandboxes.RunPodSandbox(pod(), None)
        name = "web_ns_uid-1_0"
        assert str(refused.value) == (
            f'failed to reserve sandbox name "{name}": '
            f'name "{name}" is reserved for "{first.pod_sandbox_id}"'
        )

    run(tmp_path, body)


def test_recovery_undoes_an_unfinished_run_and_reconciles_the_rest(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        kept = (await w.sandboxes.RunPodSandbox(pod("kept"), None)).pod_sandbox_id
        cut = (await w.sandboxes.RunPodSandbox(pod("cut"), None)).pod_sandbox_id
        # As if the daemon had died in the middle of the second RunPodSandbox.
        store = SandboxStore(lambda: ContainerStore(w.db, "k8s.io"))
        await store.load()
        from dataclasses import replace

        await store.put(replace(store.find(cut), creating=True))

        again = make()
        listed = (await again.ListPodSandbox(cri.ListPodSandboxRequest(), None)).items
        assert [(p.id, p.state) for p in listed] == [(kept, cri.SANDBOX_READY)]
        assert (cut, str(w.places.pins / cut / "net")) in w.network.teardowns
        assert w.network.reconciled == [{kept}]
        assert sorted(p.name for p in w.places.pins.iterdir()) == [kept]
        assert not (w.places.files / cut).exists()

    run(tmp_path, body)


def test_a_caller_giving_up_leaves_the_creation_to_its_retry(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        w.network.gate = asyncio.Event()
        first = asyncio.create_task(w.sandboxes.RunPodSandbox(pod(), None))
        await w.network.entered.wait()
        first.cancel()  # kubelet's deadline: its call goes, the creation stays
        retry = asyncio.create_task(w.sandboxes.RunPodSandbox(pod(), None))
        await asyncio.sleep(0.05)
        w.network.gate.set()
        sid = (await retry).pod_sandbox_id
        assert [(r.id, r.state) for r in await w.sandboxes.list()] == [
            (sid, model.SandboxState.READY)
        ]
        assert len(w.network.setups) == 1
        assert w.network.teardowns == []

    run(tmp_path, body)


def test_a_stop_during_the_run_waits_for_its_end(tmp_path: Path) -> None:
    async def body(w: World, make: Callable[[], Sandboxes]) -> None:
        w.network.gate = asyncio.Event()
        running = asyncio.create_task(w.sandboxes.RunPodSandbox(pod(), None))
        await w.network.entered.wait()
        [record] = await w.sandboxes.list()
        stop = cri.StopPodSandboxRequest(pod_sandbox_id=record.id)
        stopping = asyncio.create_task(w.sandboxes.StopPodSandbox(stop, None))
        await asyncio.sleep(0.05)
        assert not stopping.done()
        assert w.network.teardowns == []  # not under the setup's feet
        w.network.gate.set()
        assert (await running).pod_sandbox_id == record.id
        await stopping
        assert w.network.teardowns == [(record.id, record.namespaces.network)]
        [stopped] = await w.sandboxes.list()
        assert stopped.state == model.SandboxState.NOTREADY

    run(tmp_path, body)
