"""runtime.v1.RuntimeService: what ctrd's CRI serves of it so far.

- Version: the CRI's API version "0.1.0" (what kubelet expects), runtime "ctrd" at the
  daemon's version, runtime API "v1".
- Status: `RuntimeReady` true (the daemon answers), `NetworkReady` false with containerd's
  reason and message for a runtime without a loaded CNI config (`NetworkPluginNotReady`,
  "Network plugin returns error: cni plugin not initialized"): pod networking through CNI is
  not there yet, so it is false whatever the conf dir holds. Verbose: `config` (the `[cri]`
  section), `cniconfig` and `lastCNILoadStatus`, JSON and text as containerd's keys.
- Every other method (sandboxes, containers, exec, stats, UpdateRuntimeConfig, ...) is not
  written yet: the generated base class raises NotImplementedError, which the registrar answers
  UNIMPLEMENTED ("/runtime.v1.RuntimeService/X is not implemented by ctrd"), never a fake
  success.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grpc

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from supervisor.config import CriConfig

Context = grpc.aio.ServicerContext[Any, Any]

KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "ctrd"
RUNTIME_API_VERSION = "v1"
RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
NETWORK_NOT_READY_MESSAGE = "Network plugin returns error: cni plugin not initialized"


class RuntimeService(cri_grpc.RuntimeServiceServicer):
    def __init__(self, config: CriConfig, runtime_version: str) -> None:
        self._config = config
        self._version = runtime_version

    async def Version(self, request: cri.VersionRequest, context: Context) -> Any:
        return cri.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self._version,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: cri.StatusRequest, context: Context) -> Any:
        conditions = [
            cri.RuntimeCondition(type=RUNTIME_READY, status=True),
            cri.RuntimeCondition(
                type=NETWORK_READY,
                status=False,
                reason=NETWORK_NOT_READY_REASON,
                message=NETWORK_NOT_READY_MESSAGE,
            ),
        ]
        info = self._verbose_info() if request.verbose else {}
        return cri.StatusResponse(status=cri.RuntimeStatus(conditions=conditions), info=info)

    def _verbose_info(self) -> dict[str, str]:
        cni = {
            "PluginDirs": [self._config.cni_bin_dir],
            "PluginConfDir": self._config.cni_conf_dir,
            "Networks": [],
        }
        return {
            "config": json.dumps(dataclasses.asdict(self._config)),
            "cniconfig": json.dumps(cni),
            "lastCNILoadStatus": (
                "cni config load failed: ctrd does not load CNI network configs yet "
                f"({self._config.cni_conf_dir}): cni plugin not initialized"
            ),
        }
