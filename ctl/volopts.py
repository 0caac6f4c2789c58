"""`ctrctl run/create`'s storage flags, checked as Docker Engine 20.10 checks them, and what
they become: volume labels for the daemon, spec mounts, and what `inspect` shows.

Pure (no gRPC, no I/O but `os.urandom` for anonymous names). It owns:

- `-v/--volume` by dockerd's linux parser (volume/mounts/linux_parser.go): `NAME:/path[:MODE]`
  (a named volume), `/host:/path[:MODE]` (a bind mount: the source is absolute), `/path` (an
  anonymous volume); MODE is a comma list of at most one each of ro|rw, z|Z, a propagation,
  nocopy and a consistency; a bind's missing host directory is made, as dockerd makes it;
- `--mount` by the CLI's opts/mount.go (CSV fields, keys and aliases: type, source|src,
  target|dst|destination, readonly|ro, volume-nocopy, volume-label, volume-driver, volume-opt,
  bind-propagation, bind-nonrecursive, tmpfs-size, tmpfs-mode, consistency), then the daemon's
  validateMountConfig (a bind's source must exist, an anonymous volume cannot be read-only...);
- `--tmpfs /path[:OPTIONS]`, its options merged with dockerd's defaults (noexec, nosuid, nodev,
  rprivate) as moby/sys's MergeTmpfsOptions merges them; a size, mode, uid, gid, nr_inodes or
  nr_blocks the kernel would refuse is refused here, before anything is made;
- `--volumes-from CONTAINER[:ro|rw]`'s syntax (the caller reads the other container);
- the image's `VOLUME`s: an anonymous volume each, unless a mount already covers the path
  (dockerd's createContainerOSSpecificSettings);
- docker's errors and words: `invalid volume specification: '...'`, `invalid mode: ...`,
  `invalid mount config for type "...": ...`, `Duplicate mount point: ...`, a volume name
  with `/` or `..` (`create NAME: "NAME" includes invalid characters for a local volume
  name...`), `invalid argument "..." for "--mount" flag: ...`. Each is a `MountError`, raised
  before anything is made (exit status 125).

The contract with the daemon (supervisor/volumes, issue #16): label `ctrd.io/volumes` is a
JSON array of `{"name", "target", "readonly", "nocopy"}` (volumes of the container's
namespace, mounted by the daemon at Tasks.Create); anonymous volumes are ordinary volumes with
label `ctrd.io/anonymous=true`, made by ctrctl before the container (names of 64 random hex
digits, as dockerd makes them). Binds and tmpfs mounts are plain OCI spec mounts. ctrctl keeps
what docker's `inspect` shows (each mount point's Type, Mode, RW, Propagation; HostConfig's
Binds, Mounts, Tmpfs, VolumesFrom) in its own label, `ctrctl.mounts`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

# The daemon's contract, supervisor.volumes.labels' names (a test checks they agree; importing
# that module would define its dataclass in every ctrctl).
VOLUMES_LABEL = "ctrd.io/volumes"
ANONYMOUS_LABEL = "ctrd.io/anonymous"

MOUNTS_LABEL = "ctrctl.mounts"
LOCAL = "local"

NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"  # docker's names.RestrictedNameChars
# Patterns as strings: compiled at their first use (re's cache), not at every ctrctl's import.
_NAME = rf"{NAME_CHARS}+"
PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
DEFAULT_PROPAGATION = "rprivate"
_RW_MODES = ("rw", "ro")
_LABEL_MODES = ("z", "Z")
_COPY_MODES = ("nocopy",)
_CONSISTENCY_MODES = ("consistent", "cached", "delegated")
TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev", DEFAULT_PROPAGATION)
# moby/sys mount flags: option -> (clears, flag); propagation options share one slot (-1)
_FLAGS: dict[str, int] = {
    "ro": 1, "rw": 1, "suid": 2, "nosuid": 2, "dev": 4, "nodev": 4, "exec": 8, "noexec": 8,
    "sync": 16, "async": 16, "dirsync": 128, "remount": 32, "mand": 64, "nomand": 64,
    "atime": 1024, "noatime": 1024, "diratime": 2048, "nodiratime": 2048, "relatime": 1 << 21,
    "norelatime": 1 << 21, "strictatime": 1 << 24, "nostrictatime": 1 << 24,
    **dict.fromkeys(("bind", "rbind", "unbindable", "runbindable", *PROPAGATIONS), -1),
}  # fmt: skip
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol")
_SIZE = r"[0-9]+[kKmMgGtTpPeE%]?"  # shmem's memparse (and % of RAM for size)
_RAM = r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?"  # go-units' sizeRegex


def add_flags(add: Callable[..., Any]) -> None:
    """`run/create`'s storage flags, given the parser's add_argument."""
    add(
        "-v", "--volume", action="append", default=[], metavar="[SRC:]DST[:MODE]",
        help="a named volume (NAME:/path), a bind mount (/host:/path) or an anonymous volume"
        " (/path); MODE: ro, rw, nocopy, a propagation",
    )  # fmt: skip
    add(
        "--mount", action="append", default=[], metavar="type=volume|bind|tmpfs,...",
        help="docker's mount: type, source|src, target|dst, readonly, volume-nocopy,"
        " volume-opt, volume-label, bind-propagation, tmpfs-size, tmpfs-mode",
    )  # fmt: skip
    add("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]", help="a tmpfs mount")
    add(
        "--volumes-from", action="append", default=[], metavar="CONTAINER[:ro|rw]",
        help="the volumes (and mounts) of another container",
    )  # fmt: skip


_NONE: Mapping[str, Any] = MappingProxyType({})


class MountError(ValueError):
    """A storage flag docker refuses, in docker's words (ctrctl exits 125)."""


