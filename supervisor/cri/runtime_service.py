"""runtime.v1.RuntimeService: what ctrd's CRI serves of it so far.

- Version: the CRI's API version "0.1.0" (what kubelet expects), runtime "ctrd" at the
  daemon's version, runtime API "v1".
- Status: `RuntimeReady` true (the daemon answers), `NetworkReady` as the `network` part
  (`supervisor.network.cni`, the pod network) finds the CNI conf dir at this very call (it
  stats the dir and its files, parses only what changed): false with containerd's reason and
  message while no network loads (`NetworkPluginNotReady`, "Network plugin returns error: cni
  plugin not initialized", then why: no file, which file does not parse). Verbose: `config`
  (the `[cri]` section), `cniconfig` (go-cni's view: dirs, networks, their sources) and
  `lastCNILoadStatus` ("OK" or the load's error), JSON and text as containerd's keys, and
  `podCIDRs` (JSON list: what kubelet last pushed).
- UpdateRuntimeConfig: kubelet pushes the node's pod CIDRs ("a,b"); they are checked (a bad
  one fails with containerd's "get routes: invalid CIDR address: X"), kept in memory and shown
  in Status' verbose info. Nothing renders a CNI conf from them (containerd does so only with
  `conf_template` set, which ctrd has not): the CNI conflist is the cluster's to write.
- The pod and container calls are served by the parts in `CriParts`, each built at its first
  call: `sandboxes` (`supervisor.cri.sandboxes`), `containers` (`supervisor.cri.containers`),
  `exec` (ExecSync: `supervisor.cri.execsync`), `stats` (the stats calls and
  UpdateContainerResources: `supervisor.cri.stats`), `streaming` (Exec, Attach and
  PortForward: the URLs of the streaming server, `supervisor.cri.streaming`). A part that is
  not there raises NotImplementedError, which the registrar answers UNIMPLEMENTED
  ("/runtime.v1.RuntimeService/X is not implemented by ctrd"), never a fake success; so do
  the calls no part serves yet (checkpoints, events, metrics).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import grpc

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from supervisor.config import CriConfig
from supervisor.errors import Unknown

Context = grpc.aio.ServicerContext[Any, Any]

KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "ctrd"
RUNTIME_API_VERSION = "v1"
RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
NETWORK_NOT_READY_MESSAGE = "Network plugin returns error: cni plugin not initialized"


class CriParts:
    """The RuntimeService's parts by name, each built by its builder at its first use."""

    def __init__(self, builders: dict[str, Callable[[], Any]]) -> None:
        self._builders = builders
        self._built: dict[str, Any] = {}

    def part(self, name: str) -> Any:
        if name not in self._built:
            build = self._builders.get(name)
            if build is None:
                raise NotImplementedError(name)
            self._built[name] = build()
        return self._built[name]


