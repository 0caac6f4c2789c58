"""The OCI runtime spec `ctrctl run/create` sends with a new container, built as `ctr run` does.

containerd 1.6's client makes a container's spec with `oci.GenerateSpec(WithDefaultSpec(),
WithDefaultUnixDevices, WithEnv, WithMounts, WithImageConfig, ...)`; `generate` applies the
same steps in the same order, so that a container made by ctrctl and one made by ctr (and
read back with `ctr containers info`) hold the same spec:

1. the default unix spec (oci/spec.go, oci/mounts.go): default capabilities, namespaces,
   mounts, masked and read-only paths, NOFILE 1024, a deny-all device cgroup, and the
   cgroupsPath `/<namespace>/<id>`; then the default unix devices allowed in the cgroup;
2. the given env, then extra mounts;
3. the image config merged with the command line (env, args, cwd, user: docker's rules,
   below);
4. read-only root, hostname, TTY (terminal), privileged (all current
   capabilities, no masked or read-only paths, writable /sys, all devices), host network (no
   network namespace, host /etc/hosts and /etc/resolv.conf, the host's name as HOSTNAME),
   annotations, cpu quota, pids and memory limits.

Where ctrctl differs from ctr it follows Docker Engine 20.10, on purpose: the image config
and the command line are merged by dockerd's rules (daemon/commit.go `merge`, then
`mergeAndVerifyConfig`, then the spec's process at start), not by WithImageConfig's:

- command: args replace the image's Cmd and keep its Entrypoint; `--entrypoint X` replaces
  the Entrypoint and drops the image's Cmd (args follow X); `--entrypoint ""` (the CLI's
  Entrypoint `[""]`) drops both; an Entrypoint that is exactly `[""]`, given or from the image
  (`ENTRYPOINT [""]`, `umoci config --config.entrypoint ''`), is then no entrypoint at all;
  nothing left to run is refused with docker's words, "No command specified";
- env: the given env, then the image's variables it does not name, replaced into or appended
  to the defaults `PATH=<default>`, `HOSTNAME=<hostname>` (when there is one) and, with a TTY,
  `TERM=xterm`; a bare `KEY` given unsets KEY (docker's CLI sends one when KEY is unset in its
  own environment); runc keeps a repeated key's first position and last value;
- cwd: `-w`, else the image's WorkingDir, cleaned as Go's filepath.Clean, else `/`; a relative
  `-w` is refused with docker's words (a relative WorkingDir of the image is left for runc
  to refuse, as under docker); a missing one is made by runc at start, as dockerd makes it;
- user: runc's GetExecUser over the image's /etc/passwd and /etc/group, which dockerd uses:
  "name" or "uid" takes the uid and gid of its passwd entry (a uid without one: gid 0), and
  the groups listing the entry's name after it as additional gids; with ":group" the gid is
  that group's (or the number given) and the only additional one; docker's errors for names
  that are not there ("unable to find user xyz: no matching entries in passwd file");
- stop: `container_labels` keeps the stop signal (`--stop-signal`, else the image's
  StopSignal; none without either, which `stop` reads as SIGTERM) in containerd's own label
  `io.containerd.image.config.stop-signal` (which ctr's `tasks kill` reads too) and
  `--stop-timeout` in `ctrctl.stop-timeout`, where `ctrctl stop` and `restart` find them, as
  dockerd keeps both in its container config. Whether there is one matters to `kill`, as to
  dockerd: without a stop signal any signal is the user's stop (`stop_signal_set`).
- security: dockerd's safe defaults (its seccomp profile, /sys/fs/cgroup read-only, no
  no-new-privileges, oomScoreAdj 0) and the flags that tune them (--security-opt, --cap-add,
  --cap-drop, --device, --ulimit, --init, --oom-score-adj, --shm-size) are written last, by
  ctl.secopts (`RunOptions.security`, whose default leaves ctr's spec as it is).

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
import signal
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from ctl import netopts, secopts, volopts
from shim.capnames import CAPABILITIES
from supervisor.imageusers import GroupEntry, PasswdEntry, RootFS, UserDB
from supervisor.imageusers import atoi as _atoi

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
OCI_VERSION = "1.0.2-dev"  # runtime-spec's specs.Version as vendored by containerd 1.6
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000  # ctr run --cpus: quota = cpus * period

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
KNOWN_CAPABILITIES = CAPABILITIES  # by number, as containerd 1.6's pkg/cap knows them
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
# `--network` values that name no ctrd network of their own: "", default and bridge are the
# default `bridge` network (which the daemon makes), host and none modes; `container:ID` too.
NETWORKS = ("", "default", "bridge", "host", "none")
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")  # docker's network names
# getDevices skips these directories of /dev, and /dev/console.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
_MAX_ID = 2**31 - 1  # runc's libcontainer/user: ids go from 0 to MaxInt32
NO_COMMAND = "No command specified"  # dockerd's words
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"  # containerd's (WithImageStopSignal)
STOP_TIMEOUT_LABEL = "ctrctl.stop-timeout"
RESTART_LABEL = "ctrd.io/restart"  # the daemon's restart policies (supervisor.restart)
DEFAULT_STOP_SIGNAL = "SIGTERM"
DEFAULT_STOP_TIMEOUT = 10  # seconds, as dockerd's


@dataclass(frozen=True)
class RunOptions:
    """What `ctrctl run/create` takes beyond the image; defaults change nothing."""

    args: Sequence[str] = ()  # overrides the image's Cmd (docker semantics)
    # None: the image's. Given, it drops the image's Cmd too; [""] (docker's `--entrypoint ""`)
    # leaves only the args.
    entrypoint: Sequence[str] | None = None
    # KEY=VALUE added to or replacing the image's; a bare KEY unsets KEY (docker's merge).
    env: Sequence[str] = ()
    workdir: str = ""
    user: str = ""  # "name", "uid", "name:group", "uid:gid", "uid:group", "name:gid"
    tty: bool = False
    hostname: str = ""
    read_only: bool = False
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids_limit: int | None = None
    # `--network`: "host" is the host's namespace; anything else gets its own namespace entry,
    # whose path the daemon puts in when it plumbs the container: "", default or bridge (the
    # default network), a ctrd network's name, `container:ID` (another container's); none:
    # an empty namespace.
    network: str = ""
    net: netopts.NetworkFlags = field(default_factory=netopts.NetworkFlags)  # -p, --dns...: labels
    mounts: Sequence[Mapping[str, Any]] = ()  # extra OCI mounts, after the default ones
    privileged: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""  # kept in a label (container_labels), not in the spec
    stop_timeout: int | None = None  # seconds; kept in a label too
    restart: str = ""  # docker's --restart, checked (ctl.restartopts): the ctrd.io/restart label
    # --health-*: docker's Healthcheck of the container, merged with the image's into a label
    health: Mapping[str, Any] | None = None
    # seccomp, capabilities, devices, ulimits, --init...: ctl.secopts (default: ctr's spec)
    security: secopts.SecurityOptions = field(default_factory=secopts.SecurityOptions)
    # -v, --mount, --tmpfs, --volumes-from (ctl.volopts): binds and tmpfs mounts in the spec,
    # volumes in the `ctrd.io/volumes` label for the daemon
    storage: volopts.Storage = field(default_factory=volopts.Storage)


class User(NamedTuple):  # NamedTuples, not frozen dataclasses: ~0.4 ms less each at import
    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def generate(
    namespace: str,
    container_id: str,
    image_config: Mapping[str, Any],
    options: RunOptions,
    rootfs: RootFS | None = None,
) -> dict[str, Any]:
    """The spec for container `container_id` of `namespace`, as JSON-ready data.

    `image_config` is the `config` object of the image's config JSON; `rootfs` holds the
    image's root filesystem, mounted or as its layers (None reads as one without /etc/passwd
    or /etc/group).
    Raises ValueError for options that make no container: an unknown user or group, no
    command at all, a relative workdir, an unknown network mode, a negative limit.
    """
    _check(options)
    spec = default_spec(namespace, container_id)
    process, linux = spec["process"], spec["linux"]
    linux["resources"]["devices"].extend(default_unix_devices())
    spec["mounts"].extend(_mount(m) for m in options.mounts)
    spec["mounts"].extend(volopts.spec_mounts(options.storage))

    # The image config merged with the command line, by dockerd's rules.
    host_network = options.network == "host"
    hostname = options.hostname or (socket.gethostname() if host_network else "")
    env = docker_env(_strings(image_config, "Env"), options.env, hostname, options.tty)
    process["args"] = command(image_config, options)
    process["cwd"] = clean_path(options.workdir or _string(image_config, "WorkingDir")) or "/"
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
    if options.privileged:
        _make_privileged(spec)
    if host_network:
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        spec["mounts"].extend(
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}
            for path in HOST_FILES
        )
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
    secopts.apply(spec, options.security, options.privileged, current_capabilities)
    return spec


def encode(spec: Mapping[str, Any]) -> bytes:
    """The spec as the value of the Any (SPEC_TYPE_URL) that Containers.Create takes."""
    return json.dumps(spec, separators=(",", ":")).encode()


def _check(options: RunOptions) -> None:
    named = NETWORK_NAME.fullmatch(options.network) or netopts.is_container_mode(options.network)
    if options.network not in NETWORKS and not named:
        raise ValueError(f"invalid network name {options.network!r}")
    if options.workdir and not options.workdir.startswith("/"):
        raise ValueError(
            f"the working directory '{options.workdir}' is invalid, it needs to be an absolute path"
        )  # dockerd's words
    if options.stop_signal:
        parse_signal(options.stop_signal)
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
    """ReplaceOrAppendEnvValues (dockerd's, and containerd's copy): an override replaces the
    default of its key or is appended; an override without `=` unsets its key."""
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


def docker_env(
    image_env: Sequence[str], given: Sequence[str], hostname: str = "", tty: bool = False
) -> list[str]:
    """The process's env as dockerd makes it: `merge` puts the given variables first, then
    the image's that they do not name; CreateDaemonEnvironment replaces or appends those into
    the defaults (PATH, HOSTNAME when there is a hostname, TERM with a TTY)."""
    named = {entry.split("=", 1)[0] for entry in given}
    config_env = [*given, *(e for e in image_env if e.split("=", 1)[0] not in named)]
    defaults = [DEFAULT_PATH_ENV]
    if hostname:
        defaults.append(f"HOSTNAME={hostname}")
    if tty:
        defaults.append("TERM=xterm")
    return merge_env(defaults, config_env)


def command(image_config: Mapping[str, Any], options: RunOptions) -> list[str]:
    """The process's args by dockerd's `merge` and `mergeAndVerifyConfig`.

    Without a given entrypoint, the image's Cmd fills in for missing args and the image's
    Entrypoint is kept; a given one (even `[""]`) takes neither. An Entrypoint of exactly
    `[""]` is then none. Nothing to run: ValueError(NO_COMMAND).
    """
    entrypoint = None if options.entrypoint is None else list(options.entrypoint)
    cmd = list(options.args)
    if not entrypoint:
        if not cmd:
            cmd = _strings(image_config, "Cmd")
        if entrypoint is None:
            entrypoint = _strings(image_config, "Entrypoint")
    if entrypoint == [""]:
        entrypoint = []
    args = entrypoint + cmd
    if not args:
        raise ValueError(NO_COMMAND)
    return args


def clean_path(path: str) -> str:
    """Go's filepath.Clean for a non-empty path (dockerd cleans WorkingDir at start); "" stays."""
    if not path:
        return ""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def container_labels(image_config: Mapping[str, Any], options: RunOptions) -> dict[str, str]:
    """The labels that keep what `stop` needs: the stop signal (given, the image's, or
    SIGTERM) and a given stop timeout; and those asking the daemon's Tasks.Create for the
    network (ctl.netopts): the network joined (`ctrd.io/networks`, `bridge` by default),
    or the container whose namespace is shared, the ports published, addresses, DNS."""
    signal_name = options.stop_signal or _string(image_config, "StopSignal")
    labels = {STOP_SIGNAL_LABEL: signal_name} if signal_name else {}
    if options.stop_timeout is not None:
        labels[STOP_TIMEOUT_LABEL] = str(options.stop_timeout)
    if options.restart:
        labels[RESTART_LABEL] = options.restart
    flags = replace(options.net, network=options.network)
    shared = options.network.removeprefix(netopts.CONTAINER_PREFIX)
    labels.update(netopts.labels(flags, image_config, shared))
    if options.health is not None or "Healthcheck" in image_config:
        from ctl import healthopts  # the health check's label (ctrd.io/healthcheck)

        labels.update(healthopts.labels(options.health, image_config))
    labels.update(volopts.labels(options.storage))  # ctrd.io/volumes, ctrctl.mounts
    return labels