# The values are NamedTuples, not frozen dataclasses: defining five of those took ~10 ms of
# every ctrctl's start here (dataclasses write their methods with exec).


class VolumeMount(NamedTuple):
    """A volume at `target`: named, or anonymous (`name` "" until `complete` names it)."""

    target: str
    name: str = ""
    anonymous: bool = False
    readonly: bool = False
    nocopy: bool = False
    mode: str = ""  # docker's Mode in inspect's Mounts
    driver_opts: Mapping[str, str] = _NONE  # --mount volume-opt
    labels: Mapping[str, str] = _NONE  # --mount volume-label


class BindMount(NamedTuple):
    source: str
    target: str
    readonly: bool = False
    propagation: str = DEFAULT_PROPAGATION
    mode: str = ""
    recursive: bool = True
    make_source: bool = False  # -v makes a missing host directory; --mount refuses it


class TmpfsMount(NamedTuple):
    target: str
    options: tuple[str, ...]  # the OCI mount's options, merged
    readonly: bool = False
    shown: bool = False  # a mount point in inspect's Mounts (--mount type=tmpfs; not --tmpfs)


class Storage(NamedTuple):
    """Every mount a container asks for, checked; what the daemon, the spec and inspect get."""

    volumes: tuple[VolumeMount, ...] = ()
    binds: tuple[BindMount, ...] = ()
    tmpfs: tuple[TmpfsMount, ...] = ()
    volumes_from: tuple[str, ...] = ()  # CONTAINER[:MODE] as given; the caller resolves them
    # what they bring (`inherit`), for the paths no flag takes
    inherited: tuple[VolumeMount | BindMount | TmpfsMount, ...] = ()
    # HostConfig as docker's inspect shows it: Binds, Mounts, Tmpfs, VolumesFrom
    host: Mapping[str, Any] = _NONE

    def targets(self) -> set[str]:
        mounts: tuple[VolumeMount | BindMount | TmpfsMount, ...] = (
            *self.volumes, *self.binds, *self.tmpfs,
        )  # fmt: skip
        return {m.target for m in mounts}

    def __bool__(self) -> bool:
        return bool(self.volumes or self.binds or self.tmpfs or self.volumes_from)


# --- docker's words ---------------------------------------------------------------------------


def _invalid_spec(raw: str) -> str:
    return f"invalid volume specification: '{raw}'"


def _config_error(kind: str, message: str) -> str:
    return f'invalid mount config for type "{kind}": {message}'


