"""`ctrctl run/create`'s security and resource flags, and docker's safe defaults in the spec.

ctr's spec (ctl.spec) has no seccomp filter, no cgroup filesystem, and `noNewPrivileges`
set. dockerd's containers have its default seccomp profile, `/sys/fs/cgroup` mounted
read-only, no-new-privileges off unless asked, and `oomScoreAdj` set (0 unless asked). ctrctl
makes docker's containers: `from_args` turns the flags into `SecurityOptions` with docker's
defaults, checked with docker's words before anything is made, and `apply` writes them into
the spec at the end of `ctl.spec.generate`. `SecurityOptions()` itself changes nothing, so a
spec built without flags is still ctr's (tests/integration/test_spec_vs_ctr.py). What each
flag does, as Docker Engine 20.10 does it:

- `--security-opt seccomp=unconfined|FILE` (a profile in docker's JSON format,
  supervisor.seccomp), resolved for the container's final capabilities; without it ctrd's
  default profile (supervisor.seccomp.DEFAULT); `--privileged` runs unconfined.
  `no-new-privileges[=true|false]`; `systempaths=unconfined` (no masked or read-only /proc
  paths); `label=...` and `apparmor=...` are taken and ignored with a warning (ctrd applies
  neither SELinux nor AppArmor). Anything else: dockerd's `invalid --security-opt 2: "x"`.
- `--cap-add/--cap-drop`: names with or without `CAP_`, any case, `ALL`; docker's
  TweakCapabilities: `--cap-add ALL` is every capability but the dropped ones,
  `--cap-drop ALL` leaves only the added ones, else the defaults less the dropped plus the
  added. `ALL` is every capability this host's processes hold (the same set `--privileged`
  gets, as ctr's WithAllCurrentCapabilities: a capability the host lacks cannot be given).
  Ignored with `--privileged`, as dockerd ignores them.
- `--device HOST[:CONTAINER][:rwm]`: the node (type, major, minor, mode and owner read from
  the host, symlinks followed; a directory gives every device under it) created in the
  container, and allowed with those permissions in the device cgroup.
- `--ulimit NAME=SOFT[:HARD]` with docker's names (nofile, nproc, core, ...; -1 unlimited):
  the process's rlimits, replacing ctr's default NOFILE 1024 for `nofile`.
- `--init`: Debian's static tini (`/usr/bin/tini-static`, package tini) bound read-only at
  `/sbin/docker-init`, made PID 1 with `--` before the command, as dockerd does with its
  docker-init (Debian's is the same binary): it reaps orphans and forwards signals.
- `/sys/fs/cgroup`: runc's `cgroup` mount, read-only (read-write with `--privileged`),
  right after /sys, as dockerd mounts it; on cgroup v1 and hybrid hosts runc mounts a tmpfs
  with the container's own cgroup of each hierarchy bound under it. On a cgroup v2 host the
  container gets a cgroup namespace of its own, as dockerd's default (`--cgroupns private`
  there, `host` on v1), so the cgroup2 mount shows its own cgroup as the root.
- `--oom-score-adj N` (-1000..1000, default 0 as dockerd's). The kernel refuses a process
  without CAP_SYS_RESOURCE an oom_score_adj below the lowest it ever had, and runc, which
  writes it, runs with ctrd's capabilities. ctrctl runs on ctrd's host, usually with the same
  privileges, so it judges by itself: without CAP_SYS_RESOURCE in its effective set, a value
  below its own oom_score_adj (always one it may set again) is raised to that, with a
  warning when the value was given. runc would fail the start instead.
- `--shm-size SIZE` (docker's units: 64m, 1g, bytes; 0 is the default 64m): the size of the
  /dev/shm tmpfs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from supervisor import seccomp

TINI = "/usr/bin/tini-static"  # Debian's tini package; dockerd's docker-init is the same file
INIT_PATH = "/sbin/docker-init"  # where dockerd puts its init in the container
CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["ro", "nosuid", "noexec", "nodev"],
}
DEFAULT_SHM_SIZE = 64 << 20  # docker's
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
CAP_SYS_RESOURCE = 24
# docker's --ulimit names (go-units' ulimitNameMapping): NAME -> RLIMIT_NAME in the spec.
ULIMIT_NAMES = frozenset(
    {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
     "rss", "rtprio", "rttime", "sigpending", "stack"}
)  # fmt: skip
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # strconv.ParseBool
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class DeviceNode(NamedTuple):
    """A host device as it is made in the container, with its cgroup permissions."""

    path: str  # in the container
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    permissions: str  # "rwm" or part of it


class Ulimit(NamedTuple):
    name: str  # docker's: nofile, nproc, ...
    soft: int  # -1: unlimited
    hard: int


class SecurityOptions(NamedTuple):
    """What ctrctl adds to ctr's spec; the default adds nothing (ctr's spec stays as is)."""

    seccomp: seccomp.Profile | None = None  # None: no filter
    no_new_privileges: bool | None = None  # None: the spec's (ctr's: set)
    cap_add: tuple[str, ...] = ()  # normalized: CAP_X or ALL
    cap_drop: tuple[str, ...] = ()
    devices: tuple[DeviceNode, ...] = ()
    ulimits: tuple[Ulimit, ...] = ()
    init: bool = False
    cgroup_mount: bool = False  # docker's read-only /sys/fs/cgroup
    cgroup_namespace: bool = False  # a cgroup namespace of its own (docker's on cgroup v2)
    system_paths: bool = True  # False: no masked or read-only paths (systempaths=unconfined)
    oom_score_adj: int | None = None
    shm_size: int | None = None  # bytes


# --- the flags ---------------------------------------------------------------------------------


def add_flags(add: Callable[..., Any]) -> None:
    """Declare the flags on `run` and `create` (`add` is the parser's add_argument)."""
    add(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPTION",
        help="seccomp=unconfined|FILE, no-new-privileges[=true|false], systempaths=unconfined",
    )
    add("--cap-add", action="append", default=[], metavar="CAP", help="add a capability (ALL)")
    add("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (ALL)")
    add(
        "--device",
        action="append",
        default=[],
        metavar="HOST[:CONTAINER][:rwm]",
        help="a host device in the container",
    )
    add(
        "--ulimit",
        action="append",
        default=[],
        metavar="NAME=SOFT[:HARD]",
        help="a resource limit (nofile, nproc, core, ...)",
    )
    add("--init", action="store_true", help="run an init (tini) as PID 1: reaps, forwards signals")
    add("--oom-score-adj", type=int, metavar="N", help="the OOM killer's adjustment (-1000..1000)")
    add("--shm-size", metavar="SIZE", help="the size of /dev/shm (default 64m)")


def from_args(
    args: argparse.Namespace, warn: Callable[[str], None] | None = None
) -> SecurityOptions:
    """The options of the command line with docker's defaults; ValueError with docker's words
    for anything docker refuses, before anything is made. Warnings go to `warn` (stderr)."""
    say = warn or (lambda text: print(text, file=sys.stderr))
    profile: seccomp.Profile | None = seccomp.DEFAULT
    no_new_privileges = False  # docker's default, where ctr's spec sets it
    system_paths = True
    for opt in args.security_opt:
        key, value = _security_opt(opt, say)
        if key == "no-new-privileges":
            no_new_privileges = _go_bool(value, opt)
        elif key == "seccomp":
            profile = None if value == "unconfined" else load_profile(value)
        elif key == "systempaths":
            if value != "unconfined":
                raise ValueError(f"invalid --security-opt 2: {json.dumps(opt)}")
            system_paths = False
        elif key in ("label", "apparmor"):
            say(f"WARNING: ctrd applies no SELinux or AppArmor: --security-opt {opt} ignored")
        else:
            raise ValueError(f"invalid --security-opt 2: {json.dumps(opt)}")  # dockerd's
    adds = normalize_capabilities(args.cap_add, "CapAdd")
    drops = normalize_capabilities(args.cap_drop, "CapDrop")
    ulimits = tuple(parse_ulimit(text) for text in args.ulimit)
    devices = tuple(node for text in args.device for node in host_devices(*parse_device(text)))
    shm_size = parse_shm_size(args.shm_size) if args.shm_size is not None else None
    if args.init and not os.path.exists(TINI):
        raise ValueError(f"--init needs {TINI}: install Debian's tini package")
    return SecurityOptions(
        seccomp=profile,
        no_new_privileges=no_new_privileges,
        cap_add=adds,
        cap_drop=drops,
        devices=devices,
        ulimits=ulimits,
        init=args.init,
        cgroup_mount=True,
        cgroup_namespace=unified_cgroups(),
        system_paths=system_paths,
        oom_score_adj=oom_score_adj(args.oom_score_adj, say),
        shm_size=shm_size,
    )


def _security_opt(opt: str, warn: Callable[[str], None]) -> tuple[str, str]:
    """KEY and VALUE of a --security-opt, split as docker's CLI splits them."""
    if opt == "no-new-privileges":
        return opt, "true"
    if "=" in opt:
        key, _, value = opt.partition("=")
    elif ":" in opt:
        key, _, value = opt.partition(":")
        warn(
            "WARNING: Security options with `:` as a separator are deprecated and will be"
            " completely unsupported in 17.04, use `=` instead."
        )
    else:
        raise ValueError(f"Invalid --security-opt: {json.dumps(opt)}")  # the CLI's
    return key, value


def _go_bool(text: str, opt: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid --security-opt 2: {json.dumps(opt)}")


def load_profile(path: str) -> seccomp.Profile:
    """A seccomp profile file in docker's format, refused with docker's words."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(
            f"opening seccomp profile ({path}) failed: open {path}: {_strerror(e)}"
        ) from None
    try:
        data = json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"compacting json for seccomp profile ({path}) failed: {e}") from None
    return seccomp.parse(data)


def _strerror(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def normalize_capabilities(names: Iterable[str], flag: str = "CapAdd") -> tuple[str, ...]:
    """docker's NormalizeLegacyCapabilities: CAP_ prefixed, upper case, ALL kept; an unknown
    one refused in dockerd's words."""
    from ctl.spec import KNOWN_CAPABILITIES

    out: list[str] = []
    for name in names:
        cap = name.upper()
        if cap != "ALL" and not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        if cap != "ALL" and cap not in KNOWN_CAPABILITIES:
            raise ValueError(f"invalid {flag}: unknown capability: {json.dumps(cap)}")
        if cap not in out:
            out.append(cap)
    return tuple(out)


def parse_ulimit(text: str) -> Ulimit:
    """go-units' ParseUlimit, with the CLI's words for a flag it refuses."""

    def refused(reason: str) -> ValueError:
        return ValueError(f'invalid argument "{text}" for "--ulimit" flag: {reason}')

    name, sep, values = text.partition("=")
    if not sep:
        raise refused(f"invalid ulimit argument: {text}")
    if name not in ULIMIT_NAMES:
        raise refused(f"invalid ulimit type: {name}")
    parts = values.split(":")
    if len(parts) > 2:
        raise refused(
            f"too many limit value arguments - {values}, can only have up to two, `soft[:hard]`"
        )
    numbers = []
    for part in parts:
        number = _go_int(part)
        if number is None:
            raise refused(f'strconv.ParseInt: parsing "{part}": invalid syntax')
        numbers.append(number)
    soft, hard = numbers[0], numbers[-1]
    if hard != -1 and soft > hard:
        raise refused(
            f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        )
    return Ulimit(name, soft, hard)


def _go_int(text: str) -> int | None:
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit():
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def parse_device(text: str) -> tuple[str, str, str]:
    """(host path, container path, permissions) of a --device, as docker's CLI checks and
    splits it (ValidateDevice, then parseLinuxDevice)."""

    def refused(reason: str) -> ValueError:
        return ValueError(f'invalid argument "{text}" for "--device" flag: {reason}')

    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise refused(f"bad format for path: {text}")
    host, container, permissions = parts[0], parts[0], "rwm"
    if len(parts) == 2:
        if _device_mode(parts[1]):
            permissions = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, permissions = parts[1], parts[2]
        if not _device_mode(permissions):
            raise refused(f"bad mode specified: {permissions}")
    if not container.startswith("/"):
        raise refused(f"{container} is not an absolute path")
    return host, os.path.normpath(container), permissions


def _device_mode(mode: str) -> bool:
    return 0 < len(mode) <= 3 and set(mode) <= set("rwm") and len(set(mode)) == len(mode)


def host_devices(host: str, container: str, permissions: str) -> list[DeviceNode]:
    """The device nodes of `host` (a device, or a directory of them), mapped under
    `container`, read from the host as dockerd's DevicesFromPath reads them."""
    resolved = os.path.realpath(host)
    try:
        return [_node(resolved, container, permissions)]
    except OSError as e:
        error = _strerror(e)
    except _NotADevice:
        error = "not a device node"
    nodes: list[DeviceNode] = []
    if os.path.isdir(resolved):
        for directory, _, files in os.walk(resolved):
            for name in sorted(files):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, resolved)
                try:
                    nodes.append(_node(path, os.path.join(container, relative), permissions))
                except (OSError, _NotADevice):
                    continue
    if nodes:
        return nodes
    raise ValueError(  # dockerd's words
        f"error gathering device information while adding custom device {json.dumps(host)}: {error}"
    )


class _NotADevice(Exception):
    pass


def _node(path: str, container: str, permissions: str) -> DeviceNode:
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode):
        type_ = "c"
    elif stat.S_ISBLK(st.st_mode):
        type_ = "b"
    else:
        raise _NotADevice(path)
    return DeviceNode(
        path=container, type=type_, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
        file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        permissions=permissions,
    )  # fmt: skip


