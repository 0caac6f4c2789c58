"""The `local` volume driver: where a volume's data is, its options, and their mounts.

A volume's directory is `<root>/volumes/<namespace>/<name>/`, its data `_data` in it (docker's
`/var/lib/docker/volumes/<name>/_data`, one more level for the namespace); beside `_data` are
the copy-up markers (`supervisor.volumes.copyup`), never visible in a container. Volume names
follow docker's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, so no name climbs out of its namespace's
directory or collides with `.trash`, where removed volumes' directories go before they are
deleted.

Options are docker's local driver's: `type`, `device` and `o` are mount(8)'s (`type=tmpfs
device=tmpfs o=size=64m`, `type=none device=/host/dir o=bind`, `type=nfs device=:/export
o=addr=10.0.0.1`), each requiring the others as docker requires them, checked at create with
docker's words; `size` (a quota) is refused as docker refuses it without quota support. A
volume with `type` or `device` is mounted on its `_data` when a task first uses it and
unmounted when the last task using it is deleted (the manager keeps the count); one without
is its `_data` directory itself and is never mounted. The mounts are made with mount(2)
(`snapshotter.mount`): `o`'s flags (`bind`, `ro`, `nosuid`...) become mount flags, the rest
the filesystem's data, as docker's `mount.Mount` splits them.

Removing a volume's data never goes through a mount: its `_data` is unmounted first and the
removal is refused while anything is still mounted there (a bind of a host directory must
never lose the host's files).

Blocking: these functions make system calls; the manager calls them on worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shim import dirs
from snapshotter.mount import MountError, parse_options, perform, plan, unmount
from snapshotter.protocol import Mount
from supervisor.errors import CtrdError, FailedPrecondition, InvalidArgument, Unknown

DRIVER = "local"
DATA = "_data"
TRASH = ".trash"
NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"  # docker's RestrictedNameChars
_NAME = re.compile(rf"^{NAME_CHARS}+$")
VALID_OPTIONS = ("type", "o", "device", "size")
# option -> the options it needs (docker's mandatoryOpts), checked in this order
REQUIRED = (("device", ("type",)), ("type", ("device",)), ("o", ("device", "type")))
# the kernel's memparse: a number (C's base 0) and an optional suffix, or a percentage (tmpfs)
_TMPFS_SIZE = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)([kKmMgGtTpPeE]?|%)$")


def go_quote(text: str) -> str:
    """Go's %q of a string, for the printable ASCII docker's names are made of."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def validate_name(name: str) -> None:
    """docker's local driver's name check, in its words."""
    if len(name) == 1:
        raise InvalidArgument(
            "volume name is too short, names should be at least two alphanumeric characters",
            plain=True,
        )
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{go_quote(name)} includes invalid characters for a local volume name, only "
            f"{go_quote(NAME_CHARS)} are allowed. If you intended to pass a host directory, "
            "use absolute path",
            plain=True,
        )


def validate_options(options: Mapping[str, str]) -> None:
    """docker's local driver's option checks, in its words, plus a tmpfs size that the kernel
    would refuse (docker finds that out only when a container first mounts the volume)."""
    for key in sorted(options):
        if key not in VALID_OPTIONS:
            raise InvalidArgument(f"invalid option: {go_quote(key)}", plain=True)
    for key, needs in REQUIRED:
        if key in options:
            for needed in needs:
                if needed not in options:
                    raise InvalidArgument(
                        f"missing required option: {go_quote(needed)}", plain=True
                    )
    if "size" in options:
        raise InvalidArgument("quota size requested but no quota support", plain=True)
    if options.get("type") == "tmpfs":
        for option in options.get("o", "").split(","):
            key, _, value = option.partition("=")
            if key == "size" and not _TMPFS_SIZE.match(value):
                raise InvalidArgument(f"invalid size: '{value}'", plain=True)


def needs_mount(options: Mapping[str, str]) -> bool:
    """Whether the volume's data is a mount (docker's needsMount)."""
    return bool(options.get("device") or options.get("type"))