def _flag_error(value: str, message: str) -> MountError:
    return MountError(f'invalid argument "{value}" for "--mount" flag: {message}')


def check_name(name: str) -> None:
    """dockerd's local driver's rule for a volume's name (`create NAME: ...`)."""
    if len(name) == 1:
        raise MountError(
            f"create {name}: volume name is too short, names should be at least two"
            " alphanumeric characters"
        )
    if not re.fullmatch(_NAME, name):
        raise MountError(
            f'create {name}: "{name}" includes invalid characters for a local volume name, only'
            f' "{NAME_CHARS}" are allowed. If you intended to pass a host directory, use'
            " absolute path"
        )


def _check_target(target: str) -> str | None:
    """What is wrong with a mount's target, in docker's words; None when it is fine."""
    if not target:
        return "field Target must not be empty"
    if clean(target.replace("\\", "/")) == "/":
        return "invalid specification: destination can't be '/'"
    if not target.replace("\\", "/").startswith("/"):
        return f"invalid mount path: '{target}' mount path must be absolute"
    return None


def clean(path: str) -> str:
    """Go's path.Clean."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("/") else cleaned


# --- modes (-v's third field, --volumes-from's second) -------------------------------------------


def valid_mode(mode: str) -> bool:
    """linuxValidMountMode: at most one of each kind of mode, and nothing else."""
    if not mode:
        return True
    kinds = (_RW_MODES, _LABEL_MODES, PROPAGATIONS, _COPY_MODES, _CONSISTENCY_MODES)
    counts = [0] * len(kinds)
    for part in mode.split(","):
        found = next((i for i, kind in enumerate(kinds) if part in kind), None)
        if found is None:
            return False
        counts[found] += 1
    return all(count <= 1 for count in counts)


def read_write(mode: str) -> bool:
    return valid_mode(mode) and "ro" not in mode.split(",")


def _propagation(mode: str) -> str:
    return next((p for p in mode.split(",") if p in PROPAGATIONS), "")


# --- -v -----------------------------------------------------------------------------------------


def parse_volume(raw: str) -> VolumeMount | BindMount:
    """One `-v`, as dockerd's ParseMountRaw reads it."""
    if raw.count(":") > 2 or raw.split(":", 1)[0] == "":
        raise MountError(_invalid_spec(raw))
    parts = raw.split(":", 2)
    source, mode = "", ""
    if len(parts) == 1:
        target = parts[0]
    elif len(parts) == 2:
        if valid_mode(parts[1]):  # `/foo:rw`: a destination and a mode is no volume
            raise MountError(_invalid_spec(raw))
        source, target = parts
    else:
        source, target, mode = parts
    if not valid_mode(mode):
        raise MountError(f"invalid mode: {mode}")
    kind = "bind" if source.startswith("/") else "volume"
    propagation = _propagation(mode)
    problem = _check_target(target)
    if problem is None and kind == "volume" and propagation:
        problem = "field BindOptions must not be specified"
    if problem is None and kind == "bind" and "nocopy" in mode.split(","):
        problem = "field VolumeOptions must not be specified"
    if problem is not None:
        raise MountError(f"{_invalid_spec(raw)}: {_config_error(kind, problem)}")
    target = clean(target)
    readonly = not read_write(mode)
    if kind == "bind":
        return BindMount(
            clean(source), target, readonly, propagation or DEFAULT_PROPAGATION, mode,
            make_source=True,
        )  # fmt: skip
    nocopy = "nocopy" in mode.split(",")
    if not source:
        return VolumeMount(target, anonymous=True)
    check_name(source)
    return VolumeMount(target, source, readonly=readonly, nocopy=nocopy, mode=mode or "z")


# --- --mount ------------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def ram_in_bytes(text: str) -> int | None:
    """go-units' RAMInBytes (binary units, case-insensitive, optional `i` and `b`)."""
    matched = re.fullmatch(_RAM, text)
    if matched is None or matched.group(1).count(".") > 1:
        return None
    multiplier = 1024 ** (" kmgtp".index(matched.group(2).lower()) if matched.group(2) else 0)
    return int(float(matched.group(1)) * multiplier)


