"""The files a pod gives its containers: `hostname`, `hosts`, `resolv.conf` and `/dev/shm`.

As containerd's CRI writes them (cri-notes §4.1 step 5): under `<root>/cri/sandboxes/<id>`
(they survive a reboot with the record) `hostname` is the pod's hostname (the config's, else
the host's) and a newline, `hosts` a copy of the host's /etc/hosts, `resolv.conf` made from
the pod's DNS config ("search a b", one "nameserver X" per server, "options o1 o2") or a copy
of the host's when it has none; under `<state>/cri/sandboxes/<id>/shm` a tmpfs (mode 1777,
64 MiB, nodev, nosuid, noexec) for the containers' /dev/shm, unless the pod uses the host's
IPC namespace (then /dev/shm is the host's and nothing is mounted).

Every function blocks; removing what is gone is not an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
from pathlib import Path

from supervisor.cri.model import DnsConfig

HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SHM_SIZE = 64 * 1024 * 1024

_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def host_hostname() -> str:
    return socket.gethostname()


def resolv_conf(dns: DnsConfig) -> str:
    """resolv.conf from a pod's DNS config, in containerd's order."""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "".join(line + "\n" for line in lines)


def write_files(directory: Path, hostname: str, dns: DnsConfig | None) -> None:
    """`hostname`, `hosts` and `resolv.conf` in `directory` (made, 0755; files 0644)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write(directory / "hostname", hostname + "\n")
    _copy(HOST_HOSTS, directory / "hosts")
    if dns is None:
        _copy(HOST_RESOLV_CONF, directory / "resolv.conf")
    else:
        _write(directory / "resolv.conf", resolv_conf(dns))


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)


def _copy(source: Path, target: Path) -> None:
    try:
        text = source.read_bytes()
    except FileNotFoundError:
        text = b""
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(text)
    temporary.chmod(0o644)
    temporary.replace(target)


def remove_files(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def mount_shm(path: Path) -> None:
    """A tmpfs at `path` for the pod's /dev/shm (a mount already there is kept)."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    if is_mounted(path):
        return
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    data = f"mode=1777,size={SHM_SIZE}".encode()
    if _libc.mount(b"shm", os.fsencode(path), b"tmpfs", flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount shm at {path}: {os.strerror(err)}")


def unmount_shm(path: Path) -> None:
    """Unmount the pod's /dev/shm (every layer of it) and remove its directory."""
    while is_mounted(path):
        if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                break
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def is_mounted(path: Path) -> bool:
    """Whether something is mounted at `path` (another device than its parent's)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False
