"""The OCI runtime spec `ctrctl run/create` sends with a new container, built as `ctr run` does.

containerd 1.6's client makes a container's spec with `oci.GenerateSpec(WithDefaultSpec(),
WithDefaultUnixDevices, WithEnv, WithMounts, WithImageConfig, ...)`; `generate` applies the
same steps in the same order, so that a container made by ctrctl and one made by ctr (and
read back with `ctr containers info`) hold the same spec:

1. the default unix spec (oci/spec.go, oci/mounts.go): default capabilities, namespaces,
   mounts, masked and read-only paths, NOFILE 1024, a deny-all device cgroup, and the
   cgroupsPath `/<namespace>/<id>`; then the default unix devices allowed in the cgroup;
2. the given env, then extra mounts;
3. the image config: env merged over the image's Env (or the default PATH), args, cwd, and
   the user resolved against the image's /etc/passwd and /etc/group with additional gids;
4. read-only root, cwd, TTY (terminal + TERM=xterm appended), privileged (all current
   capabilities, no masked or read-only paths, writable /sys, all devices), host network (no
   network namespace, host /etc/hosts and /etc/resolv.conf, HOSTNAME), annotations, cpu
   quota, pids and memory limits.

Where ctrctl differs from ctr it follows docker, on purpose: args replace the image's Cmd and
keep its Entrypoint (ctr replaces the whole command line), an entrypoint may be given, the user
may be given (ctr has no --user for run), and a container without any command is refused here
rather than by runc at start.

The host is read only when asked for: /proc/self/status for --privileged capabilities, /dev for
--privileged devices, the hostname for host networking. The image's root filesystem is read
only for /etc/passwd and /etc/group, with symlinks resolved inside it.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import socket
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
OCI_VERSION = "1.0.2-dev"  # runtime-spec's specs.Version as vendored by containerd 1.6
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000  # ctr run --cpus: quota = cpus * period

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
# Capability names by number, as containerd 1.6's pkg/cap knows them (kernel 5.9).
KNOWN_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
# (destination, type, source, options)
DEFAULT_MOUNTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    ("/dev/pts", "devpts", "devpts",
     ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/run", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
)  # fmt: skip
# WithDefaultUnixDevices: null, random, full, tty, zero, urandom, console, pts (any minor), ptmx
DEFAULT_UNIX_DEVICES: tuple[tuple[int, int | None], ...] = (
    (1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2),
)  # fmt: skip
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")  # bind-mounted read-only with host networking
NETWORKS = ("", "host", "none")
# getDevices skips these directories of /dev, and /dev/console.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
_MAX_ID = 2**32 - 1


@dataclass(frozen=True)
class RunOptions:
    """What `ctrctl run/create` takes beyond the image; defaults change nothing."""

    args: Sequence[str] = ()  # overrides the image's Cmd (docker semantics)
    entrypoint: Sequence[str] | None = None  # overrides the image's Entrypoint; [] clears it
    # KEY=VALUE added to or replacing the image's. A bare KEY is dropped, as by ctr (its
    # WithEnv applies before the image's Env); docker's `-e KEY` is for the caller to resolve.
    env: Sequence[str] = ()
    workdir: str = ""
    user: str = ""  # "name", "uid", "name:group", "uid:gid", "uid:group", "name:gid"
    tty: bool = False
    hostname: str = ""
    read_only: bool = False
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids_limit: int | None = None
    network: str = ""  # "" or "none": own network namespace; "host": the host's
    mounts: Sequence[Mapping[str, Any]] = ()  # extra OCI mounts, after the default ones
    privileged: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def generate(
    namespace: str,
    container_id: str,
    image_config: Mapping[str, Any],
    options: RunOptions,
    rootfs: Path | None = None,
) -> dict[str, Any]:
    """The spec for container `container_id` of `namespace`, as JSON-ready data.

    `image_config` is the `config` object of the image's config JSON; `rootfs` holds the
    image's root filesystem (None reads as one without /etc/passwd or /etc/group).
    Raises ValueError for options that make no container: an unknown user or group, no
    command at all, a relative workdir, an unknown network mode, a negative limit.
    """
    _check(options)
    spec = default_spec(namespace, container_id)
    process, linux = spec["process"], spec["linux"]
    linux["resources"]["devices"].extend(default_unix_devices())
    env = merge_env([], options.env)
    spec["mounts"].extend(_mount(m) for m in options.mounts)

    # WithImageConfig, with docker's rules for what the caller overrides.
    env = merge_env(_strings(image_config, "Env") or [DEFAULT_PATH_ENV], env)
    args = command(image_config, options)
    process["args"] = args
    process["cwd"] = options.workdir or _string(image_config, "WorkingDir") or "/"
    user = resolve_user(options.user or _string(image_config, "User"), rootfs)
    process["user"] = {
        "uid": user.uid,
        "gid": user.gid,
        "additionalGids": list(user.additional_gids),
    }

    if options.read_only:
        spec["root"]["readonly"] = True
    if options.hostname:
        spec["hostname"] = options.hostname
    if options.tty:
        process["terminal"] = True
        env.append("TERM=xterm")  # appended, not merged: as WithTTY does
    if options.privileged:
        _make_privileged(spec)
    if options.network == "host":
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        spec["mounts"].extend(
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
            for path in HOST_FILES
        )
        env = merge_env(env, [f"HOSTNAME={options.hostname or socket.gethostname()}"])
    if options.annotations:
        spec["annotations"] = dict(options.annotations)
    resources = linux["resources"]
    if options.cpus:
        resources["cpu"] = {"quota": int(options.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if options.pids_limit is not None:
        resources["pids"] = {"limit": options.pids_limit}
    if options.memory:
        resources["memory"] = {"limit": options.memory}
    if env:
        process["env"] = env
    return spec


def encode(spec: Mapping[str, Any]) -> bytes:
    """The spec as the value of the Any (SPEC_TYPE_URL) that Containers.Create takes."""
    return json.dumps(spec, separators=(",", ":")).encode()


def _check(options: RunOptions) -> None:
    if options.network not in NETWORKS:
        raise ValueError(f"unknown network mode {options.network!r}: use host, none or nothing")
    if options.workdir and not options.workdir.startswith("/"):
        raise ValueError(f"the working directory {options.workdir!r} must be an absolute path")
    for name in ("memory", "pids_limit", "cpus"):
        value = getattr(options, name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative, not {value}")
    for mount in options.mounts:
        if not isinstance(mount.get("destination"), str):
            raise ValueError(f"a mount needs a destination: {dict(mount)!r}")


def default_spec(namespace: str, container_id: str) -> dict[str, Any]:
    """populateDefaultUnixSpec + defaultMounts: the spec before any option."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": dest, "type": type_, "source": source, "options": list(opts)}
            for dest, type_, source, opts in DEFAULT_MOUNTS
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": posixpath.normpath(posixpath.join("/", namespace, container_id)),
            "namespaces": [{"type": ns} for ns in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def default_unix_devices() -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    for major, minor in DEFAULT_UNIX_DEVICES:
        device: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            device["minor"] = minor
        device["access"] = "rwm"
        devices.append(device)
    return devices


def merge_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """containerd's replaceOrAppendEnvValues: an override replaces the default of its key or
    is appended; an override without `=` unsets its key."""
    results: list[str] = list(defaults)
    index = {entry.split("=", 1)[0]: i for i, entry in enumerate(results)}
    for value in overrides:
        if "=" not in value:
            if value in index:
                results[index[value]] = ""  # containerd's mark for "remove"
            continue
        key = value.split("=", 1)[0]
        if key in index:
            results[index[key]] = value
        else:
            results.append(value)
    return [entry for entry in results if entry]


def command(image_config: Mapping[str, Any], options: RunOptions) -> list[str]:
    """Entrypoint + Cmd with docker's overrides: args replace Cmd; an entrypoint replaces the
    image's Entrypoint and drops its Cmd."""
    if options.entrypoint is not None:
        entrypoint, cmd = list(options.entrypoint), []
    else:
        entrypoint, cmd = _strings(image_config, "Entrypoint"), _strings(image_config, "Cmd")
    if options.args:
        cmd = list(options.args)
    args = entrypoint + cmd
    if not args:
        raise ValueError("no command: the image has no Entrypoint or Cmd and none was given")
    return args


def _make_privileged(spec: dict[str, Any]) -> None:
    """WithPrivileged + WithAllDevicesAllowed + WithHostDevices."""
    linux, process = spec["linux"], spec["process"]
    caps = current_capabilities()
    process["capabilities"] = (
        {"bounding": caps, "effective": list(caps), "permitted": list(caps)} if caps else {}
    )
    del linux["maskedPaths"], linux["readonlyPaths"]
    for mount in spec["mounts"]:
        if mount.get("type") == "sysfs":
            mount["options"] = ["rw" if o == "ro" else o for o in mount.get("options", [])]
    linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    devices = host_devices()
    if devices:
        linux["devices"] = devices


def _mount(mount: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(mount))


def _string(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key) or ""
    if not isinstance(value, str):
        raise ValueError(f"the image config's {key} is not a string: {value!r}")
    return value


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"the image config's {key} is not a list of strings: {value!r}")
    return list(value)


