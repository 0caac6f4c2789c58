"""UpdateRuntimeConfig: the pod CIDRs kubelet pushes are checked, kept and shown by Status."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.config import CriConfig
from supervisor.cri.runtime_service import RuntimeService
from supervisor.errors import Unknown


def _push(service: RuntimeService, cidrs: str) -> Any:
    request = cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=cidrs))
    )
    return asyncio.run(service.UpdateRuntimeConfig(request, None))


def _shown(service: RuntimeService) -> Any:
    status = asyncio.run(service.Status(cri.StatusRequest(verbose=True), None))
    return json.loads(status.info["podCIDRs"])


def test_pushed_pod_cidrs_are_kept_and_shown_in_verbose_status():
    service = RuntimeService(CriConfig(), "test")
    assert _shown(service) == []
    assert _push(service, "10.244.1.0/24, fd00:1::/64") == cri.UpdateRuntimeConfigResponse()
    assert _shown(service) == ["10.244.1.0/24", "fd00:1::/64"]


def test_an_empty_push_changes_nothing():
    service = RuntimeService(CriConfig(), "test")
    _push(service, "10.244.1.0/24")
    _push(service, "")
    assert _shown(service) == ["10.244.1.0/24"]


@pytest.mark.parametrize("bad", ["10.244.1.0", "nonsense/24", "10.0.0.0/33", "10.0.0.0/255.0.0.0"])
def test_a_bad_cidr_fails_in_containerds_words_and_keeps_the_last_good_one(bad: str):
    service = RuntimeService(CriConfig(), "test")
    _push(service, "10.244.1.0/24")
    with pytest.raises(Unknown, match=f"get routes: invalid CIDR address: {bad}"):
        _push(service, f"10.244.2.0/24,{bad}")
    assert _shown(service) == ["10.244.1.0/24"]
