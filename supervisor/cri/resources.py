"""A CRI container's resources as UpdateContainerResources changes them, in its OCI spec.

`updated_spec` is pure: the spec (JSON, as stored in the container record) with the request's
`LinuxContainerResources` merged in by containerd's rules (`WithResources`):

- a zero CPU period, quota or shares, an empty cpuset, a zero memory limit leave the spec's
  value alone (proto3 cannot say "unset" otherwise);
- a memory limit without a swap limit sets swap to the same value (no swapping), where the
  host has a swap controller; an explicit swap limit wins;
- hugepage limits are added when the host has a hugetlb controller, skipped otherwise
  (containerd's default `tolerate_missing_hugetlb_controller = true`);
- `unified` entries are merged into the spec's;
- `oom_score_adj`: containerd leaves it alone on update; ctrd applies a non-zero value
  (kubelet never computes 0 for a container: 0 is what a client that did not set it sends,
  as `crictl update --memory`), raised to the daemon's own when `restrict` says the host
  cannot go lower (`[cri] restrict_oom_score_adj`).

`host_limits` reads what the host offers (swap, hugetlb) once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.runtime import metrics


@dataclass(frozen=True)
class HostLimits:
    swap: bool  # memory.memsw (v1) or memory.swap.max (v2) exists
    hugetlb: bool  # a hugetlb controller runc can use


def updated_spec(
    spec: dict[str, Any], linux: Any, host: HostLimits, oom_floor: int | None
) -> dict[str, Any]:
    """`spec` with `linux` (a runtime.v1 LinuxContainerResources) merged in; `spec` is not
    changed. `oom_floor`: the lowest oom_score_adj allowed (None: no floor)."""
    new = copy.deepcopy(spec)
    resources = new.setdefault("linux", {}).setdefault("resources", {})
    cpu = resources.setdefault("cpu", {})
    memory = resources.setdefault("memory", {})
    for key, value in (
        ("period", linux.cpu_period),
        ("quota", linux.cpu_quota),
        ("shares", linux.cpu_shares),
        ("cpus", linux.cpuset_cpus),
        ("mems", linux.cpuset_mems),
    ):
        if value:
            cpu[key] = value
    if linux.memory_limit_in_bytes:
        memory["limit"] = linux.memory_limit_in_bytes
        if not linux.memory_swap_limit_in_bytes and host.swap:
            memory["swap"] = linux.memory_limit_in_bytes
    if linux.memory_swap_limit_in_bytes and host.swap:
        memory["swap"] = linux.memory_swap_limit_in_bytes
    if host.hugetlb and linux.hugepage_limits:
        resources["hugepageLimits"] = [
            *resources.get("hugepageLimits", []),
            *({"pageSize": h.page_size, "limit": h.limit} for h in linux.hugepage_limits),
        ]
    if linux.unified:
        resources["unified"] = {**resources.get("unified", {}), **linux.unified}
    if linux.oom_score_adj:
        adj = linux.oom_score_adj
        new.setdefault("process", {})["oomScoreAdj"] = (
            adj if oom_floor is None else max(adj, oom_floor)
        )
    return new


def oom_score_adj(spec: dict[str, Any]) -> int | None:
    value = spec.get("process", {}).get("oomScoreAdj")
    return value if isinstance(value, int) else None


def own_oom_score_adj() -> int:
    """The daemon's own oom_score_adj: what a restricted host cannot go below."""
    return int(Path("/proc/self/oom_score_adj").read_text(encoding="ascii"))


def host_limits() -> HostLimits:
    """Which of swap and hugetlb limits runc can apply here (blocking: a few /proc reads)."""
    own = Path("/proc/self/cgroup").read_text(encoding="utf-8")
    mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    match metrics.locate(own, mountinfo):
        case metrics.CgroupV1(directories):
            memory = directories.get("memory")
            swap = memory is not None and (memory / "memory.memsw.limit_in_bytes").exists()
            hugetlb = _v1_hugetlb_mounted(mountinfo)
            return HostLimits(swap, hugetlb)
        case metrics.CgroupV2(directory):
            controllers = _read(directory / "cgroup.controllers").split()
            swap = (directory / "memory.swap.max").exists() or "memory" in controllers
            return HostLimits(swap, "hugetlb" in controllers)
    return HostLimits(False, False)


def _v1_hugetlb_mounted(mountinfo: str) -> bool:
    for line in mountinfo.splitlines():
        _, sep, after = line.partition(" - ")
        tail = after.split()
        if sep and len(tail) >= 3 and tail[0] == "cgroup" and "hugetlb" in tail[2].split(","):
            return True
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""
