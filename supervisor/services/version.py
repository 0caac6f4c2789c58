"""containerd.services.version.v1.Version and containerd.services.introspection.v1."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor import filters
from supervisor.api.containerd.services.introspection.v1 import introspection_pb2 as ipb
from supervisor.api.containerd.services.introspection.v1 import (
    introspection_pb2_grpc as ipb_grpc,
)
from supervisor.api.containerd.services.version.v1 import version_pb2 as vpb
from supervisor.api.containerd.services.version.v1 import version_pb2_grpc as vpb_grpc
from supervisor.api.containerd.types import platform_pb2

Context = grpc.aio.ServicerContext[Any, Any]


@functools.cache
def version() -> str:
    from importlib import metadata  # 10 ms of imports a starting daemon need not wait for

    try:
        return metadata.version("ctrd")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


@functools.cache
def revision() -> str:
    """The git commit the daemon runs from, when it runs from a checkout."""
    source = Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


class VersionService(vpb_grpc.VersionServicer):
    async def Version(self, request: empty_pb2.Empty, context: Context) -> Any:
        return vpb.VersionResponse(version=version(), revision=revision())


@dataclass(frozen=True)
class Plugin:
    """One entry of `ctr plugins ls`: what the daemon is made of."""

    type: str
    id: str
    requires: Sequence[str] = ()
    platforms: Sequence[tuple[str, str]] = ()  # (os, architecture)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: Sequence[str] = ()

    def matches(self, selected: filters.Filters) -> bool:
        return selected.matches(
            filters.label_adaptor(
                {"type": self.type, "id": self.id, "capabilities": ",".join(self.capabilities)},
                {},
            )
        )


class IntrospectionService(ipb_grpc.IntrospectionServicer):
    def __init__(self, plugins: Sequence[Plugin], uuid: str) -> None:
        self._plugins = plugins
        self._uuid = uuid

    async def Plugins(self, request: ipb.PluginsRequest, context: Context) -> Any:
        selected = filters.parse_all_wrapped(request.filters)
        return ipb.PluginsResponse(
            plugins=[
                ipb.Plugin(
                    type=p.type,
                    id=p.id,
                    requires=p.requires,
                    platforms=[
                        platform_pb2.Platform(os=os_, architecture=arch)
                        for os_, arch in p.platforms
                    ],
                    exports=p.exports,
                    capabilities=p.capabilities,
                )
                for p in self._plugins
                if p.matches(selected)
            ]
        )

    async def Server(self, request: empty_pb2.Empty, context: Context) -> Any:
        return ipb.ServerResponse(uuid=self._uuid)
