"""The RuntimeService's "streaming" part: Exec, Attach and PortForward answer URLs of the
streaming server (`server.StreamServer`), which then serves the client's connection.

Each RPC checks its request first, in the words kubelet's streaming server and containerd use:
- Exec: `cmd` not empty, `container_id` given, not `tty` with `stderr` ("tty and stderr cannot
  both be true"), one of stdin/stdout/stderr ("one of stdin, stdout, or stderr must be set"),
  the container known (NotFound) and running (FailedPrecondition "container is in
  CONTAINER_EXITED state", as ExecSync);
- Attach: the same, without `cmd`;
- PortForward: `pod_sandbox_id` given, the sandbox known and ready ("sandbox container X is
  not running"); the payload is a `PodTarget` (its id and its network namespace's pin, "" for
  a pod on the host's network).
Then the request is kept under a token (`tokens`; RESOURCE_EXHAUSTED "maximum number of
in-flight requests exceeded" when 1000 wait) and the URL is answered. The server starts at the
first such call, on `[cri] stream_server_address`:`stream_server_port` (TLS with
`stream_tls_cert`/`stream_tls_key`), its tokens living `stream_idle_timeout` seconds.

`routes(server, part)` is where the protocol modules meet the server: each adds its
`server.route(kind, upgrade, handler)` calls there (exec and attach over SPDY:
`remotecommand.handler(processes.exec | processes.attach)`, over WebSocket:
`websocket.remotecommand_handler(...)`; port-forward: `portforward.serve_spdy`,
`wsportforward.handler`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from supervisor import errors
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.cri.model import SandboxState
from supervisor.cri.streaming import portforward, remotecommand, websocket, wsportforward
from supervisor.cri.streaming.process import Processes
from supervisor.cri.streaming.server import StreamServer, tls_context
from supervisor.cri.streaming.tokens import Full, Tokens

if TYPE_CHECKING:
    from supervisor.cri.build import CriDeps
    from supervisor.cri.model import SandboxLookup

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class PodTarget:
    """What a port-forward URL serves: the sandbox, its network namespace's pin and the
    request's ports (WebSocket channel pairs use them when the URL's query names none)."""

    sandbox_id: str
    netns: str
    ports: tuple[int, ...] = ()


class Streaming:
    def __init__(
        self, server: StreamServer, processes: Processes, sandboxes: SandboxLookup
    ) -> None:
        self.server = server
        self.processes = processes
        self._sandboxes = sandboxes
        routes(server, self)

    async def Exec(self, request: cri.ExecRequest, context: Context) -> Any:
        if not request.cmd:
            raise errors.InvalidArgument("cmd must not be empty", plain=True)
        _check_stdio(request.container_id, request.tty, request.stdin, request.stdout,
                     request.stderr)  # fmt: skip
        await self.processes.running_task(request.container_id)
        return cri.ExecResponse(url=await self._url("exec", request, context))

    async def Attach(self, request: cri.AttachRequest, context: Context) -> Any:
        _check_stdio(request.container_id, request.tty, request.stdin, request.stdout,
                     request.stderr)  # fmt: skip
        await self.processes.running_task(request.container_id)
        return cri.AttachResponse(url=await self._url("attach", request, context))

    async def PortForward(self, request: cri.PortForwardRequest, context: Context) -> Any:
        if not request.pod_sandbox_id:
            raise errors.InvalidArgument("missing required pod_sandbox_id", plain=True)
        sandbox = await self._sandboxes.get(request.pod_sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise errors.FailedPrecondition(
                f'sandbox container "{sandbox.id}" is not running', plain=True
            )
        network = sandbox.namespaces
        netns = "" if network.host_network else network.network
        target = PodTarget(sandbox.id, netns, tuple(request.port))
        return cri.PortForwardResponse(url=await self._url("portforward", target, context))

    async def _url(self, kind: str, payload: Any, context: Context) -> str:
        try:
            return await self.server.url(kind, payload)
        except Full:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "maximum number of in-flight requests exceeded"
            )
            raise AssertionError("unreachable") from None


def _check_stdio(container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if not container_id:
        raise errors.InvalidArgument("missing required container_id", plain=True)
    if tty and stderr:
        raise errors.InvalidArgument("tty and stderr cannot both be true", plain=True)
    if not (stdin or stdout or stderr):
        raise errors.InvalidArgument("one of stdin, stdout, or stderr must be set", plain=True)


def routes(server: StreamServer, part: Streaming) -> None:
    """Every protocol's handlers on the server (see the module docstring)."""
    server.route("exec", "spdy", remotecommand.handler(part.processes.exec))
    server.route("attach", "spdy", remotecommand.handler(part.processes.attach))
    server.route("exec", "websocket", websocket.remotecommand_handler(part.processes.exec))
    server.route("attach", "websocket", websocket.remotecommand_handler(part.processes.attach))
    server.route("portforward", "spdy", portforward.serve_spdy)
    server.route("portforward", "websocket", wsportforward.handler)


def build(deps: CriDeps) -> Streaming:
    from supervisor.cri import build as cri_build

    config = deps.config.cri
    tls = None
    if config.stream_tls_cert:
        tls = tls_context(config.stream_tls_cert, config.stream_tls_key)
    server = StreamServer(
        config.stream_server_address,
        config.stream_server_port,
        Tokens(ttl=float(config.stream_idle_timeout)),
        tls,
    )
    namespace = config.namespace
    fifos = Path(deps.state) / "cri" / "streams"
    shutil.rmtree(fifos, ignore_errors=True)  # FIFOs a killed daemon left
    processes = Processes(
        namespace,
        cri_build.container_lookup(deps),
        deps.tasks,
        lambda: deps.containers(namespace),
        fifos,
        Path(deps.state),
    )
    return Streaming(server, processes, cri_build.sandbox_lookup(deps))
