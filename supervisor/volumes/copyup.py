"""Copy-up: a new, empty volume filled with what the image has where it is mounted.

Docker fills a volume mounted over a directory of the image with that directory's content
before the container starts, when the volume is empty and has never been filled, unless the
mount says `nocopy`. So does ctrd, from the container's root filesystem as the task will see it
(its snapshot, mounted read-only for the while, or the root the spec names when the request
carries no mounts), keeping files, directories, symlinks (as links), hard links (as links),
devices and fifos, owners, modes, xattrs and times; the directory's own owner and mode go to
the volume's `_data`, as docker's copy gives them.

Invariants:

- Nothing is read outside the root filesystem: the mount target is resolved inside the root as
  the kernel would resolve it with that root as `/` (an absolute symlink restarts from the
  root, `..` stops at it), one component at a time with O_NOFOLLOW from the fd of the one
  before; the walk below it opens every entry relative to its parent's fd with O_NOFOLLOW and
  copies a symlink as a symlink, never through it. Nothing is written outside the volume: every
  entry is created with *at() calls on a directory fd the copy made itself.
- A copy cut off (the daemon killed, the disk full) is never taken as complete: the marker
  `copy-up.pending` is written beside `_data` before the first entry, and becomes
  `copy-up.done` (a rename) only after the copied data is on disk (syncfs). A volume found with
  a pending marker is emptied and the marker dropped (`discard_pending`, at the daemon's start
  and before the next copy), so the next container copies again. A volume with `copy-up.done`
  is never copied into again, even once emptied (docker's "never copied into").
- `CTRD_TEST_COPYUP_PAUSE` (seconds, tests only): a sleep after each entry copied, so a test
  can kill the daemon in the middle of a copy.

Speed: a few threads copy, a directory each (`_Copier`); a small file costs open, create,
sendfile, fchown, listxattr, fchmod, futimens and two closes; one syncfs at the end makes the
whole copy durable (fsync per file would cost a journal commit each).

Blocking: run it on a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import CtrdError, Unknown

PENDING = "copy-up.pending"
DONE = "copy-up.done"
PAUSE_ENV = "CTRD_TEST_COPYUP_PAUSE"
MAX_HOPS = 40  # the kernel's limit of symlinks followed in one lookup
WORKERS = min(4, os.cpu_count() or 1)  # threads copying, a directory each
MAX_QUEUED = 64  # directories waiting for a thread (two fds each); more are copied inline
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SKIPPED_XATTRS = ("trusted.", "security.selinux")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def syncfs(fd: int) -> None:
    """Commit the filesystem holding `fd` to disk."""
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def open_in_root(root_fd: int, path: str) -> int | None:
    """An fd of directory `path` resolved inside the root `root_fd` (see the module's doc);
    None when it does not exist there or is not a directory."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack = [os.dup(root_fd)]
    hops = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                link = os.readlink(name, dir_fd=stack[-1])
                if link.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in link.split("/") if p not in ("", ".")] + parts
                continue
            if not stat.S_ISDIR(st.st_mode):
                return None
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def is_empty(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is None


def clear(directory: Path) -> None:
    """Remove everything inside `directory` (itself stays: it may be a mount point), never
    following a symlink."""
    fd = os.open(directory, _DIR_FLAGS)
    try:
        for name in os.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def discard_pending(volume_dir: Path, data: Path) -> bool:
    """Empty a volume whose copy-up was cut off, and drop its marker; whether there was one."""
    if not (volume_dir / PENDING).exists():
        return False
    clear(data)
    os.unlink(volume_dir / PENDING)
    return True


def wanted(volume_dir: Path, data: Path) -> bool:
    """Whether the volume takes a copy: never filled, and empty (a cut-off copy discarded)."""
    discard_pending(volume_dir, data)
    return not (volume_dir / DONE).exists() and is_empty(data)


def forget(volume_dir: Path) -> None:
    """The markers of a volume whose data went away (a tmpfs unmounted): it may be filled
    again."""
    for name in (PENDING, DONE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(volume_dir / name)


def _write_marker(volume_dir: Path, name: str) -> None:
    fd = os.open(volume_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.close(fd)
    _sync_dir(volume_dir)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Copied:
    entries: int  # 0: nothing at the target in the image, no copy made
    copy_ms: float = 0.0
    sync_ms: float = 0.0


def copy_up(rootfs: Path, target: str, volume_dir: Path, data: Path) -> Copied:
    """Fill `data` from `target` inside `rootfs` (see the module's doc)."""
    root_fd = os.open(rootfs, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the root itself is ours to name
    try:
        src = open_in_root(root_fd, target)
    finally:
        os.close(root_fd)
    if src is None:
        return Copied(0)
    start = time.monotonic()
    try:
        dst = os.open(data, _DIR_FLAGS)
        try:
            _write_marker(volume_dir, PENDING)
            try:
                count = _Copier(dst).copy(src, dst)
                copied = time.monotonic()
                syncfs(dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    discard_pending(volume_dir, data)
                raise
        finally:
            os.close(dst)
    except CtrdError:
        raise
    except OSError as e:
        raise Unknown(f"copy of {target} into the volume failed: {e}", plain=True) from None
    finally:
        os.close(src)
    os.rename(volume_dir / PENDING, volume_dir / DONE)
    _sync_dir(volume_dir)
    done = time.monotonic()
    return Copied(count, (copied - start) * 1000, (done - copied) * 1000)


def _metadata(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    """Owner, xattrs, mode and times, in that order (chown clears setuid and capabilities)."""
    _apply(dst_fd, st, _read_xattrs(src_fd))


def _read_xattrs(fd: int) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return [(n, os.getxattr(fd, n)) for n in names if not n.startswith(_SKIPPED_XATTRS)]


def _apply(fd: int, st: os.stat_result, xattrs: list[tuple[str, bytes]]) -> None:
    os.fchown(fd, st.st_uid, st.st_gid)
    for name, value in xattrs:
        try:
            os.setxattr(fd, name, value)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _open_path(root: int, relative: str) -> int:
    """A directory below `root` (a path the copy made), one component at a time with
    O_NOFOLLOW: a symlink put in its way meanwhile is refused, never followed."""
    fd = os.dup(root)
    for name in (p for p in relative.split("/") if p):
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


class _Copier:
    """A tree copied by a few threads, a directory at a time (the system calls, most of the
    time, release the GIL; ext4 creates files in different directories in parallel).

    A directory's owner, mode, xattrs and times are set once everything in it is (a new entry
    changes its mtime), deepest first, after the threads are done; so are the second and later
    names of a hard-linked inode, linked to the first one copied. Both reach their directories
    one component at a time with O_NOFOLLOW from the volume's fd, as the walk does.
    """

    def __init__(self, dst_root: int, workers: int = WORKERS) -> None:
        self.dst_root = dst_root
        self.workers = workers
        self.lock = threading.Lock()
        self.first: dict[tuple[int, int], str] = {}  # a hard-linked inode -> its first copy
        self.links: list[tuple[str, str]] = []  # (first copy, another name): linked after
        self.dirs: list[tuple[str, os.stat_result, list[tuple[str, bytes]]]] = []
        self.count = 0
        self.failed = False
        self.pause = float(os.environ.get(PAUSE_ENV) or 0)
        self.pool: ThreadPoolExecutor | None = None
        self.futures: list[Future[None]] = []

    def copy(self, src: int, dst: int) -> int:
        """Copy the entries of directory `src` into directory `dst` (`dst` gets `src`'s own
        metadata too); how many."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="copy-up") as self.pool:
            self._submit(os.dup(src), os.dup(dst), "")
            error: BaseException | None = None
            while True:
                with self.lock:
                    if not self.futures:
                        break
                    future = self.futures.pop()
                try:
                    future.result()
                except BaseException as e:
                    self.failed = True  # the others stop at their next entry
                    error = error or e
            if error is not None:
                raise error
        for first, other in self.links:
            self._link(first, other)
        for relative, st, xattrs in sorted(self.dirs, key=lambda d: -d[0].count("/")):
            fd = _open_path(self.dst_root, relative)
            try:
                _apply(fd, st, xattrs)
            finally:
                os.close(fd)
        _metadata(src, dst, os.fstat(src))
        return self.count

    def _submit(self, src: int, dst: int, relative: str) -> None:
        assert self.pool is not None
        with self.lock:
            self.futures.append(self.pool.submit(self._directory, src, dst, relative))

    def _directory(self, src: int, dst: int, relative: str) -> None:
        """Copy one directory's entries (closing both fds); its subdirectories become tasks of
        their own, or are copied here when many are waiting (each task holds two fds)."""
        try:
            if self.failed:
                return
            with os.scandir(src) as listing:
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
            for name, st in entries:
                if self.failed:
                    return
                self._entry(src, dst, f"{relative}{name}", name, st)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            os.close(src)
            os.close(dst)

    def _entry(self, src: int, dst: int, path: str, name: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            child_src = os.open(name, _DIR_FLAGS, dir_fd=src)
            try:
                child_dst = os.open(name, _DIR_FLAGS, dir_fd=dst)
                xattrs = _read_xattrs(child_src)
            except BaseException:
                os.close(child_src)
                raise
            with self.lock:
                self.dirs.append((path, st, xattrs))
                busy = len(self.futures) >= MAX_QUEUED
            if busy:
                self._directory(child_src, child_dst, path + "/")
            else:
                self._submit(child_src, child_dst, path + "/")
        elif st.st_nlink > 1 and not stat.S_ISLNK(mode) and not self._claim(st, path):
            with self.lock:
                self.links.append((self.first[(st.st_dev, st.st_ino)], path))
        elif stat.S_ISREG(mode):
            self._file(src, dst, name, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst,
                     follow_symlinks=False)  # fmt: skip
        else:  # devices, fifos, sockets: made as they are (a node grants nothing itself)
            os.mknod(name, mode, st.st_rdev, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dst)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst,
                     follow_symlinks=False)  # fmt: skip
        with self.lock:
            self.count += 1

    def _claim(self, st: os.stat_result, path: str) -> bool:
        """Whether `path` is the first name of its inode met (then it is copied; the others
        are linked to it once every copy is made)."""
        with self.lock:
            return self.first.setdefault((st.st_dev, st.st_ino), path) == path

    def _link(self, first: str, other: str) -> None:
        first_dir, _, first_name = first.rpartition("/")
        other_dir, _, other_name = other.rpartition("/")
        source = _open_path(self.dst_root, first_dir)
        try:
            target = _open_path(self.dst_root, other_dir)
            try:
                os.link(first_name, other_name, src_dir_fd=source, dst_dir_fd=target,
                        follow_symlinks=False)  # fmt: skip
            finally:
                os.close(target)
        finally:
            os.close(source)

    @staticmethod
    def _file(src: int, dst: int, name: str, st: os.stat_result) -> None:
        sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
        try:
            dfd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                dir_fd=dst,
            )  # fmt: skip
            try:
                offset = 0
                while offset < st.st_size:
                    sent = os.sendfile(dfd, sfd, offset, st.st_size - offset)
                    if sent == 0:
                        break  # the file shrank meanwhile
                    offset += sent
                _metadata(sfd, dfd, st)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