def is_named_network(network: str) -> bool:
    """Whether `--network` names a ctrd network that must exist: not a mode (host, none,
    container:), not the default `bridge`, which the daemon makes when first used."""
    return netopts.is_user_defined(network)


def parse_signal(text: str) -> int:
    """docker's signal.ParseSignal: a positive number, or a name with or without SIG, in
    any case (RTMIN+n and RTMAX-n too). ValueError with docker's words otherwise."""
    number = _atoi(text)
    if number is not None:
        if number <= 0:
            raise ValueError(f"Invalid signal: {text}")
        return number
    name = text.upper().removeprefix("SIG")
    realtime = re.fullmatch(r"RTMIN(\+[0-9]+)?|RTMAX(-[0-9]+)?", name)
    if realtime is not None:
        above_min, below_max = realtime.groups()
        value = (
            signal.SIGRTMIN + int(above_min or 0)
            if name.startswith("RTMIN")
            else (signal.SIGRTMAX + int(below_max or 0))
        )
        if signal.SIGRTMIN <= value <= signal.SIGRTMAX:
            return int(value)
        raise ValueError(f"Invalid signal: {text}")
    found = getattr(signal.Signals, f"SIG{name}", None) if name.isalnum() else None
    if found is None:
        raise ValueError(f"Invalid signal: {text}")
    return int(found)


