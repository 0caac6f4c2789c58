"""Helpers for the diff tests: hand-made tars (hostile ones too) and trees described as data."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from supervisor.diff.apply import Applied, ApplyTarget, apply_layer

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MTIME = 1_700_000_000


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: Any) -> Any:
    """A tar member: (TarInfo, data). `attrs` set TarInfo fields (mode, uid, linkname...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    return info, data


def tar(*members: Any, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def blob(directory: Path, data: bytes, name: str = "layer") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def apply_bytes(
    tmp: Path, data: bytes, target: ApplyTarget, media_type: str = OCI_TAR, **kw: Any
) -> Applied:
    blobs = tmp / "blobs"
    name = f"blob-{len(list(blobs.iterdir())) if blobs.exists() else 0}"
    return apply_layer(blob(blobs, data, name), media_type, target, **kw)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(
    root: Path, *, skip: Path | None = None, dir_times: bool = True
) -> dict[str, tuple[Any, ...]]:
    """Everything under `root` as comparable data: type, mode, owner, times, content, xattrs."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent and skip.name in dirnames:
            dirnames.remove(skip.name)
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                content: Any = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                content = None
            xattrs = sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
            )
            timed = not stat.S_ISLNK(st.st_mode) and (dir_times or not stat.S_ISDIR(st.st_mode))
            when = st.st_mtime_ns // 10**9 if timed else None
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                when,
                content,
                tuple(xattrs),
            )
    return out


def names_in(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()