class _MountFields:
    """A `--mount` value's fields as opts.MountOpt collects them."""

    def __init__(self) -> None:
        self.type = "volume"
        self.source = ""
        self.target = ""
        self.readonly = False
        self.consistency = ""
        self.bind: dict[str, Any] | None = None
        self.volume: dict[str, Any] | None = None
        self.tmpfs: dict[str, int] | None = None

    def volume_options(self) -> dict[str, Any]:
        if self.volume is None:
            self.volume = {"NoCopy": False, "Labels": {}, "DriverConfig": {}}
        return self.volume

    def bind_options(self) -> dict[str, Any]:
        if self.bind is None:
            self.bind = {}
        return self.bind

    def tmpfs_options(self) -> dict[str, int]:
        if self.tmpfs is None:
            self.tmpfs = {}
        return self.tmpfs


def _csv_fields(value: str) -> list[str]:
    """The fields of a `--mount` value as Go's encoding/csv reads one record."""
    import csv

    try:
        return next(csv.reader([value], strict=True), [""])
    except csv.Error as e:
        raise _flag_error(value, f"parse error on line 1: {e}") from None


def _mount_fields(value: str) -> _MountFields:
    m = _MountFields()
    for item in _csv_fields(value):
        key, sep, text = item.partition("=")
        key = key.lower()
        if not sep:
            if key in ("readonly", "ro"):
                m.readonly = True
                continue
            if key == "volume-nocopy":
                m.volume_options()["NoCopy"] = True
                continue
            if key == "bind-nonrecursive":
                m.bind_options()["NonRecursive"] = True
                continue
            raise _flag_error(value, f"invalid field '{item}' must be a key=value pair")
        _mount_field(m, value, key, text, item)
    if not m.type:
        raise _flag_error(value, "type is required")
    if not m.target:
        raise _flag_error(value, "target is required")
    for options, prefix, kind in ((m.volume, "volume", "volume"), (m.bind, "bind", "bind"),
                                  (m.tmpfs, "tmpfs", "tmpfs")):  # fmt: skip
        if options is not None and m.type != kind:
            raise _flag_error(value, f"cannot mix '{prefix}-*' options with mount type '{m.type}'")
    return m


def _mount_field(m: _MountFields, value: str, key: str, text: str, item: str) -> None:
    def boolean(name: str) -> bool:
        parsed = _parse_bool(text)
        if parsed is None:
            raise _flag_error(value, f"invalid value for {name}: {text}")
        return parsed

    if key == "type":
        m.type = text.lower()
    elif key in ("source", "src"):
        m.source = text
    elif key in ("target", "dst", "destination"):
        m.target = text
    elif key in ("readonly", "ro"):
        m.readonly = boolean(key)
    elif key == "consistency":
        m.consistency = text.lower()
    elif key == "bind-propagation":
        m.bind_options()["Propagation"] = text.lower()
    elif key == "bind-nonrecursive":
        m.bind_options()["NonRecursive"] = boolean(key)
    elif key == "volume-nocopy":
        m.volume_options()["NoCopy"] = boolean("volume-nocopy")
    elif key == "volume-label":
        label, _, label_value = text.partition("=")
        m.volume_options()["Labels"][label] = label_value
    elif key == "volume-driver":
        m.volume_options()["DriverConfig"]["Name"] = text
    elif key == "volume-opt":
        option, _, option_value = text.partition("=")
        m.volume_options()["DriverConfig"].setdefault("Options", {})[option] = option_value
    elif key == "tmpfs-size":
        size = ram_in_bytes(text)
        if size is None:
            raise _flag_error(value, f"invalid value for {key}: {text}")
        m.tmpfs_options()["SizeBytes"] = size
    elif key == "tmpfs-mode":
        if not re.fullmatch(r"[+]?[0-7]+", text) or int(text, 8) >= 1 << 32:
            raise _flag_error(value, f"invalid value for {key}: {text}")
        m.tmpfs_options()["Mode"] = int(text, 8)
    else:
        raise _flag_error(value, f"unexpected key '{key}' in '{item}'")


