"""UpdateContainerResources' merge of new resources into a stored OCI spec (containerd's rules)."""

from __future__ import annotations

from typing import Any

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.cri import resources
from supervisor.cri.resources import HostLimits

BOTH = HostLimits(swap=True, hugetlb=True)
NEITHER = HostLimits(swap=False, hugetlb=False)

SPEC: dict[str, Any] = {
    "process": {"args": ["sh"], "oomScoreAdj": 500},
    "linux": {
        "cgroupsPath": "/k8s.io/abc",
        "resources": {
            "devices": [{"allow": False, "access": "rwm"}],
            "cpu": {"shares": 2, "period": 100000, "quota": 50000, "cpus": "0"},
            "memory": {"limit": 100 << 20, "swap": 100 << 20},
            "unified": {"memory.high": "max"},
        },
    },
}


def test_set_fields_replace_the_specs_and_zero_fields_leave_them():
    linux = cri.LinuxContainerResources(cpu_shares=512, cpuset_mems="0")
    new = resources.updated_spec(SPEC, linux, BOTH, None)
    r = new["linux"]["resources"]
    assert r["cpu"] == {"shares": 512, "period": 100000, "quota": 50000, "cpus": "0", "mems": "0"}
    assert r["memory"] == {"limit": 100 << 20, "swap": 100 << 20}
    assert r["devices"] == SPEC["linux"]["resources"]["devices"]
    assert new["process"]["oomScoreAdj"] == 500  # 0 in the request: not set
    assert SPEC["linux"]["resources"]["cpu"]["shares"] == 2  # the input is not changed


def test_a_memory_limit_sets_swap_to_match_where_the_host_has_swap():
    linux = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
    assert resources.updated_spec(SPEC, linux, BOTH, None)["linux"]["resources"]["memory"] == {
        "limit": 64 << 20,
        "swap": 64 << 20,
    }
    without = resources.updated_spec(SPEC, linux, NEITHER, None)["linux"]["resources"]["memory"]
    assert without == {"limit": 64 << 20, "swap": 100 << 20}  # swap untouched


def test_an_explicit_swap_limit_wins():
    linux = cri.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=128 << 20
    )
    memory = resources.updated_spec(SPEC, linux, BOTH, None)["linux"]["resources"]["memory"]
    assert memory == {"limit": 64 << 20, "swap": 128 << 20}


def test_hugepages_only_where_the_host_has_a_hugetlb_controller_and_unified_merges():
    linux = cri.LinuxContainerResources(
        hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=4 << 20)],
        unified={"memory.max": "1048576"},
    )
    with_it = resources.updated_spec(SPEC, linux, BOTH, None)["linux"]["resources"]
    assert with_it["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert with_it["unified"] == {"memory.high": "max", "memory.max": "1048576"}
    assert (
        "hugepageLimits"
        not in resources.updated_spec(SPEC, linux, NEITHER, None)["linux"]["resources"]
    )


def test_oom_score_adj_is_raised_to_the_floor_when_restricted():
    linux = cri.LinuxContainerResources(oom_score_adj=-998)
    assert resources.updated_spec(SPEC, linux, BOTH, 0)["process"]["oomScoreAdj"] == 0
    assert resources.updated_spec(SPEC, linux, BOTH, None)["process"]["oomScoreAdj"] == -998
    high = cri.LinuxContainerResources(oom_score_adj=1000)
    assert resources.updated_spec(SPEC, high, BOTH, 0)["process"]["oomScoreAdj"] == 1000


def test_a_spec_without_linux_resources_gets_them():
    linux = cri.LinuxContainerResources(cpu_quota=20000, cpu_period=100000)
    new = resources.updated_spec({"process": {}}, linux, BOTH, None)
    assert new["linux"]["resources"]["cpu"] == {"quota": 20000, "period": 100000}
