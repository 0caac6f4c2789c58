"""An image's users and groups: its /etc/passwd and /etc/group read from its root filesystem
without mounting it, as one directory or as the directories of an overlay's layers.

`layered_path` finds a path of the overlay of some layers as overlayfs would (whiteouts,
opaque directories) and resolves its symlinks inside the image (`scoped_path` does the same
for one root directory): a link can never lead out of the image. `UserDB` parses the two files
as runc's libcontainer/user does. Shared by ctrctl (docker's rules for `-u`, `ctl.spec`) and
the CRI (containerd's rules for run_as_user/run_as_username, `supervisor.cri.users`); it
imports nothing of either.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Union

if TYPE_CHECKING:
    from pathlib import Path

# An image's root filesystem: one directory (a mounted root), or the directories of an
# overlay's layers, top first, read as overlayfs merges them (`layered_path`).
RootFS = Union["Path", tuple[str, ...]]


class PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int


class GroupEntry(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...]


def atoi(text: str) -> int | None:
    """Go's strconv.Atoi, which GetExecUser uses to tell ids from names."""
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


class UserDB:
    """The image's /etc/passwd and /etc/group, parsed as runc's libcontainer/user does
    (numbers that do not parse read as 0; group lines may be comments)."""

    def __init__(self, rootfs: RootFS | None) -> None:
        self.rootfs = rootfs

    def _lines(self, name: str) -> Iterator[str] | None:
        if self.rootfs is None:
            return None
        rootfs = self.rootfs
        layers = rootfs if isinstance(rootfs, tuple) else (os.fspath(rootfs),)
        found = layered_path(layers, f"/etc/{name}")
        if found is None:
            return None
        try:
            with open(found, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        text = data.decode("utf-8", "surrogateescape")
        return (line.strip() for line in text.split("\n"))

    def users(self) -> list[PasswdEntry] | None:
        lines = self._lines("passwd")
        if lines is None:
            return None
        out = []
        for line in lines:
            if line:
                fields = [*line.split(":"), "", "", ""]
                out.append(PasswdEntry(fields[0], _number(fields[2]), _number(fields[3])))
        return out

    def groups(self) -> list[GroupEntry] | None:
        lines = self._lines("group")
        if lines is None:
            return None
        out = []
        for line in lines:
            if line and not line.startswith("#"):
                fields = [*line.split(":"), "", "", ""]
                members = tuple(fields[3].split(",")) if fields[3] else ()
                out.append(GroupEntry(fields[0], _number(fields[2]), members))
        return out


def _number(text: str) -> int:
    number = atoi(text)
    return number if number is not None else 0


def scoped_path(root: Path, path: str) -> Path:
    """`path` inside `root` with symlinks resolved as if `root` were `/` (continuity's
    fs.RootPath): a link can never lead out of the image."""
    return root.joinpath(*_scoped_parts((os.fspath(root),), path))


def layered_path(layers: Sequence[str], path: str) -> str | None:
    """Where `path` of the overlay of `layers` (directories, top first) is on the host, its
    symlinks resolved inside the overlay as `scoped_path` resolves them in a root; None when
    it is not there. The image's files are read so without mounting its snapshot."""
    return _lookup(layers, _scoped_parts(layers, path))


def _scoped_parts(layers: Sequence[str], path: str) -> list[str]:
    """The components of `path` resolved in the root of `layers` (see `scoped_path`)."""
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
        candidate = _lookup(layers, [*resolved, part])
        if candidate is not None and os.path.islink(candidate):
            links += 1
            if links > 255:
                raise ValueError(f"too many symlinks resolving {path!r} in {layers[0]}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        resolved.append(part)
    return resolved


def _lookup(layers: Sequence[str], parts: Sequence[str]) -> str | None:
    """The host path of `parts` (no links among its directories) in the overlay of `layers`,
    found as overlayfs finds it: the topmost layer's entry; a directory merges those of the
    layers below it down to an opaque one (`trusted.overlay.opaque`) or to one where the name
    is not a directory; a whiteout (a 0/0 character device) hides the name below it. One
    layer is a plain directory."""
    overlay = len(layers) > 1  # one layer: a directory, where nothing is a whiteout
    stack = list(layers)  # the layers whose directories make the current directory
    found: str | None = layers[0] if layers else None
    for depth in range(len(parts)):
        relative = os.path.join(*parts[: depth + 1])
        found, below = None, []
        for layer in stack:
            candidate = os.path.join(layer, relative)
            try:
                st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                break  # a whiteout
            if not stat.S_ISDIR(st.st_mode):
                found = found or candidate
                break
            found = found or candidate
            below.append(layer)
            if overlay and _opaque(candidate):
                break
        if found is None:
            return None
        if depth < len(parts) - 1 and not below:
            return None  # not a directory: nothing under it
        stack = below
    return found


def _opaque(directory: str) -> bool:
    try:
        return os.getxattr(directory, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False