def parse_shm_size(text: str) -> int:
    """docker's RAMInBytes (1024-based units, an optional i and b, any case); 0 is the
    default. The CLI's words for what it refuses."""
    found = re.fullmatch(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", text)
    if found is None:
        raise ValueError(
            f'invalid argument "{text}" for "--shm-size" flag: invalid size: \'{text}\''
        )
    size = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    return size or DEFAULT_SHM_SIZE


def oom_score_adj(
    value: int | None,
    warn: Callable[[str], None],
    status: str = "/proc/self/status",
    own: str = "/proc/self/oom_score_adj",
) -> int:
    """The container's oom_score_adj: the given one (0 by default, as dockerd's), checked as
    dockerd checks it, and raised to this process's own when the host would refuse it (see
    the module's docstring)."""
    wanted = 0 if value is None else value
    low, high = OOM_SCORE_ADJ_RANGE
    if not low <= wanted <= high:
        raise ValueError(f"Invalid value {wanted}, range for oom score adj is [{low}, {high}]")
    floor = _lowest_oom_score_adj(status, own)
    if wanted >= floor:
        return wanted
    if value is not None:
        warn(
            f"WARNING: this host refuses an oom_score_adj below {floor} without"
            f" CAP_SYS_RESOURCE: --oom-score-adj {value} is raised to {floor}"
        )
    return floor


def unified_cgroups(root: str = "/sys/fs/cgroup") -> bool:
    """Whether the host has cgroup v2 alone (no v1 hierarchies, no hybrid layout)."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _lowest_oom_score_adj(status: str, own: str) -> int:
    """The lowest oom_score_adj this process knows it may give: any with CAP_SYS_RESOURCE,
    else its own."""
    with open(status) as f:
        lines = f.read().splitlines()
    for line in lines:
        key, _, value = line.partition(":")
        if key == "CapEff" and int(value.strip(), 16) >> CAP_SYS_RESOURCE & 1:
            return OOM_SCORE_ADJ_RANGE[0]
    try:
        with open(own) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


# --- the spec ----------------------------------------------------------------------------------


def apply(
    spec: dict[str, Any],
    options: SecurityOptions,
    privileged: bool,
    all_capabilities: Callable[[], list[str]],
) -> None:
    """Write `options` into `spec` (ctl.spec's, after --privileged): capabilities first, so
    that the seccomp profile is resolved for the final bounding set. `all_capabilities` gives
    `ALL`'s capabilities."""
    process, linux = spec["process"], spec["linux"]
    if not privileged and (options.cap_add or options.cap_drop):
        process["capabilities"] = _capability_sets(
            tweak_capabilities(
                process.get("capabilities", {}).get("bounding", []),
                options.cap_add, options.cap_drop, all_capabilities,
            )
        )  # fmt: skip
    if options.no_new_privileges is not None:
        process["noNewPrivileges"] = options.no_new_privileges
    for ulimit in options.ulimits:
        _set_rlimit(process, ulimit)
    if options.devices:
        _add_devices(linux, options.devices)
    if options.cgroup_mount:
        _add_cgroup_mount(spec["mounts"], privileged)
    namespaces = linux.setdefault("namespaces", [])
    if options.cgroup_namespace and not any(n.get("type") == "cgroup" for n in namespaces):
        namespaces.append({"type": "cgroup"})
    if options.shm_size is not None:
        _set_shm_size(spec["mounts"], options.shm_size)
    if not options.system_paths:
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
    if options.oom_score_adj is not None:
        process["oomScoreAdj"] = options.oom_score_adj
    if options.init:
        process["args"] = [INIT_PATH, "--", *process.get("args", [])]
        spec["mounts"].append(
            {"destination": INIT_PATH, "type": "bind", "source": TINI, "options": ["rbind", "ro"]}
        )
    if options.seccomp is not None and not privileged:
        bounding = process.get("capabilities", {}).get("bounding", [])
        linux["seccomp"] = seccomp.to_oci(options.seccomp, bounding)


def tweak_capabilities(
    basics: Sequence[str],
    adds: Sequence[str],
    drops: Sequence[str],
    all_capabilities: Callable[[], list[str]],
) -> list[str]:
    """docker's TweakCapabilities over normalized names."""
    if "ALL" in adds:
        return [cap for cap in all_capabilities() if cap not in drops]
    if "ALL" in drops:
        return [cap for cap in adds if cap != "ALL"]
    kept = [cap for cap in basics if cap not in drops]
    return kept + [cap for cap in adds if cap not in kept]


def _capability_sets(caps: list[str]) -> dict[str, list[str]]:
    return {"bounding": caps, "effective": list(caps), "permitted": list(caps)}


def _set_rlimit(process: dict[str, Any], ulimit: Ulimit) -> None:
    """Replace the rlimit of its type, or append it; -1 is RLIM_INFINITY (uint64 max)."""
    kind = f"RLIMIT_{ulimit.name.upper()}"
    limit = {"type": kind, "hard": ulimit.hard % 2**64, "soft": ulimit.soft % 2**64}
    rlimits = [r for r in process.get("rlimits", []) if r.get("type") != kind]
    process["rlimits"] = [*rlimits, limit]


def _add_devices(linux: dict[str, Any], nodes: Sequence[DeviceNode]) -> None:
    present = {d.get("path") for d in linux.get("devices", [])}
    devices = linux.setdefault("devices", [])
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for node in nodes:
        if node.path not in present:  # --privileged has every host device already
            devices.append(
                {"path": node.path, "type": node.type, "major": node.major, "minor": node.minor,
                 "fileMode": node.file_mode, "uid": node.uid, "gid": node.gid}
            )  # fmt: skip
        rules.append(
            {"allow": True, "type": node.type, "major": node.major, "minor": node.minor,
             "access": node.permissions}
        )  # fmt: skip


def _add_cgroup_mount(mounts: list[dict[str, Any]], privileged: bool) -> None:
    if any(m.get("destination") == CGROUP_MOUNT["destination"] for m in mounts):
        return  # one given with -v/--mount wins
    mount: dict[str, Any] = {**CGROUP_MOUNT, "options": list(CGROUP_MOUNT["options"])}
    if privileged:
        mount["options"] = ["rw" if o == "ro" else o for o in mount["options"]]
    after_sys = next(
        (i + 1 for i, m in enumerate(mounts) if m.get("destination") == "/sys"), len(mounts)
    )
    mounts.insert(after_sys, mount)


def _set_shm_size(mounts: list[dict[str, Any]], size: int) -> None:
    for mount in mounts:
        if mount.get("destination") == "/dev/shm" and mount.get("type") == "tmpfs":
            options = [o for o in mount.get("options", []) if not o.startswith("size=")]
            mount["options"] = [*options, f"size={size}"]
