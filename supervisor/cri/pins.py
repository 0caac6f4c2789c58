"""A pod's pinned namespaces: network, IPC and UTS namespaces held by bind mounts, not by a
process (CRI-O's `pinns`, without its binary).

A pod's pin directory is `<state>/cri/sandboxes/<id>`: a shared bind mount of itself (as
iproute2's /run/netns), holding one file per namespace (`net`, `ipc`, `uts`) onto which the
namespace is bind-mounted. The namespaces are made on a short-lived thread of the daemon
(`netlink.pin_new_namespaces`: unshare of these three kinds changes the calling thread
only), which first writes the pod's sysctls and its hostname inside them, then pins them and
ends: the sysctls reach the new namespaces and nothing else.

Rules kept here:
- a sysctl is written only into a namespace this module makes: one aimed at a namespace the
  pod shares with the host (network or IPC mode NODE) or at no namespace at all is refused
  (InvalidArgument) before anything is made (CRI-O's CVE-2022-0811 class of bug);
- a pin is present when its file has a namespace mounted on it (one stat);
- every function blocks (mounts, a thread): the daemon calls them through `asyncio.to_thread`;
  removing what is gone is not an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.errors import InvalidArgument
from supervisor.network import netlink

KINDS = ("net", "ipc", "uts")

# Namespaced sysctls by the namespace they live in (runc's list: validate/validator.go).
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class PinPlan:
    """What to make for a pod: the kinds of namespace (a subset of KINDS), the sysctls to
    write inside them, the hostname of its new UTS namespace."""

    directory: Path
    kinds: tuple[str, ...]
    sysctls: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""


def sysctl_namespace(name: str) -> str | None:
    """The kind of namespace sysctl `name` belongs to ("net", "ipc", "uts"), None when it is
    not namespaced (a host-wide setting)."""
    if name.startswith("net."):
        return "net"
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name in _UTS_SYSCTLS:
        return "uts"
    return None


def check_sysctls(sysctls: Mapping[str, str], made: tuple[str, ...]) -> None:
    """Refuse any sysctl that would not land in a namespace of `made` (InvalidArgument)."""
    for name in sorted(sysctls):
        if not _NAME.fullmatch(name) or ".." in name:
            raise InvalidArgument(f'sysctl "{name}" is not a valid sysctl name')
        kind = sysctl_namespace(name)
        if kind is None:
            raise InvalidArgument(
                f'sysctl "{name}" is not in a separate kernel namespace: ctrd writes a pod\'s '
                "sysctls only into the namespaces it made for the pod"
            )
        if kind not in made:
            mode = {"net": "network", "ipc": "ipc", "uts": "network"}[kind]
            raise InvalidArgument(
                f"sysctl \"{name}\" is for the pod's {kind} namespace, which is the host's "
                f"({mode} mode NODE): ctrd writes no sysctl into a namespace it did not make"
            )


def pin_path(directory: Path, kind: str) -> Path:
    return directory / kind


def pin(plan: PinPlan) -> dict[str, str]:
    """Make and pin the plan's namespaces; their paths by kind. Checks the sysctls first."""
    check_sysctls(plan.sysctls, plan.kinds)
    plan.directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    if not plan.kinds:
        return {}
    netlink.ensure_shared_dir(plan.directory)
    pins = {kind: pin_path(plan.directory, kind) for kind in plan.kinds}
    netlink.pin_new_namespaces(pins, lambda: _inside(plan))
    return {kind: str(path) for kind, path in pins.items()}


def _inside(plan: PinPlan) -> None:
    """On the pinning thread, in the new namespaces: hostname, then sysctls."""
    if plan.hostname and "uts" in plan.kinds:
        encoded = plan.hostname.encode()
        if _libc.sethostname(encoded, len(encoded)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sethostname {plan.hostname!r}: {os.strerror(err)}")
    for name, value in sorted(plan.sysctls.items()):
        path = "/proc/sys/" + name.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise InvalidArgument(f'sysctl "{name}" = "{value}": {e.strerror}') from None


def pinned(directory: Path, kinds: tuple[str, ...]) -> bool:
    """Whether every namespace of `kinds` is still pinned under `directory`."""
    return all(netlink.is_pinned(pin_path(directory, kind)) for kind in kinds)


def unpin(directory: Path) -> None:
    """Unpin every namespace under `directory` and release its shared mount (idempotent).
    Mounts of other kinds under it (the pod's /dev/shm) must be gone first."""
    for kind in KINDS:
        netlink.netns_remove(pin_path(directory, kind))
    if directory.exists():
        netlink.netns_release_dir(directory)
