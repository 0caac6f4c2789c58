"""The OCI spec of a CRI container, built from its ContainerConfig, its pod and its image as
containerd 1.6's CRI builds it (cri-notes §3.3, §3.4, §4.2, §5).

Order, as containerd's `containerSpec`: the default unix spec (`ctl.spec.default_spec`, what
ctr's containers start from) without `/run`, rlimits, seccomp or AppArmor; args by docker's
rule (command replaces the image's Entrypoint and drops its Cmd, args replace Cmd; nothing
left: "no command specified"); PATH, HOSTNAME, the image's env then the CRI's (each replacing
a variable of its name); cwd; TTY; mounts (below); masked and read-only paths as given;
privileged or devices + capabilities; no ambient capabilities; no_new_privs; a read-only root;
resources (hugepage limits left out without a hugetlb controller, as containerd tolerates)
and the cgroup path; oom_score_adj (clamped); the pod's namespaces; user and
groups; annotations; a cgroup namespace on cgroup v2 (not privileged); seccomp, AppArmor.

Mounts: the pod's `hostname`, `hosts`, `resolv.conf` (read-only with a read-only root) and
`/dev/shm` unless a CRI mount has that path; a directory of the container's at each of the
image's VOLUMEs no CRI mount covers (filled from the image by the caller); a read-only
`cgroup` at /sys/fs/cgroup; the default mounts a CRI mount does not replace (none under /dev
when /dev is one); then the CRI mounts sorted by the depth of their path, each a `bind` with
`rbind`, its propagation and `ro`/`rw`, its host path made (0755) when missing and its
symlinks resolved. Bidirectional
propagation needs a shared source mount and makes the root rshared; host-to-container needs
a shared or slave one and makes it rslave (unless rshared), in containerd's words.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.cri import model, security
from supervisor.cri.users import User
from supervisor.errors import FailedPrecondition, InvalidArgument

CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}  # fmt: skip
PROPAGATION = {0: "rprivate", 1: "rslave", 2: "rshared"}  # MountPropagation
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3  # NamespaceMode
HOSTNAME_ENV = "HOSTNAME"


@dataclass(frozen=True)
class Host:
    """What the spec takes from the host (read once by the caller)."""

    capabilities: list[str]  # the daemon's own: "ALL" and privileged
    oom_score_adj: int  # the daemon's own: the clamp's floor
    cgroup2: bool
    apparmor: bool
    restrict_oom_score_adj: bool = True
    hugetlb: bool = True  # the hugetlb controller is there (else hugepage limits are left out)
    devices: Callable[[], list[dict[str, Any]]] | None = None  # the host's (privileged)


@dataclass(frozen=True)
class Inputs:
    id: str
    namespace: str  # ctrd's namespace of the CRI
    config: Any  # runtime.v1 ContainerConfig
    sandbox_config: Any  # runtime.v1 PodSandboxConfig
    sandbox: model.SandboxRecord
    image_config: Mapping[str, Any]  # the image config's `config`
    image_name: str
    user: User
    target_pid: int = 0  # the TARGET container's pid (pid mode TARGET)
    volumes: Sequence[tuple[str, str]] = ()  # (container path, host dir): the image's VOLUMEs


def build(inputs: Inputs, host: Host) -> dict[str, Any]:
    from ctl.spec import clean_path, default_spec, default_unix_devices, merge_env

    config = inputs.config
    context = config.linux.security_context
    privileged = context.privileged
    spec = default_spec(inputs.namespace, inputs.id)
    process, linux = spec["process"], spec["linux"]
    spec["mounts"] = [m for m in spec["mounts"] if posixpath.normpath(m["destination"]) != "/run"]
    process.pop("rlimits", None)
    process["noNewPrivileges"] = False
    linux["resources"]["devices"].extend(default_unix_devices())

    process["args"] = command(config, inputs.image_config)
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    hostname = inputs.sandbox_config.hostname or inputs.sandbox.hostname or os.uname().nodename
    env = merge_env(env, [f"{HOSTNAME_ENV}={hostname}"])
    env = merge_env(env, _strings(inputs.image_config, "Env"))
    env = merge_env(env, [f"{e.key}={e.value}" for e in config.envs])
    process["env"] = env
    cwd = config.working_dir or str(inputs.image_config.get("WorkingDir") or "")
    process["cwd"] = clean_path(cwd) or "/"
    if config.tty:
        process["terminal"] = True

    spec["mounts"] = mounts(spec, config, inputs.sandbox, inputs.volumes)
    linux["maskedPaths"] = list(context.masked_paths)
    linux["readonlyPaths"] = list(context.readonly_paths)

    if privileged:
        if not inputs.sandbox_config.linux.security_context.privileged:
            raise InvalidArgument("no privileged container allowed in sandbox")
        host_devices = host.devices() if host.devices is not None else []
        security.make_privileged(spec, host.capabilities, host_devices)
    else:
        add_devices(spec, config.devices)
        security.set_capabilities(spec, security.capability_sets(context, host.capabilities))
    if context.no_new_privs:
        process["noNewPrivileges"] = True
    if context.readonly_rootfs:
        spec["root"]["readonly"] = True

    resources(spec, config.linux.resources if config.linux.HasField("resources") else None)
    if not host.hugetlb:  # containerd's tolerate_missing_hugetlb_controller (on by default)
        linux["resources"].pop("hugepageLimits", None)
    if inputs.sandbox.cgroup_parent:
        linux["cgroupsPath"] = cgroups_path(inputs.sandbox.cgroup_parent, inputs.id)
    if config.linux.HasField("resources"):
        adj = int(config.linux.resources.oom_score_adj)
        if host.restrict_oom_score_adj:
            adj = max(adj, host.oom_score_adj)
        process["oomScoreAdj"] = adj

    linux["namespaces"] = namespaces(inputs, host.cgroup2 and not privileged)
    process["user"] = {
        "uid": inputs.user.uid,
        "gid": inputs.user.gid,
        "additionalGids": list(inputs.user.additional_gids),
    }
    spec["annotations"] = spec_annotations(inputs)
    if not privileged:
        security.apply_seccomp(spec, context)
    security.apply_apparmor(spec, context, privileged, host.apparmor)
    return spec


def command(config: Any, image_config: Mapping[str, Any]) -> list[str]:
    """containerd's WithProcessArgs (docker's rule)."""
    cmd, args = list(config.command), list(config.args)
    if not cmd:
        if not args:
            args = _strings(image_config, "Cmd")
        cmd = _strings(image_config, "Entrypoint")
    if not cmd and not args:
        raise InvalidArgument("failed to generate container spec: no command specified")
    return cmd + args


def image_volumes(config: Any, image_config: Mapping[str, Any]) -> list[str]:
    """The image's VOLUMEs no CRI mount covers (each gets a directory of the container's)."""
    given = {posixpath.normpath(m.container_path) for m in config.mounts}
    declared = image_config.get("Volumes") or {}
    paths = sorted(posixpath.normpath(p) for p in declared if isinstance(p, str) and p)
    return [p for p in paths if p.startswith("/") and p not in given]


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key) or []
    return [str(v) for v in value] if isinstance(value, list) else []


def sandbox_mounts(config: Any, sandbox: model.SandboxRecord) -> list[tuple[str, str, bool]]:
    """(container path, host path, readonly) of the pod's files a CRI mount does not cover."""
    given = {posixpath.normpath(m.container_path) for m in config.mounts}
    readonly = config.linux.security_context.readonly_rootfs
    out = []
    if sandbox.files:
        for name in ("hostname", "hosts", "resolv.conf"):
            path = os.path.join(sandbox.files, name)
            if f"/etc/{name}" not in given and os.path.exists(path):
                out.append((f"/etc/{name}", path, readonly))
    if "/dev/shm" not in given:
        out.append(("/dev/shm", sandbox.shm or "/dev/shm", False))
    return out


