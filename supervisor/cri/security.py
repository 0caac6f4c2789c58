"""A CRI container's security context applied to its OCI spec, by containerd 1.6's CRI rules.

- capabilities: docker's default set; "ALL" in add gives every capability this daemon holds,
  "ALL" in drop none; then the named ones (without `CAP_`) are added and dropped; ambient
  capabilities are always cleared.
- privileged (only in a privileged sandbox: "no privileged container allowed in sandbox"):
  every capability the daemon holds, the host's devices, all devices allowed, no masked or
  read-only paths, /sys and the cgroup mount writable, no seccomp and no AppArmor profile.
- masked and read-only paths: exactly those given (kubelet sends the defaults).
- seccomp: the `seccomp` profile, else the deprecated path (`runtime/default`,
  `docker/default` -> RuntimeDefault, `unconfined`, `localhost/<abs path>`; anything else is
  refused); nothing given = unconfined. RuntimeDefault is ctrd's default profile
  (`supervisor.seccomp`, docker's in substance) for the container's bounding set; Localhost
  reads a file (docker's profile format, which takes OCI's plain form too).
- AppArmor: ignored when the host has none (containerd refuses any profile but unconfined
  there); with AppArmor, a Localhost profile is set when loaded (an unloaded one is refused),
  RuntimeDefault leaves the runtime's (ctrd ships no AppArmor profile of its own).
"""

from __future__ import annotations

import json
import os
from typing import Any

from supervisor import seccomp
from supervisor.errors import InvalidArgument

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
LOCALHOST = "localhost/"
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST_TYPE = 0, 1, 2  # SecurityProfile.ProfileType
APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"


def capability_sets(context: Any, all_caps: list[str]) -> list[str]:
    """The bounding (= effective = permitted) set for a non-privileged container."""
    caps = list(DEFAULT_CAPABILITIES)
    if not context.HasField("capabilities"):
        return caps
    add = [c.upper() for c in context.capabilities.add_capabilities]
    drop = [c.upper() for c in context.capabilities.drop_capabilities]
    if "ALL" in add:
        caps = list(all_caps)
    if "ALL" in drop:
        caps = []
    for name in add:
        if name != "ALL" and f"CAP_{name}" not in caps:
            caps.append(f"CAP_{name}")
    dropped = {f"CAP_{name}" for name in drop}
    return [c for c in caps if c not in dropped]


def set_capabilities(spec: dict[str, Any], caps: list[str]) -> None:
    spec["process"]["capabilities"] = {
        "bounding": list(caps), "effective": list(caps), "permitted": list(caps),
    }  # fmt: skip


def make_privileged(
    spec: dict[str, Any], all_caps: list[str], devices: list[dict[str, Any]]
) -> None:
    """containerd's WithPrivileged + WithHostDevices + WithAllDevicesAllowed."""
    set_capabilities(spec, all_caps)
    linux = spec["linux"]
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    for mount in spec["mounts"]:
        if mount.get("type") in ("sysfs", "cgroup"):
            mount["options"] = [o for o in mount.get("options", []) if o != "ro"] + ["rw"]
    linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    if devices:
        linux["devices"] = devices


def _profile_from_path(path: str) -> tuple[int, str] | None:
    """containerd's generateSecurityProfile for a deprecated string ("" = not given)."""
    if not path:
        return None
    if path in ("runtime/default", "docker/default"):
        return RUNTIME_DEFAULT, ""
    if path == "unconfined":
        return UNCONFINED, ""
    if not path.startswith(LOCALHOST):
        raise InvalidArgument(f'failed to generate seccomp spec opts: invalid profile "{path}"')
    return LOCALHOST_TYPE, path.removeprefix(LOCALHOST)


def seccomp_profile(context: Any) -> tuple[int, str] | None:
    """(profile type, localhost ref) asked for, None when nothing is."""
    if context.HasField("seccomp"):
        return int(context.seccomp.profile_type), context.seccomp.localhost_ref
    return _profile_from_path(context.seccomp_profile_path)


def apply_seccomp(spec: dict[str, Any], context: Any) -> None:
    """`linux.seccomp` for a non-privileged container (after its capabilities are set)."""
    asked = seccomp_profile(context)
    if asked is None:
        return
    kind, ref = asked
    if kind != LOCALHOST_TYPE and ref:
        raise InvalidArgument(
            "seccomp config invalid LocalhostRef must only be set if ProfileType is Localhost"
        )
    bounding = spec["process"].get("capabilities", {}).get("bounding", [])
    if kind == UNCONFINED:
        return
    if kind == RUNTIME_DEFAULT:
        spec["linux"]["seccomp"] = seccomp.runtime_default(bounding)
        return
    if kind != LOCALHOST_TYPE:
        raise InvalidArgument("seccomp unknown ProfileType")
    path = ref.removeprefix(LOCALHOST)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        spec["linux"]["seccomp"] = seccomp.to_oci(seccomp.parse(data), bounding)
    except (OSError, ValueError, seccomp.ProfileError) as e:
        raise InvalidArgument(f'failed to load seccomp profile "{path}": {e}') from None


def apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip().startswith("Y") and os.path.exists(APPARMOR_PROFILES)
    except OSError:
        return False


def apply_apparmor(spec: dict[str, Any], context: Any, privileged: bool, enabled: bool) -> None:
    if context.HasField("apparmor"):
        kind, ref = int(context.apparmor.profile_type), context.apparmor.localhost_ref
    else:
        given = context.apparmor_profile
        if not given:
            return
        if given in ("runtime/default", "docker/default"):
            kind, ref = RUNTIME_DEFAULT, ""
        elif given == "unconfined":
            kind, ref = UNCONFINED, ""
        elif given.startswith(LOCALHOST):
            kind, ref = LOCALHOST_TYPE, given.removeprefix(LOCALHOST)
        else:
            raise InvalidArgument(
                f'failed to generate apparmor spec opts: invalid profile "{given}"'
            )
    if not enabled:
        return  # the host has no AppArmor: nothing to confine with (containerd refuses)
    if kind != LOCALHOST_TYPE or (privileged and kind == RUNTIME_DEFAULT):
        return
    name = ref.removeprefix(LOCALHOST)
    try:
        with open(APPARMOR_PROFILES) as f:
            loaded = any(line.startswith(f"{name} (") for line in f)
    except OSError:
        loaded = False
    if not loaded:
        raise InvalidArgument(
            f"failed to generate apparmor spec opts: apparmor profile not found {name}"
        )
    spec["process"]["apparmorProfile"] = name