@dataclass(frozen=True)
class VolumePaths:
    root: Path  # <root>/volumes
    namespace: str
    name: str

    @property
    def directory(self) -> Path:
        return self.root / self.namespace / self.name

    @property
    def data(self) -> Path:
        return self.directory / DATA


def make(paths: VolumePaths) -> None:
    """The volume's directories (0701 as docker's volume root, 0755 its data); existing ones
    are fine."""
    dirs.make_dirs(paths.directory, mode=0o701, parent_mode=0o701)  # beside a removal's rmdir
    paths.data.mkdir(mode=0o755, exist_ok=True)


def mounted_under(prefix: Path) -> list[str]:
    """The mount points at or under `prefix` (/proc/self/mountinfo, octal escapes decoded)."""
    base = str(prefix)
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def _unescape(field: bytes) -> str:
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field).decode(
        errors="surrogateescape"
    )


def is_mounted(paths: VolumePaths) -> bool:
    return str(paths.data) in mounted_under(paths.data)


def _resolve_addr(fstype: str, data: list[str]) -> list[str]:
    """docker resolves a host name in an nfs or cifs `addr=` to an IPv4 address."""
    if fstype not in ("nfs", "nfs4", "cifs"):
        return data
    out = []
    for option in data:
        key, _, value = option.partition("=")
        if key == "addr" and value:
            try:
                socket.inet_pton(socket.AF_INET, value)
            except OSError:
                try:
                    value = socket.gethostbyname(value)
                except OSError as e:
                    raise InvalidArgument(
                        f"error resolving passed in network volume address: {e}", plain=True
                    ) from None
            option = f"addr={value}"
        out.append(option)
    return out


def mount(paths: VolumePaths, options: Mapping[str, str]) -> None:
    """Mount the volume's options on its `_data` (docker's localVolume.mount), in its words."""
    fstype = options.get("type", "")
    device = options.get("device", "")
    if not device:
        raise InvalidArgument("missing device in volume options", plain=True)
    raw = [o for o in options.get("o", "").split(",") if o]
    _, _, data = parse_options(raw)
    flags = [o for o in raw if o not in data]
    spec = Mount(fstype or "none", device, (*flags, *_resolve_addr(fstype, data)))
    try:
        perform(plan(spec, paths.data))
    except MountError as e:
        why = os.strerror(e.errno) if e.errno else e.detail
        message = (
            f"error while mounting volume '{paths.data}': failed to mount local volume: "
            f"mount {device}:{paths.data}, data: {','.join(data)}: {why}"
        )
        kind = InvalidArgument if e.errno in (errno.EINVAL, errno.ENODEV) else Unknown
        raise kind(message, plain=True) from None


def unmount_data(paths: VolumePaths) -> None:
    """Undo whatever is mounted on the volume's `_data`; not mounted is fine."""
    unmount(paths.data)


def remove(paths: VolumePaths) -> None:
    """Delete the volume's directory: unmounted first, refused while anything stays mounted in
    it; moved to `.trash` first so that a crash never leaves half a volume under its name."""
    if not paths.directory.exists():
        return
    try:
        unmount_data(paths)
    except CtrdError as e:
        raise FailedPrecondition(f"remove {paths.name}: {e.detail}", plain=True) from None
    if still := mounted_under(paths.directory):
        raise FailedPrecondition(
            f"remove {paths.name}: still mounted: {', '.join(still)}", plain=True
        )
    trash = paths.root / TRASH
    trash.mkdir(mode=0o700, exist_ok=True)
    doomed = trash / f"{paths.namespace}-{paths.name}-{os.urandom(4).hex()}"
    os.rename(paths.directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    with contextlib.suppress(OSError):  # the namespace's directory, once empty
        os.rmdir(paths.root / paths.namespace)


def empty_trash(root: Path) -> None:
    """What removals cut off by a crash left in `.trash` (nothing there is mounted: a volume is
    unmounted before it is moved there)."""
    trash = root / TRASH
    if trash.is_dir() and not mounted_under(trash):
        shutil.rmtree(trash, ignore_errors=True)


def size(path: Path) -> int:
    """Bytes of the files under `path`, hard links counted once (docker's directory.Size);
    symlinks are not followed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