def mounts(
    spec: dict[str, Any],
    config: Any,
    sandbox: model.SandboxRecord,
    volumes: Sequence[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """The spec's mounts (see the module's rules); may set `linux.rootfsPropagation`."""
    wanted: list[tuple[str, str, bool, int]] = [
        (m.container_path, m.host_path, m.readonly, int(m.propagation)) for m in config.mounts
    ]
    wanted += [(dst, src, ro, 0) for dst, src, ro in sandbox_mounts(config, sandbox)]
    wanted += [(dst, src, False, 0) for dst, src in volumes]
    wanted.sort(key=lambda m: posixpath.normpath(m[0]).count("/"))
    taken = {posixpath.normpath(m[0]) for m in wanted}
    out = [
        m
        for m in [*spec["mounts"], dict(CGROUP_MOUNT, options=list(CGROUP_MOUNT["options"]))]
        if posixpath.normpath(m["destination"]) not in taken
        and not ("/dev" in taken and m["destination"].startswith("/dev/"))
    ]
    linux = spec["linux"]
    table: list[tuple[str, str]] | None = None
    for dst, src, readonly, propagation in wanted:
        if not os.path.lexists(src):
            os.makedirs(src, 0o755, exist_ok=True)
        src = os.path.realpath(src)
        mode = PROPAGATION.get(propagation, "rprivate")
        if mode != "rprivate":
            table = table if table is not None else mountinfo()
            point, optional = mount_of(src, table)
            shared = any(o.startswith("shared:") for o in optional.split())
            slave = any(o.startswith("master:") for o in optional.split())
            if mode == "rshared":
                if not shared:
                    raise FailedPrecondition(
                        f'path "{src}" is mounted on "{point}" but it is not a shared mount'
                    )
                linux["rootfsPropagation"] = "rshared"
            else:
                if not (shared or slave):
                    raise FailedPrecondition(
                        f'path "{src}" is mounted on "{point}" '
                        "but it is not a shared or slave mount"
                    )
                if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
                    linux["rootfsPropagation"] = "rslave"
        out.append(
            {
                "destination": dst,
                "type": "bind",
                "source": src,
                "options": ["rbind", mode, "ro" if readonly else "rw"],
            }
        )
    return out


def mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, optional fields) of each mount, in the table's order."""
    out = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 7:
                continue
            sep = fields.index("-", 6) if "-" in fields[6:] else len(fields)
            point = fields[4].encode().decode("unicode_escape")
            out.append((point, " ".join(fields[6:sep])))
    return out


def mount_of(path: str, table: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The mount holding `path` (the last, longest mount point above it)."""
    best = ("/", "")
    for point, optional in table:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, optional)
    return best


def add_devices(spec: dict[str, Any], devices: Sequence[Any]) -> None:
    """containerd's WithDevices: each host device (symlinks resolved) at its container path,
    allowed in the device cgroup with its permissions."""
    import stat

    linux = spec["linux"]
    for device in devices:
        path = os.path.realpath(device.host_path)
        try:
            st = os.stat(path)
        except OSError as e:
            raise InvalidArgument(f'device "{device.host_path}": {e.strerror}') from None
        if stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif stat.S_ISCHR(st.st_mode):
            kind = "c"
        else:
            raise InvalidArgument(f'"{device.host_path}" is not a device node')
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        entry = {
            "path": device.container_path, "type": kind, "major": major, "minor": minor,
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
        }  # fmt: skip
        kept = [d for d in linux.get("devices", []) if d["path"] != device.container_path]
        linux["devices"] = [*kept, entry]
        linux["resources"]["devices"].append(
            {"allow": True, "type": kind, "major": major, "minor": minor,
             "access": device.permissions or "rwm"}
        )  # fmt: skip


def resources(spec: dict[str, Any], given: Any) -> None:
    """containerd's WithResources: the values set (0 = not set)."""
    if given is None:
        return
    out = spec["linux"]["resources"]
    cpu: dict[str, Any] = {}
    if given.cpu_period:
        cpu["period"] = given.cpu_period
    if given.cpu_quota:
        cpu["quota"] = given.cpu_quota
    if given.cpu_shares:
        cpu["shares"] = given.cpu_shares
    if given.cpuset_cpus:
        cpu["cpus"] = given.cpuset_cpus
    if given.cpuset_mems:
        cpu["mems"] = given.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if given.memory_limit_in_bytes:
        memory["limit"] = given.memory_limit_in_bytes
    if given.memory_swap_limit_in_bytes:
        memory["swap"] = given.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if given.hugepage_limits:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in given.hugepage_limits
        ]
    if given.unified:
        out["unified"] = dict(given.unified)


def cgroups_path(parent: str, cid: str) -> str:
    """Under the pod's cgroup parent: `parent/<id>` for cgroupfs; for a systemd slice
    (`kubepods-burstable-pod1.slice`) the path systemd gives it, each dash a level
    (`/kubepods.slice/kubepods-burstable.slice/.../cri-containerd-<id>.scope`)."""
    name = os.path.basename(parent.rstrip("/"))
    if not name.endswith(".slice"):
        return posixpath.join(parent, cid)
    stem = name.removesuffix(".slice")
    levels = stem.split("-")
    path = "/" + "/".join("-".join(levels[: i + 1]) + ".slice" for i in range(len(levels)))
    if stem == "-":
        path = ""
    return f"{path}/cri-containerd-{cid}.scope"


def namespaces(inputs: Inputs, cgroup_ns: bool) -> list[dict[str, str]]:
    """The pod's network, IPC and UTS namespaces by path ("" = the host's: none), the PID
    namespace by mode, a mount namespace of its own, a cgroup one on cgroup v2."""
    pods = inputs.sandbox.namespaces
    out: list[dict[str, str]] = [{"type": "mount"}]
    for kind, path in (("network", pods.network), ("ipc", pods.ipc), ("uts", pods.uts)):
        if path:
            out.append({"type": kind, "path": path})
    mode = int(inputs.config.linux.security_context.namespace_options.pid)
    if mode == CONTAINER:
        out.append({"type": "pid"})
    elif mode == TARGET:
        if not inputs.target_pid:
            raise FailedPrecondition("the target container of the PID namespace is not running")
        out.append({"type": "pid", "path": f"/proc/{inputs.target_pid}/ns/pid"})
    elif mode == POD:
        if pods.pid:
            out.append({"type": "pid", "path": pods.pid})
        elif not pods.host_pid:
            out.append({"type": "pid"})  # a pod without a shared PID namespace
    if cgroup_ns:
        out.append({"type": "cgroup"})
    return out


def spec_annotations(inputs: Inputs) -> dict[str, str]:
    metadata = inputs.sandbox_config.metadata
    return {
        model.ANNOTATION_CONTAINER_TYPE: model.KIND_CONTAINER,
        model.ANNOTATION_SANDBOX_ID: inputs.sandbox.id,
        model.ANNOTATION_SANDBOX_NAMESPACE: metadata.namespace,
        model.ANNOTATION_SANDBOX_UID: metadata.uid,
        model.ANNOTATION_SANDBOX_NAME: metadata.name,
        model.ANNOTATION_SANDBOX_LOG_DIR: inputs.sandbox_config.log_directory,
        model.ANNOTATION_CONTAINER_NAME: inputs.config.metadata.name,
        model.ANNOTATION_IMAGE_NAME: inputs.image_name,
    }


def read_host(restrict_oom_score_adj: bool) -> Host:
    """The host's facts the spec needs, read now."""
    from ctl.spec import current_capabilities, host_devices

    try:
        with open("/proc/self/oom_score_adj") as f:
            own = int(f.read().strip() or 0)
    except (OSError, ValueError):
        own = 0
    cgroup2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if cgroup2:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            hugetlb = "hugetlb" in f.read().split()
    else:
        hugetlb = os.path.isdir("/sys/fs/cgroup/hugetlb")
    return Host(
        capabilities=current_capabilities(),
        oom_score_adj=own,
        cgroup2=cgroup2,
        apparmor=security.apparmor_enabled(),
        restrict_oom_score_adj=restrict_oom_score_adj,
        hugetlb=hugetlb,
        devices=host_devices,
    )