def _mount_json(m: _MountFields) -> dict[str, Any]:
    """The mount as docker's HostConfig.Mounts shows it (api/types/mount, omitempty)."""
    shown: dict[str, Any] = {"Type": m.type}
    if m.source:
        shown["Source"] = m.source
    shown["Target"] = m.target
    if m.readonly:
        shown["ReadOnly"] = True
    if m.consistency:
        shown["Consistency"] = m.consistency
    if m.bind is not None:
        shown["BindOptions"] = {k: v for k, v in m.bind.items() if v}
    if m.volume is not None:
        volume = {k: v for k, v in m.volume.items() if v and k != "DriverConfig"}
        volume["DriverConfig"] = {k: v for k, v in m.volume["DriverConfig"].items() if v}
        shown["VolumeOptions"] = volume
    if m.tmpfs is not None:
        shown["TmpfsOptions"] = {k: v for k, v in m.tmpfs.items() if v}
    return shown


def parse_mount(value: str) -> VolumeMount | BindMount | TmpfsMount:
    """One `--mount`: the CLI's parse, then the daemon's validateMountConfig."""
    return _mount(_mount_fields(value))


def _mount(m: _MountFields) -> VolumeMount | BindMount | TmpfsMount:
    problem = _check_target(m.target)
    if problem is None:
        problem = _mount_problem(m)
    if problem is not None:
        raise MountError(_config_error(m.type, problem))
    target = clean(m.target)
    if m.type == "bind":
        bind = m.bind or {}
        return BindMount(
            clean(m.source), target, m.readonly, bind.get("Propagation") or DEFAULT_PROPAGATION,
            recursive=not bind.get("NonRecursive"),
        )  # fmt: skip
    if m.type == "tmpfs":
        tmpfs = m.tmpfs or {}
        data = [*(["ro"] if m.readonly else []), *_tmpfs_data(tmpfs)]
        return TmpfsMount(target, merge_tmpfs_options([*TMPFS_DEFAULTS, *data]), m.readonly, True)
    volume = m.volume or {}
    driver = volume.get("DriverConfig", {})
    if driver.get("Name", LOCAL) not in ("", LOCAL):
        raise MountError(f'create {m.source}: plugin "{driver["Name"]}" not found')
    if m.source:
        check_name(m.source)
    return VolumeMount(
        target, m.source, anonymous=not m.source, readonly=m.readonly,
        nocopy=bool(volume.get("NoCopy")), mode="z",
        driver_opts=dict(driver.get("Options", {})), labels=dict(volume.get("Labels", {})),
    )  # fmt: skip


def _mount_problem(m: _MountFields) -> str | None:
    """validateMountConfigImpl's checks past the target, in its order."""
    if m.type == "bind":
        if not m.source:
            return "field Source must not be empty"
        propagation = (m.bind or {}).get("Propagation", "")
        if propagation and propagation not in PROPAGATIONS:
            return f"invalid propagation mode: {propagation}"
        if not m.source.replace("\\", "/").startswith("/"):
            return f"invalid mount path: '{m.source}' mount path must be absolute"
        if not os.path.exists(m.source):
            return f"bind source path does not exist: {m.source}"
    elif m.type == "volume":
        if not m.source and m.readonly:
            return "must not set ReadOnly mode when using anonymous volumes"
    elif m.type == "tmpfs":
        if m.source:
            return "field Source must not be specified"
    else:
        return "mount type unknown"
    return None


def _tmpfs_data(options: Mapping[str, int]) -> list[str]:
    """ConvertTmpfsOptions: mode in octal, the size in the largest unit dividing it."""
    data = []
    if options.get("Mode"):
        data.append(f"mode={options['Mode']:o}")
    size = options.get("SizeBytes", 0)
    if size:
        for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if size % divisor == 0:
                data.append(f"size={size // divisor}{suffix}")
                break
        else:
            data.append(f"size={size}")
    return data


# --- --tmpfs ------------------------------------------------------------------------------------