# --- the host, for --privileged --------------------------------------------------------------


def capabilities_from_bitmap(bits: int) -> list[str]:
    """pkg/cap FromBitmap: the names of the set bits, in bit order; unknown bits dropped."""
    return [name for i, name in enumerate(KNOWN_CAPABILITIES) if bits >> i & 1]


def current_capabilities(status: str = "/proc/self/status") -> list[str]:
    """The effective capabilities of this process (WithAllCurrentCapabilities)."""
    for line in Path(status).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CapEff":
            return capabilities_from_bitmap(int(value.strip(), 16))
    return []


def host_devices(path: str = "/dev") -> list[dict[str, Any]]:
    """oci.HostDevices: every block and character device under `path`, names in byte order,
    without pts/, shm/, fd/, mqueue/ and console; symlinks and FIFOs are left out."""
    devices: list[dict[str, Any]] = []
    with os.scandir(path) as entries:
        ordered = sorted(entries, key=lambda e: os.fsencode(e.name))
    for entry in ordered:
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in _SKIPPED_DEV_DIRS:
                devices.extend(host_devices(posixpath.join(path, entry.name)))
            continue
        if entry.name == "console":
            continue
        try:
            st = os.lstat(entry.path)
        except FileNotFoundError:
            continue
        if stat.S_ISBLK(st.st_mode):
            type_ = "b"
        elif stat.S_ISCHR(st.st_mode):
            type_ = "c"
        else:
            continue
        devices.append(
            {
                "path": posixpath.join(path, entry.name),
                "type": type_,
                "major": os.major(st.st_rdev),
                "minor": os.minor(st.st_rdev),
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
    return devices


# --- users and groups of the image -----------------------------------------------------------


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def resolve_user(user: str, rootfs: Path | None) -> User:
    """The uid, gid and additional gids of `user` in the image, as WithImageConfig finds them.

    WithUser: "uid" takes the gid of its passwd entry, or 0 without one (WithUserID); "name"
    must have a passwd entry (WithUsername); in "a:b" names are looked up and numbers taken as
    they are. Then WithAdditionalGIDs: the groups listing the user (found by uid when given as
    a number) as a member, other than its own group, after the primary gid. No user is root.
    """
    db = _UserDB(rootfs)
    if not user:
        uid, gid = 0, 0
        return User(uid, gid, _with_primary(gid, db.supplementary_groups("root")))
    parts = user.split(":")
    if len(parts) == 1:
        number = _atoi(user)
        if number is None:
            entry = db.user(lambda u: u.name == user, f"user {user!r}")
            uid, gid = entry.uid, entry.gid
        else:
            uid = _id(number, user)
            found = db.find_user(lambda u: u.uid == uid)
            gid = found.gid if found is not None else 0
    elif len(parts) == 2:
        name, group = parts
        uid_number, gid_number = _atoi(name), _atoi(group)
        uid = _id(uid_number, user) if uid_number is not None else 0
        gid = _id(gid_number, user) if gid_number is not None else 0
        if uid_number is None and name:
            uid = db.user(lambda u: u.name == name, f"user {name!r}").uid
        if gid_number is None and group:
            gid = db.group(lambda g: g.name == group, f"group {group!r}").gid
    else:
        raise ValueError(f"invalid user {user!r}: use name, uid, name:group or uid:gid")
    owner = db.find_user(lambda u: u.uid == uid)
    groups = db.supplementary_groups(owner.name) if owner is not None else []
    return User(uid, gid, _with_primary(gid, groups))


def _with_primary(gid: int, groups: Sequence[int]) -> tuple[int, ...]:
    """ensureAdditionalGids: the primary gid is among the additional ones, first if added."""
    return tuple(groups) if gid in groups else (gid, *groups)


def _atoi(text: str) -> int | None:
    """Go's strconv.Atoi, which WithUser uses to tell ids from names."""
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


def _id(number: int, user: str) -> int:
    if not 0 <= number <= _MAX_ID:
        raise ValueError(f"invalid user {user!r}: ids go from 0 to {_MAX_ID}")
    return number


class _UserDB:
    """The image's /etc/passwd and /etc/group, parsed as runc's libcontainer/user does
    (numbers that do not parse read as 0; group lines may be comments)."""

    def __init__(self, rootfs: Path | None) -> None:
        self.rootfs = rootfs

    def _lines(self, name: str) -> Iterator[str] | None:
        if self.rootfs is None:
            return None
        try:
            data = scoped_path(self.rootfs, f"/etc/{name}").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        text = data.decode("utf-8", "surrogateescape")
        return (line.strip() for line in text.split("\n"))

    def users(self) -> list[_PasswdEntry] | None:
        lines = self._lines("passwd")
        if lines is None:
            return None
        out = []
        for line in lines:
            if line:
                fields = [*line.split(":"), "", "", ""]
                out.append(_PasswdEntry(fields[0], _int(fields[2]), _int(fields[3])))
        return out

    def groups(self) -> list[_GroupEntry] | None:
        lines = self._lines("group")
        if lines is None:
            return None
        out = []
        for line in lines:
            if line and not line.startswith("#"):
                fields = [*line.split(":"), "", "", ""]
                members = tuple(fields[3].split(",")) if fields[3] else ()
                out.append(_GroupEntry(fields[0], _int(fields[2]), members))
        return out

    def find_user(self, match: Callable[[_PasswdEntry], bool]) -> _PasswdEntry | None:
        return next((u for u in self.users() or [] if match(u)), None)

    def user(self, match: Callable[[_PasswdEntry], bool], what: str) -> _PasswdEntry:
        users = self.users()
        if users is None:
            raise ValueError(f"{what} not found: the image has no /etc/passwd")
        found = next((u for u in users if match(u)), None)
        if found is None:
            raise ValueError(f"{what} not found in the image's /etc/passwd")
        return found

    def group(self, match: Callable[[_GroupEntry], bool], what: str) -> _GroupEntry:
        groups = self.groups()
        if groups is None:
            raise ValueError(f"{what} not found: the image has no /etc/group")
        found = next((g for g in groups if match(g)), None)
        if found is None:
            raise ValueError(f"{what} not found in the image's /etc/group")
        return found

    def supplementary_groups(self, username: str) -> list[int]:
        return [g.gid for g in self.groups() or [] if g.name != username and username in g.members]


def _int(text: str) -> int:
    number = _atoi(text)
    return number if number is not None else 0


def scoped_path(root: Path, path: str) -> Path:
    """`path` inside `root` with symlinks resolved as if `root` were `/` (continuity's
    fs.RootPath): a link can never lead out of the image."""
    resolved: list[str] = []
    pending = [p for p in path.split("/") if p][::-1]
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > 255:
                raise ValueError(f"too many symlinks resolving {path!r} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