class RuntimeService(cri_grpc.RuntimeServiceServicer):
    def __init__(
        self, config: CriConfig, runtime_version: str, parts: CriParts | None = None
    ) -> None:
        self._config = config
        self._version = runtime_version
        self._parts = parts or CriParts({})
        self._pod_cidrs: list[str] = []

    async def Version(self, request: cri.VersionRequest, context: Context) -> Any:
        return cri.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self._version,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: cri.StatusRequest, context: Context) -> Any:
        network = self._network()
        ready = network.status() if network is not None else None
        if ready is not None and ready.ready:
            net = cri.RuntimeCondition(type=NETWORK_READY, status=True)
        else:
            why = ready.message if ready is not None else "cni plugin not initialized"
            net = cri.RuntimeCondition(
                type=NETWORK_READY,
                status=False,
                reason=NETWORK_NOT_READY_REASON,
                message=f"Network plugin returns error: {why}",
            )
        conditions = [cri.RuntimeCondition(type=RUNTIME_READY, status=True), net]
        info = self._verbose_info(network) if request.verbose else {}
        return cri.StatusResponse(status=cri.RuntimeStatus(conditions=conditions), info=info)

    def _network(self) -> Any:
        """The pod network part (CNI), None when the daemon has none."""
        try:
            return self._parts.part("network")
        except NotImplementedError:
            return None

    def _verbose_info(self, network: Any) -> dict[str, str]:
        if network is not None:
            cni: dict[str, str] = network.verbose_info()
        else:
            plugin_dirs = self._config.cni_plugin_dirs()
            cni = {
                "cniconfig": json.dumps(
                    {"PluginDirs": plugin_dirs, "PluginConfDir": self._config.cni_conf_dir}
                ),
                "lastCNILoadStatus": "cni config load failed: cni plugin not initialized",
            }
        return {
            "config": json.dumps(dataclasses.asdict(self._config)),
            **cni,
            "podCIDRs": json.dumps(self._pod_cidrs),
        }

    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: Context
    ) -> Any:
        text = request.runtime_config.network_config.pod_cidr
        if text:
            cidrs = [c.strip() for c in text.split(",")]
            for cidr in cidrs:
                if not _is_cidr(cidr):
                    raise Unknown(f"get routes: invalid CIDR address: {cidr}")
            self._pod_cidrs = cidrs
        return cri.UpdateRuntimeConfigResponse()

    async def RunPodSandbox(self, request: Any, context: Context) -> Any:
        return await self._parts.part("sandboxes").RunPodSandbox(request, context)

    async def StopPodSandbox(self, request: Any, context: Context) -> Any:
        return await self._parts.part("sandboxes").StopPodSandbox(request, context)

    async def RemovePodSandbox(self, request: Any, context: Context) -> Any:
        return await self._parts.part("sandboxes").RemovePodSandbox(request, context)

    async def PodSandboxStatus(self, request: Any, context: Context) -> Any:
        return await self._parts.part("sandboxes").PodSandboxStatus(request, context)

    async def ListPodSandbox(self, request: Any, context: Context) -> Any:
        return await self._parts.part("sandboxes").ListPodSandbox(request, context)

    async def CreateContainer(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").CreateContainer(request, context)

    async def StartContainer(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").StartContainer(request, context)

    async def StopContainer(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").StopContainer(request, context)

    async def RemoveContainer(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").RemoveContainer(request, context)

    async def ListContainers(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").ListContainers(request, context)

    async def ContainerStatus(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").ContainerStatus(request, context)

    async def ReopenContainerLog(self, request: Any, context: Context) -> Any:
        return await self._parts.part("containers").ReopenContainerLog(request, context)

    async def ExecSync(self, request: Any, context: Context) -> Any:
        return await self._parts.part("exec").ExecSync(request, context)

    async def UpdateContainerResources(self, request: Any, context: Context) -> Any:
        return await self._parts.part("stats").UpdateContainerResources(request, context)

    async def ContainerStats(self, request: Any, context: Context) -> Any:
        return await self._parts.part("stats").ContainerStats(request, context)

    async def ListContainerStats(self, request: Any, context: Context) -> Any:
        return await self._parts.part("stats").ListContainerStats(request, context)

    async def PodSandboxStats(self, request: Any, context: Context) -> Any:
        return await self._parts.part("stats").PodSandboxStats(request, context)

    async def ListPodSandboxStats(self, request: Any, context: Context) -> Any:
        return await self._parts.part("stats").ListPodSandboxStats(request, context)

    async def Exec(self, request: Any, context: Context) -> Any:
        return await self._parts.part("streaming").Exec(request, context)

    async def Attach(self, request: Any, context: Context) -> Any:
        return await self._parts.part("streaming").Attach(request, context)

    async def PortForward(self, request: Any, context: Context) -> Any:
        return await self._parts.part("streaming").PortForward(request, context)


def _is_cidr(text: str) -> bool:
    """ADDRESS/BITS, as Go's net.ParseCIDR takes it (no bare address, no netmask form)."""
    address, slash, bits = text.partition("/")
    if not (slash and bits.isdigit()):
        return False
    try:
        ipaddress.ip_network(f"{address}/{int(bits)}", strict=False)
    except ValueError:
        return False
    return True