def merge_tmpfs_options(options: Sequence[str]) -> tuple[str, ...]:
    """moby/sys's MergeTmpfsOptions: the last of each flag (one propagation) and of each
    data key wins, kept in order; an unknown option is refused in its words."""
    flags: set[int] = set()
    data: set[str] = set()
    merged: list[str] = []
    for option in reversed(options):
        if option == "defaults":
            continue
        if option in _FLAGS:
            if _FLAGS[option] not in flags:
                merged.insert(0, option)
                flags.add(_FLAGS[option])
            continue
        key, sep, _ = option.partition("=")
        if not sep or key not in _TMPFS_DATA:
            quoted = " ".join(json.dumps(p) for p in option.split("=", 1))
            raise MountError(f"invalid tmpfs option [{quoted}]")
        if key not in data:
            merged.insert(0, option)
            data.add(key)
    return tuple(merged)


def _check_tmpfs_value(option: str) -> None:
    """Values the kernel's tmpfs would refuse at start (runc's `invalid argument`), refused now."""
    key, _, value = option.partition("=")
    fine: Callable[[str], bool] | None = {
        "size": lambda v: re.fullmatch(_SIZE, v) is not None,
        "nr_blocks": lambda v: re.fullmatch(_SIZE, v) is not None and not v.endswith("%"),
        "nr_inodes": lambda v: re.fullmatch(_SIZE, v) is not None and not v.endswith("%"),
        "mode": lambda v: re.fullmatch(r"[0-7]{1,4}", v) is not None,
        "uid": lambda v: v.isdigit() and int(v) < 1 << 32,
        "gid": lambda v: v.isdigit() and int(v) < 1 << 32,
    }.get(key)
    if fine is not None and not fine(value):
        raise MountError(f'invalid tmpfs option ["{key}" "{value}"]')


def parse_tmpfs(raw: str) -> TmpfsMount:
    """One `--tmpfs PATH[:OPTIONS]`."""
    target, _, data = raw.partition(":")
    problem = _check_target(target)
    if problem is not None:
        raise MountError(problem)
    options = [o for o in data.split(",") if o] if data else []
    merged = merge_tmpfs_options([*TMPFS_DEFAULTS, *options])
    for option in merged:
        _check_tmpfs_value(option)
    return TmpfsMount(clean(target), merged, readonly="ro" in merged)


# --- --volumes-from -----------------------------------------------------------------------------


def parse_volumes_from(spec: str) -> tuple[str, str]:
    """ParseVolumesFrom: (container, mode); rw by default, no propagation or copy mode."""
    if not spec:
        raise MountError("volumes-from specification cannot be an empty string")
    container, sep, mode = spec.partition(":")
    if not sep:
        return container, "rw"
    parts = mode.split(",")
    if (
        not valid_mode(mode)
        or any(p in PROPAGATIONS for p in parts)
        or any(p in _COPY_MODES for p in parts)
    ):
        raise MountError(f"invalid mode: {mode}")
    return container, mode


# --- all together -------------------------------------------------------------------------------


def parse(
    volumes: Sequence[str] = (),
    mounts: Sequence[str] = (),
    tmpfs: Sequence[str] = (),
    volumes_from: Sequence[str] = (),
) -> Storage:
    """The storage flags of `run/create`, checked: any error before anything is made. Two
    mounts on one path are refused (`Duplicate mount point`); an anonymous `-v /path` on a path
    another mount takes is dropped, as dockerd drops it."""
    for spec in volumes_from:
        parse_volumes_from(spec)
    taken: set[str] = set()
    found: list[VolumeMount | BindMount | TmpfsMount] = []
    anonymous: dict[str, VolumeMount] = {}
    host_binds = []
    for raw in volumes:
        parsed = parse_volume(raw)
        if isinstance(parsed, VolumeMount) and parsed.anonymous:
            anonymous.setdefault(parsed.target, parsed)
            continue
        _take(taken, parsed.target, parsed.target)
        found.append(parsed)
        host_binds.append(raw)
    tmpfs_mounts = [parse_tmpfs(raw) for raw in tmpfs]
    for tmpfs_mount in tmpfs_mounts:
        _take(taken, tmpfs_mount.target, tmpfs_mount.target)
    host_mounts = []
    for value in mounts:
        fields = _mount_fields(value)
        mount = _mount(fields)
        _take(taken, mount.target, fields.target)
        found.append(mount)
        host_mounts.append(_mount_json(fields))
    found += tmpfs_mounts
    found += [v for target, v in anonymous.items() if target not in taken]
    host: dict[str, Any] = {
        "Binds": host_binds or None,
        "Mounts": host_mounts or None,
        "Tmpfs": dict(raw.partition(":")[::2] for raw in tmpfs) or None,
        "VolumesFrom": list(volumes_from) or None,
    }  # fmt: skip
    return Storage(
        volumes=tuple(m for m in found if isinstance(m, VolumeMount)),
        binds=tuple(m for m in found if isinstance(m, BindMount)),
        tmpfs=tuple(m for m in found if isinstance(m, TmpfsMount)),
        volumes_from=tuple(volumes_from),
        host=host,
    )


