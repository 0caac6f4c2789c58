"""`CniPodNetwork`: the CRI's pod network (`supervisor.cri.model.PodNetwork`) through CNI.

A pod is attached to every loaded network (the built-in loopback as `lo`, the conf dir's
first network as `eth0`; `supervisor.network.cni.conf`), their ADDs run side by side. The
order kept for crashes (`supervisor.network.cni.store`):

1. the attachments recorded (network, ifname, its list as loaded, the args): before any
   plugin runs;
2. the ADDs; their results stored once every one succeeded and the pod has an address (the
   first IPv4 of `eth0`: `supervisor.network.cni.result`), libcni's cache files written;
3. a teardown DELs each recorded attachment (the networks side by side) with its own
   recorded list and args (and result as prevResult), and deletes the records of those whose
   DEL succeeded, after them.

So whatever point a crash stops at, the record says what to DEL: `teardown` and `reconcile`
(at the daemon's start, for every recorded sandbox that is not live; never one this daemon
life set up, should a RunPodSandbox race the sandboxes' recovery) finish it, after killing
what plugins of an unfinished ADD outlived the daemon that ran them (`invoke.kill_orphans`).
An ADD that fails half way is DELed at once (the record stays if that DEL fails too). A DEL
runs with `CNI_NETNS` set to the given or the recorded namespace while it is still one (a
bind mount of an nsfs file), else "" (the plugins then release what is outside it:
addresses, iptables rules; what bridge's DEL leaves then, its masquerade rules, is removed
after it: `supervisor.network.cni.masq`); as containerd, a DEL error that says "not found" (or "no
such file or directory" without a namespace) counts as done.

One operation per sandbox at a time (a lock per sandbox id, dropped when unused); different
sandboxes run in parallel.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

from supervisor.cri.model import DnsConfig, NetworkStatus, PodAddress, PodRef, PortMapping
from supervisor.errors import CtrdError, FailedPrecondition, InvalidArgument
from supervisor.keyedlocks import KeyedLocks
from supervisor.metadata.db import Database
from supervisor.network.cni import conf, masq
from supervisor.network.cni.invoke import Call, Plugins, kill_orphans, remove_cache, write_cache
from supervisor.network.cni.result import Result, cni_result, from_raw, pod_ips, select
from supervisor.network.cni.store import Attachment, AttachmentStore

log = structlog.get_logger()

PORT_MAPPINGS = "portMappings"
BANDWIDTH = "bandwidth"
DNS = "dns"
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
MAX_BURST = 2**32 - 1  # containerd's burst with a rate (math.MaxUint32)
RECONCILE_PARALLEL = 8


class CniPodNetwork:
    def __init__(
        self,
        db: Database,
        conf_dir: str,
        bin_dirs: Sequence[str],
        cache_dir: str,
        timeout: float | None = None,
    ) -> None:
        self._conf = conf.ConfDir(conf_dir)
        self._plugins = Plugins(bin_dirs) if timeout is None else Plugins(bin_dirs, timeout)
        self._store = AttachmentStore(db)
        self._cache = cache_dir
        self._locks = KeyedLocks()  # one setup or teardown of a sandbox at a time
        self._mine: set[str] = set()  # set up by this daemon life: never reconcile's to undo

    # status

    def status(self) -> NetworkStatus:
        loaded = self._conf.load()
        return NetworkStatus(loaded.ready, loaded.message, tuple(n.name for n in loaded.networks))

    def verbose_info(self) -> dict[str, str]:
        """Status' verbose `cniconfig` (go-cni's GetConfig) and `lastCNILoadStatus`."""
        loaded = self._conf.load()
        networks = [
            {
                "Config": {
                    "Name": n.name,
                    "CNIVersion": n.cni_version,
                    "Plugins": [{"Network": p.raw, "Source": json.dumps(p.raw)} for p in n.plugins],
                    "Source": n.source.decode(errors="replace"),
                },
                "IFName": n.ifname,
            }
            for n in loaded.networks
        ]
        config = {
            "PluginDirs": list(self._plugins.dirs),
            "PluginConfDir": self._conf.directory,
            "PluginMaxConfNum": 1,
            "Prefix": "eth",
            "Networks": networks,
        }
        last = "OK" if loaded.ready else f"cni config load failed: {loaded.message}"
        return {"cniconfig": json.dumps(config), "lastCNILoadStatus": last}

    # setup and teardown

    async def setup(
        self,
        pod: PodRef,
        netns: str,
        ports: Sequence[PortMapping],
        dns: DnsConfig | None,
        annotations: Mapping[str, str],
    ) -> PodAddress:
        """The pod attached to every loaded network; an error says so as containerd's
        (`failed to setup network for sandbox "ID": ` and the cause)."""
        try:
            return await self._setup(pod, netns, ports, dns, annotations)
        except CtrdError as e:
            e.detail = f'failed to setup network for sandbox "{pod.sandbox_id}": {e.detail}'
            e.args = (e.detail,)
            raise

    async def _setup(
        self,
        pod: PodRef,
        netns: str,
        ports: Sequence[PortMapping],
        dns: DnsConfig | None,
        annotations: Mapping[str, str],
    ) -> PodAddress:
        caps = capability_args(ports, dns, annotations)
        args = cni_args(pod)
        async with self._sandbox(pod.sandbox_id):
            loaded = self._conf.load()
            if not loaded.ready:
                raise FailedPrecondition(loaded.message, plain=True)
            earlier = await self._store.of(pod.sandbox_id)
            if earlier and all(a.result for a in earlier) and earlier[0].netns == netns:
                return address(pod.sandbox_id, [from_raw(json.loads(a.result)) for a in earlier])
            if earlier:  # half made by an attempt that did not finish (or elsewhere): undone
                await self._kill_orphans(pod.sandbox_id, earlier)
                await self._delete(pod.sandbox_id, "", earlier)  # in its own recorded netns
            attachments = [
                Attachment(pod.sandbox_id, n.ifname, i, n.name, netns, n.source, args, caps)
                for i, n in enumerate(loaded.networks)
            ]
            self._mine.add(pod.sandbox_id)
            await self._store.record(attachments)
            try:
                results = await self._add(loaded.networks, attachments)
                found = address(pod.sandbox_id, results)  # no eth0 address: undone too
            except asyncio.CancelledError:
                raise  # the record stays: teardown or reconcile DELs it
            except BaseException:
                try:
                    await self._delete(pod.sandbox_id, netns, attachments)
                except CtrdError as e:
                    log.warning("cni_cleanup_failed", id=pod.sandbox_id, error=str(e))
                raise
            await self._store.set_results(
                pod.sandbox_id,
                {a.ifname: json.dumps(r.raw) for a, r in zip(attachments, results, strict=True)},
            )
            return found

    async def teardown(self, sandbox_id: str, netns: str) -> None:
        async with self._sandbox(sandbox_id):
            attachments = await self._store.of(sandbox_id)
            await self._kill_orphans(sandbox_id, attachments)
            if attachments:
                await self._delete(sandbox_id, netns, attachments)
            self._mine.discard(sandbox_id)

    async def _kill_orphans(self, sandbox_id: str, attachments: Sequence[Attachment]) -> None:
        """An unfinished ADD not of this daemon life: its plugins may outlive the daemon that
        ran them, and are killed before the DEL (see `invoke.kill_orphans`)."""
        if sandbox_id in self._mine or all(a.result for a in attachments):
            return
        if killed := await asyncio.to_thread(kill_orphans, sandbox_id):
            log.warning("cni_orphans_killed", id=sandbox_id, pids=killed)

    async def reconcile(self, live: set[str]) -> None:
        recorded = await self._store.sandboxes()
        gone = [s for s in recorded if s not in live and s not in self._mine]
        limit = asyncio.Semaphore(RECONCILE_PARALLEL)

        async def one(sandbox_id: str) -> None:
            async with limit:
                try:
                    await self.teardown(sandbox_id, "")
                    log.info("cni_reconciled", id=sandbox_id)
                except Exception as e:  # logged: the next start tries again
                    log.warning("cni_reconcile_failed", id=sandbox_id, error=str(e))

        async with asyncio.TaskGroup() as group:
            for sandbox_id in gone:
                group.create_task(one(sandbox_id))

    # the plugins

    async def _add(
        self, networks: Sequence[conf.NetworkList], attachments: Sequence[Attachment]
    ) -> list[Result]:
        """Every network's ADD, side by side; the first error once all have finished."""
        done = await asyncio.gather(
            *(self._add_one(n, a) for n, a in zip(networks, attachments, strict=True)),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return [r for r in done if isinstance(r, Result)]

    async def _add_one(self, network: conf.NetworkList, a: Attachment) -> Result:
        call = Call(a.sandbox, a.netns, a.ifname, a.cni_args, a.capability_args)
        result = await self._plugins.add(network, call)
        await asyncio.to_thread(write_cache, self._cache, network, call, result)
        return result

    async def _delete(self, sandbox_id: str, netns: str, attachments: list[Attachment]) -> None:
        """DEL of every attachment (side by side: the networks are independent), then the
        records of those whose DEL succeeded, in one write; the first error after that."""
        outcomes = await asyncio.gather(
            *(self._delete_attachment(netns, a) for a in attachments), return_exceptions=True
        )
        done = [a.ifname for a, o in zip(attachments, outcomes, strict=True) if o is None]
        if done:
            await self._store.remove(sandbox_id, done)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _delete_attachment(self, netns: str, a: Attachment) -> None:
        path = live_netns(netns, a.netns)
        call = Call(a.sandbox, path, a.ifname, a.cni_args, a.capability_args)
        try:
            network = conf.parse_list(a.config, a.ifname)
        except conf.ConfError as e:
            raise InvalidArgument(f"recorded network {a.network}: {e}") from None
        await self._delete_one(network, call, a.result)
        await asyncio.to_thread(remove_cache, self._cache, a.network, call)

    async def _delete_one(self, network: conf.NetworkList, call: Call, stored: str) -> None:
        try:
            await self._plugins.delete(network, call, stored)
        except CtrdError as e:
            # containerd's leniency (go-cni Remove): a DEL that finds nothing is done
            text = str(e)
            if "not found" in text or (not call.netns and "no such file or directory" in text):
                log.info("cni_del_nothing_there", id=call.container_id, error=text)
                return
            raise
        if not call.netns and masq.masquerades(network):  # what bridge's DEL could not see
            removed = await masq.sweep(network.name, call.container_id)
            if removed:
                log.info("cni_masquerade_removed", id=call.container_id, rules=len(removed))

    def _sandbox(self, sandbox_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(sandbox_id)


def address(sandbox_id: str, results: list[Result]) -> PodAddress:
    ip, additional = select(pod_ips(results))
    if not ip:
        raise FailedPrecondition(
            f'failed to find network info for sandbox "{sandbox_id}"', plain=True
        )
    return PodAddress(ip, additional, json.dumps(cni_result(results)))


def cni_args(pod: PodRef) -> tuple[tuple[str, str], ...]:
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", pod.namespace),
        ("K8S_POD_NAME", pod.name),
        ("K8S_POD_INFRA_CONTAINER_ID", pod.sandbox_id),
        ("K8S_POD_UID", pod.uid),
    )


def capability_args(
    ports: Sequence[PortMapping], dns: DnsConfig | None, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """What the runtime offers the plugins (each gets those it declared): containerd's."""
    caps: dict[str, Any] = {POD_ANNOTATIONS: dict(annotations)}
    mappings = [
        {
            "hostPort": p.host_port,
            "containerPort": p.container_port,
            "protocol": p.protocol.lower(),
            "hostIP": p.host_ip,
        }
        for p in ports
        if p.host_port > 0
    ]
    if mappings:
        caps[PORT_MAPPINGS] = mappings
    bandwidth = bandwidth_args(annotations)
    if bandwidth:
        caps[BANDWIDTH] = bandwidth
    if dns is not None:
        caps[DNS] = {
            "servers": list(dns.servers),
            "searches": list(dns.searches),
            "options": list(dns.options),
        }
    return caps


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def bandwidth_args(annotations: Mapping[str, str]) -> dict[str, int]:
    """The `bandwidth` capability from the pod's annotations (bits per second)."""
    out: dict[str, int] = {}
    for key, prefix in ((INGRESS_ANNOTATION, "ingress"), (EGRESS_ANNOTATION, "egress")):
        if key not in annotations:
            continue
        rate = bits_per_second(annotations[key])
        out[f"{prefix}Rate"] = rate
        out[f"{prefix}Burst"] = MAX_BURST
    return out


def bits_per_second(text: str) -> int:
    """A Kubernetes quantity ("10M", "1Gi") as kubelet reads the bandwidth annotations."""
    m = _QUANTITY.match(text.strip())
    if m is None or m.group(2) not in _SUFFIXES:
        raise InvalidArgument(f"reading pod bandwidth annotations: invalid quantity {text!r}")
    value = int(float(m.group(1)) * _SUFFIXES[m.group(2)])
    if value < 1000:
        raise InvalidArgument(
            f"reading pod bandwidth annotations: resource is unreasonably small (< 1kbit): {text}"
        )
    if value > 10**15:
        raise InvalidArgument(
            f"reading pod bandwidth annotations: resource is unreasonably large (> 1Pbit): {text}"
        )
    return value


@functools.cache
def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def live_netns(*paths: str) -> str:
    """The first of `paths` that is a network namespace still (an nsfs file: its pin still
    mounted), else ""."""
    for path in paths:
        if not path:
            continue
        try:
            if os.stat(path).st_dev == _nsfs_dev():
                return path
        except OSError:
            continue
    return ""