def stop_signal_set(labels: Mapping[str, str]) -> bool:
    """Whether the container has a stop signal of its own (given or its image's), as
    dockerd's `Config.StopSignal` is set or empty."""
    return bool(labels.get(STOP_SIGNAL_LABEL))


def stop_settings(labels: Mapping[str, str]) -> tuple[int, float]:
    """(signal, timeout in seconds) for `stop`, from a container's labels: what
    container_labels kept, else SIGTERM (a signal that does not parse too, as dockerd's
    StopSignal) and 10 s."""
    try:
        number = parse_signal(labels.get(STOP_SIGNAL_LABEL) or DEFAULT_STOP_SIGNAL)
    except ValueError:
        number = int(signal.SIGTERM)
    kept = _atoi(labels.get(STOP_TIMEOUT_LABEL, ""))
    return number, float(DEFAULT_STOP_TIMEOUT if kept is None else kept)


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
    with open(status) as f:
        lines = f.read().splitlines()
    for line in lines:
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


def resolve_user(user: str, rootfs: RootFS | None) -> User:
    """The uid, gid and additional gids of `user` in the image, as dockerd finds them (runc's
    libcontainer/user GetExecUser, over the image's /etc/passwd and /etc/group).

    `user` is "user[:group]" (fields past the second are ignored). The user is a passwd
    entry, by uid when it is a number, by name otherwise, root's (uid 0) when empty; a number
    without an entry is that uid with gid 0, a name without one an error. The entry's gid is
    the gid unless a group is given: then it is that group's (by gid when a number, else by
    name; a number without an entry is that gid, a name without one an error). The
    additional gids are the gid, then, only without a group, the groups listing the matched
    entry's name (dockerd 20.10 puts the gid first, as runc does not).
    """
    db = UserDB(rootfs)
    user_arg, _, rest = user.partition(":")
    group_arg = rest.partition(":")[0]
    uid_arg, gid_arg = _atoi(user_arg), _atoi(group_arg)

    def wanted(entry: PasswdEntry) -> bool:
        if not user_arg:
            return entry.uid == 0
        return entry.uid == uid_arg if uid_arg is not None else entry.name == user_arg

    found = next((u for u in db.users() or [] if wanted(u)), None)
    uid, gid, matched = 0, 0, ""
    if found is not None:
        uid, gid, matched = found.uid, found.gid, found.name
    elif user_arg:
        if uid_arg is None:
            raise ValueError(f"unable to find user {user_arg}: no matching entries in passwd file")
        uid = _id(uid_arg)
    groups = (db.groups() or []) if group_arg or matched else []
    if not group_arg:
        return User(uid, gid, (gid, *(g.gid for g in groups if matched in g.members)))

    def wanted_group(entry: GroupEntry) -> bool:
        return entry.gid == gid_arg if gid_arg is not None else entry.name == group_arg

    group = next((g for g in groups if wanted_group(g)), None)
    if group is not None:
        gid = group.gid
    elif gid_arg is None:
        raise ValueError(f"unable to find group {group_arg}: no matching entries in group file")
    else:
        gid = _id(gid_arg)
    return User(uid, gid, (gid,))


def _id(number: int) -> int:
    if not 0 <= number <= _MAX_ID:
        raise ValueError(f"uids and gids must be in range 0-{_MAX_ID}")  # runc's ErrRange
    return number