def _take(taken: set[str], target: str, shown: str) -> None:
    if target in taken:
        raise MountError(f"Duplicate mount point: {shown}")
    taken.add(target)


def new_volume_name() -> str:
    """A new anonymous volume's name: 64 random hex digits, as dockerd's GenerateRandomID."""
    return os.urandom(32).hex()


def complete(
    storage: Storage, image_config: Mapping[str, Any], new_name: Callable[[], str] = new_volume_name
) -> Storage:
    """The storage a container is made with: the mounts `--volumes-from` brings (`inherited`)
    on paths no flag takes, the image's `VOLUME`s as anonymous volumes where nothing is
    mounted yet, and a name for each anonymous volume."""
    taken = storage.targets()
    extra = [m for m in storage.inherited if m.target not in taken]
    taken |= {m.target for m in extra}
    image_volumes = image_config.get("Volumes") or {}
    for path in sorted(image_volumes) if isinstance(image_volumes, dict) else ():
        target = clean(path)
        if target not in taken:
            extra.append(VolumeMount(target, anonymous=True))
            taken.add(target)
    volumes = [
        v._replace(name=v.name or new_name())
        for v in (*[m for m in extra if isinstance(m, VolumeMount)], *storage.volumes)
    ]
    return storage._replace(
        inherited=(),
        volumes=tuple(volumes),
        binds=(*[m for m in extra if isinstance(m, BindMount)], *storage.binds),
        tmpfs=(*[m for m in extra if isinstance(m, TmpfsMount)], *storage.tmpfs),
    )


def inherit(
    points: Iterable[Mapping[str, Any]], spec_mounts: Sequence[Mapping[str, Any]], mode: str
) -> list[VolumeMount | BindMount | TmpfsMount]:
    """The mounts `--volumes-from C:mode` brings from C: its mount points (`mount_points`),
    read-only when C's is or `mode` says ro, never copied into (dockerd's CopyData false);
    binds and tmpfs mounts as C's spec has them."""
    writable = read_write(mode)
    found: list[VolumeMount | BindMount | TmpfsMount] = []
    by_target = {m.get("destination"): m for m in spec_mounts}
    for point in points:
        target, readonly = str(point["Destination"]), not (point.get("RW", True) and writable)
        kind = point.get("Type")
        if kind == "volume":
            found.append(VolumeMount(target, str(point["Name"]), readonly=readonly, nocopy=True))
        elif kind == "bind":
            found.append(
                BindMount(
                    str(point.get("Source", "")), target, readonly,
                    str(point.get("Propagation") or DEFAULT_PROPAGATION),
                )
            )  # fmt: skip
        elif kind == "tmpfs" and target in by_target:
            options = [o for o in by_target[target].get("options", []) if o not in ("ro", "rw")]
            found.append(
                TmpfsMount(target, (*options, *(["ro"] if readonly else [])), readonly, True)
            )
    return found


# --- what the daemon, the spec and inspect get --------------------------------------------------


