"""docker's path rules for `cp`, pure: Go's `filepath` functions as docker calls them and
`pkg/archive/copy.go`'s decisions (written from their documented behaviour, Docker 20.10).

A path's trailing `/` asserts a directory and a trailing `/.` means "the directory's contents";
both survive cleaning (`preserve_trailing`). `prepare_copy` decides, from what the source is
and what the destination is, which directory a tar is extracted into and how its top entry
is renamed, or docker's error ("cannot copy directory", "no such directory").
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

NOT_A_DIRECTORY = "not a directory"
DIR_NOT_EXISTS = "no such directory"
CANNOT_COPY_DIR = "cannot copy directory"


class CopyError(Exception):
    """One of docker's copy errors; the message is docker's."""


def clean(path: str) -> str:
    """Go's filepath.Clean: no `.`, `..` resolved lexically, one leading slash at most."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def base(path: str) -> str:
    """Go's filepath.Base."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rpartition("/")[2]


def dirname(path: str) -> str:
    """Go's filepath.Dir."""
    head = path[: path.rfind("/") + 1]
    return clean(head) if head else "."


def split(path: str) -> tuple[str, str]:
    """Go's filepath.Split: everything up to the last slash, and the rest."""
    cut = path.rfind("/") + 1
    return path[:cut], path[cut:]


def specifies_current_dir(path: str) -> bool:
    return base(path) == "."


def has_trailing_separator(path: str) -> bool:
    return path.endswith("/")


def asserts_directory(path: str) -> bool:
    return has_trailing_separator(path) or specifies_current_dir(path)


def preserve_trailing(cleaned: str, original: str) -> str:
    """docker's PreserveTrailingDotOrSeparator."""
    if not specifies_current_dir(cleaned) and specifies_current_dir(original):
        if not has_trailing_separator(cleaned):
            cleaned += "/"
        cleaned += "."
    if not has_trailing_separator(cleaned) and has_trailing_separator(original):
        cleaned += "/"
    return cleaned


def split_dir_entry(path: str) -> tuple[str, str]:
    """docker's SplitPathDirEntry: (parent, last component), a trailing `/.` kept as `.`."""
    cleaned = clean(path)
    if specifies_current_dir(path):
        cleaned += "/."
    return dirname(cleaned), base(cleaned)


def in_container(path: str) -> str:
    """A path given for a container, made absolute there with its trailing `/` or `/.`."""
    return preserve_trailing(clean("/" + path), path)


def rebase_name(path: str, resolved: str) -> tuple[str, str]:
    """docker's GetRebaseName: the resolved path with the original's trailing `/.` or `/`, and
    the name the copy must take when resolving changed the last component ("" if none)."""
    if specifies_current_dir(path) and not specifies_current_dir(resolved):
        resolved += "/."
    if has_trailing_separator(path) and not has_trailing_separator(resolved):
        resolved += "/"
    return resolved, (base(path) if base(path) != base(resolved) else "")


@dataclass(frozen=True)
class CopyInfo:
    """docker's CopyInfo: a copy's source or destination."""

    path: str
    exists: bool = False
    is_dir: bool = False
    rebase_name: str = ""


@dataclass(frozen=True)
class Prepared:
    """Where to extract, and the renaming of the archive's top entry (old -> new) if any."""

    directory: str
    old: str = ""
    new: str = ""

    @property
    def renames(self) -> bool:
        return bool(self.old or self.new)


def prepare_copy(source: CopyInfo, destination: CopyInfo) -> Prepared:
    """docker's PrepareArchiveCopy (CopyError with its words)."""
    dst_dir, dst_base = split_dir_entry(destination.path)
    _, src_base = split_dir_entry(source.path)
    if source.rebase_name:
        src_base = source.rebase_name
    if destination.exists and destination.is_dir:
        return Prepared(destination.path)
    if destination.exists and source.is_dir:
        raise CopyError(CANNOT_COPY_DIR)
    if not destination.exists and not source.is_dir and asserts_directory(destination.path):
        raise CopyError(DIR_NOT_EXISTS)
    return Prepared(dst_dir, src_base, dst_base)


def rebase(name: bytes, old: str, new: str) -> bytes:
    """docker's RebaseArchiveEntries for one entry name: the first `old` becomes `new` (the root
    `/` as `old` counts as empty, so `new` is put in front)."""
    old_b = b"" if old == "/" else old.encode()
    if not old_b:
        return new.encode() + name
    return name.replace(old_b, new.encode(), 1)
