"""runtime.v1 on the daemon's server without importing it at start.

The CRI's generated module is large (~10 ms to import); a daemon restarting under running
tasks should not pay that before its first answers. `LazyCri` is one generic handler for every
`/runtime.v1.*` method: at the first such call it imports the generated code, builds the
servicers (through `build`) and keeps their method handlers; calls to other services never
reach it (the server finds their registered handlers first). The registrar wraps what it hands
out like every other handler (errors, UNIMPLEMENTED, one log line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

PREFIX = "/runtime.v1."


class _Capture:
    """A server as the generated `add_*_to_server` see it, keeping each method's handler."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


class LazyCri(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, build: Callable[[], tuple[Any, Any]]) -> None:
        """`build` returns (the RuntimeService servicer, the ImageService servicer)."""
        self._build = build
        self._handlers: dict[str, Handler] | None = None

    def service(self, details: grpc.HandlerCallDetails) -> Handler | None:
        method: str = details.method
        if not method.startswith(PREFIX):
            return None
        if self._handlers is None:
            from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc

            runtime, images = self._build()
            capture = _Capture()
            cri_grpc.add_RuntimeServiceServicer_to_server(runtime, capture)
            cri_grpc.add_ImageServiceServicer_to_server(images, capture)
            self._handlers = capture.handlers
        return self._handlers.get(method)