def volume_label(storage: Storage) -> str:
    """`ctrd.io/volumes`: the contract's JSON array."""
    return json.dumps(
        [
            {"name": v.name, "target": v.target, "readonly": v.readonly, "nocopy": v.nocopy}
            for v in storage.volumes
        ],
        separators=(",", ":"),
    )


def mount_points(storage: Storage) -> list[dict[str, Any]]:
    """docker's MountPoints for inspect's Mounts (a volume's Source is its mountpoint, which
    the daemon knows: filled in when shown)."""
    volumes = [
        {"Type": "volume", "Name": v.name, "Destination": v.target, "Driver": LOCAL,
         "Mode": v.mode, "RW": not v.readonly, "Propagation": ""}
        for v in storage.volumes
    ]  # fmt: skip
    binds = [
        {"Type": "bind", "Source": b.source, "Destination": b.target, "Mode": b.mode,
         "RW": not b.readonly, "Propagation": b.propagation}
        for b in storage.binds
    ]  # fmt: skip
    tmpfs = [
        {"Type": "tmpfs", "Source": "", "Destination": t.target, "Mode": "",
         "RW": not t.readonly, "Propagation": ""}
        for t in storage.tmpfs
        if t.shown
    ]  # fmt: skip
    return [*volumes, *binds, *tmpfs]


def labels(storage: Storage) -> dict[str, str]:
    """The container's labels for its storage: the daemon's and ctrctl's own."""
    if not storage:
        return {}
    found = {}
    if storage.volumes:
        found[VOLUMES_LABEL] = volume_label(storage)
    # A volume's point keeps only its Mode: its name and RW are in ctrd.io/volumes (a label
    # may not pass 4096 bytes, and anonymous names are 64 characters).
    points = [
        {"Type": "volume", "Destination": p["Destination"], "Mode": p["Mode"]}
        if p["Type"] == "volume"
        else p
        for p in mount_points(storage)
    ]
    kept = {"points": points, **{k: v for k, v in storage.host.items() if v}}
    found[MOUNTS_LABEL] = json.dumps(kept, separators=(",", ":"))
    return found


def spec_mounts(storage: Storage) -> list[dict[str, Any]]:
    """The OCI mounts of the binds and tmpfs mounts, shallower paths first (dockerd sorts its
    mounts by their number of path parts)."""
    binds = [
        {"destination": b.target, "type": "bind", "source": b.source,
         "options": ["rbind" if b.recursive else "bind", "ro" if b.readonly else "rw",
                     b.propagation]}
        for b in storage.binds
    ]  # fmt: skip
    tmpfs = [
        {"destination": t.target, "type": "tmpfs", "source": "tmpfs", "options": list(t.options)}
        for t in storage.tmpfs
    ]
    return sorted([*binds, *tmpfs], key=lambda m: str(m["destination"]).count("/"))


def kept(labels: Mapping[str, str]) -> dict[str, Any]:
    """What `labels` kept in `ctrctl.mounts` ({} for a container ctrctl did not make)."""
    try:
        value = json.loads(labels.get(MOUNTS_LABEL) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def label_volumes(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The volumes a container's `ctrd.io/volumes` asks for (none when absent or unreadable)."""
    try:
        value = json.loads(labels.get(VOLUMES_LABEL) or "[]")
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict) and isinstance(v.get("name"), str)]


def points_of(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """A container's mount points: those ctrctl kept, else its volumes as the label asks
    (a container made by `ctr run --label ctrd.io/volumes=...`)."""
    volumes = {
        str(v.get("target", "")): {
            "Type": "volume", "Name": v["name"], "Destination": str(v.get("target", "")),
            "Driver": LOCAL, "Mode": "", "RW": not v.get("readonly"), "Propagation": "",
        }
        for v in label_volumes(labels)
    }  # fmt: skip
    points = kept(labels).get("points")
    if not isinstance(points, list):
        return list(volumes.values())
    shown = []
    for point in points:
        if not isinstance(point, dict) or "Destination" not in point:
            continue
        if point.get("Type") == "volume":
            volume = volumes.get(str(point["Destination"]))
            if volume is not None:
                shown.append({**volume, "Mode": point.get("Mode", "")})
        else:
            shown.append(point)
    return shown
