"""runtime.v1 is served by one lazy handler: nothing of it is imported before its first call."""

from __future__ import annotations

from typing import Any

import grpc

from supervisor.cri.serve import LazyCri


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_servicers_are_built_once_at_the_first_cri_call_and_others_pass_by():
    built: list[Any] = []

    def build() -> tuple[Any, Any]:
        from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
        from supervisor.config import CriConfig
        from supervisor.cri.runtime_service import RuntimeService

        built.append(1)
        return RuntimeService(CriConfig(), "1.0"), cri_grpc.ImageServiceServicer()

    lazy = LazyCri(build)
    assert lazy.service(Details("/containerd.services.tasks.v1.Tasks/List")) is None
    assert built == []
    assert lazy.service(Details("/runtime.v1.RuntimeService/Version")) is not None
    assert lazy.service(Details("/runtime.v1.ImageService/PullImage")) is not None
    assert lazy.service(Details("/runtime.v1.RuntimeService/NoSuchCall")) is None
    assert built == [1]
