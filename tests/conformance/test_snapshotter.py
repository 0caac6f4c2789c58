"""The snapshotter conformance suite, run against every implementation of `Snapshotter`.

A port of containerd's snapshotter testsuite and of its overlay tests (design notes,
conformance-suites.md §A), written once and run against:

- `overlay`: `OverlaySnapshotter` on a temporary root;
- `native`: `NativeSnapshotter` on a temporary root;
- `namespaced`: the daemon's namespaced wrapper (`SnapshotStore`) over an overlay backend;
- `remote`: a live ctrd through the gRPC API (`RemoteSnapshotter`).

The `snapshotter` fixture gives a `Subject`; a case hands it an async scenario, which gets a
`Harness`: the snapshotter (opened inside the case's event loop, closed after it), `mounted()`
to perform the mounts it returns on a scratch directory (snapshotter/mount.py, always undone),
and the backend's root for the cases about what a backend keeps on disk. Another
implementation joins with an opener in `OPENERS` (an async context manager from a root
directory, which it may ignore, to the opened snapshotter), its entry in `RENAMES_LOWER_DIRS`,
and its name in the lists below (ALL, and BACKENDS only if it keeps that layout).

Which case runs where is explicit in each case's parametrization, never a runtime skip:

| cases | implementations | why |
| --- | --- | --- |
| §A Basic … 128LayersMount; errors, kinds, walk, usage, concurrency | ALL | the protocol |
| §A Rename of a lower directory | `renames_lower_dirs` | overlay refuses it (EXDEV) |
| on-disk layout, cleanup of orphans, crash consistency | BACKENDS | they read the root |
| mount shapes, usage of a child, option-length limit | OVERLAY | overlay's own |
| mount shapes, copies | NATIVE | native's own |

Roots live under /var/tmp (overlay needs a real filesystem), at a path at least as long as the
daemon's (`/var/lib/ctrd/snapshots/overlayfs`), so that option lengths are what they are in
production. Every fixture unmounts what a case left mounted (and fails the case for it) and
removes its directory. Files are made with explicit modes, so the process umask does not
matter (containerd clears it instead). Every Prepare, View and Commit carries
`containerd.io/gc.root`, as in containerd, so that metadata-backed implementations keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from snapshotter import mount
from snapshotter.native import NativeSnapshotter
from snapshotter.overlay import OverlaySnapshotter
from snapshotter.protocol import Info, Kind, Mount, Snapshotter, Usage
from supervisor.client.snapshots import RemoteSnapshotter
from supervisor.errors import (
    AlreadyExists,
    CtrdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from supervisor.metadata.db import Database
from supervisor.metadata.snapshots import SnapshotStore

GC_ROOT = "containerd.io/gc.root"
ROOT_SUFFIX = "var/lib/ctrd/snapshots/overlayfs"  # under the temporary directory
Window = tuple[int, int]


# -- the implementations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    snapshotter: Snapshotter
    close: Callable[[], Awaitable[None]]


Opener = Callable[[Path], contextlib.AbstractAsyncContextManager[Opened]]


def backend(cls: Any) -> Opener:
    @contextlib.asynccontextmanager
    async def open_backend(root: Path) -> AsyncIterator[Opened]:
        sn = cls(root)
        try:
            yield Opened(sn, sn.close)
        finally:
            await sn.close()

    return open_backend


@contextlib.asynccontextmanager
async def open_namespaced(root: Path) -> AsyncIterator[Opened]:
    """The daemon's namespaced wrapper over an overlay backend, with its own database."""
    db = await Database.open(root.parent / "meta.db")
    sn = OverlaySnapshotter(root)
    store = SnapshotStore(db, sn, "overlayfs", "testsuite")

    async def close() -> None:
        await sn.close()
        await db.close()

    try:
        yield Opened(store, close)
    finally:
        await close()


@contextlib.asynccontextmanager
async def open_remote(root: Path) -> AsyncIterator[Opened]:
    """A live ctrd (its overlay snapshotter at `root`), through the gRPC API."""
    daemon_root = root.parent.parent  # <daemon root>/snapshots/overlayfs
    address = daemon_root.parent / "ctrd.sock"
    daemon_root.mkdir(parents=True, exist_ok=True)
    log = open(daemon_root.parent / "ctrd.log", "wb")  # noqa: ASYNC230, SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor", "--root", str(daemon_root),
        "--state", str(daemon_root.parent / "state"), "--address", str(address),
        stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    channel = grpc.aio.insecure_channel(f"unix:{address}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 20)
        store = RemoteSnapshotter(channel, "testsuite")
        yield Opened(store, channel.close)
    finally:
        await channel.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


OPENERS: dict[str, Opener] = {
    "overlay": backend(OverlaySnapshotter),
    "native": backend(NativeSnapshotter),
    "namespaced": open_namespaced,
    "remote": open_remote,
}
BACKEND_CLASSES: dict[str, Any] = {"overlay": OverlaySnapshotter, "native": NativeSnapshotter}
RENAMES_LOWER_DIRS = {"overlay": False, "native": True, "namespaced": False, "remote": False}

ALL = ["overlay", "native", "namespaced", "remote"]
BACKENDS = ["overlay", "native"]
OVERLAY = ["overlay"]
NATIVE = ["native"]


@dataclass(frozen=True)
class Harness:
    """What a scenario works with."""

    sn: Snapshotter
    close: Callable[[], Awaitable[None]]
    root: Path  # the backend's root (backend cases only look at it)
    work: Path  # scratch space: mount points, reference trees

    @contextlib.asynccontextmanager
    async def mounted(self, mounts: Sequence[Mount]) -> AsyncIterator[Path]:
        """Perform `mounts` on a new directory; unmount and remove it at exit, come what may."""
        target = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="mnt-", dir=self.work))
        try:
            await asyncio.to_thread(mount.mount_all, mounts, target)
            try:
                yield target
            finally:
                await asyncio.to_thread(mount.unmount, target)
        finally:
            await asyncio.to_thread(target.rmdir)

    async def flat(self) -> Path:
        """A plain directory to apply the same changes to, as the reference."""
        path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="flat-", dir=self.work))
        os.chmod(path, 0o755)
        return path


@dataclass(frozen=True)
class Subject:
    name: str
    base: Path  # removed by the fixture

    @property
    def root(self) -> Path:
        return self.base / ROOT_SUFFIX

    @property
    def renames_lower_dirs(self) -> bool:
        return RENAMES_LOWER_DIRS[self.name]

    def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        async def main() -> None:
            async with OPENERS[self.name](self.root) as opened:
                work = self.base / "work"
                work.mkdir(exist_ok=True)
                await scenario(Harness(opened.snapshotter, opened.close, self.root, work))

        asyncio.run(main())


@pytest.fixture
def snapshotter(request: pytest.FixtureRequest) -> Iterator[Subject]:
    base = Path(tempfile.mkdtemp(prefix="ctrd-snap-", dir="/var/tmp"))
    try:
        yield Subject(request.param, base)
    finally:
        leaked = mounts_under(base)
        for target in sorted(leaked, key=len, reverse=True):
            mount.unmount(Path(target))
        shutil.rmtree(base)
    assert not leaked, f"mounts left behind: {leaked}"


def mounts_under(base: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(base) or point.startswith(f"{base}/"):
                out.append(point)
    return out


# -- helpers -----------------------------------------------------------------------------------


def gc_root() -> dict[str, str]:
    return {GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def within(value: int, window: Window, what: str) -> None:
    low, high = window
    assert low <= value <= high, f"{what} {value} not within [{low}, {high}]"


Op = Callable[[Path], None]


def _at(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def create_file(path: str, data: str | bytes, mode: int = 0o644) -> Op:
    def op(root: Path) -> None:
        target = _at(root, path)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(target, mode)

    return op


def create_dir(path: str, mode: int = 0o755) -> Op:
    def op(root: Path) -> None:
        target = _at(root, path)
        target.mkdir()
        os.chmod(target, mode)

    return op


def remove_all(path: str) -> Op:
    def op(root: Path) -> None:
        target = _at(root, path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    return op


def chown(path: str, uid: int, gid: int) -> Op:
    return lambda root: os.lchown(_at(root, path), uid, gid)


def chmod(path: str, mode: int) -> Op:
    return lambda root: os.chmod(_at(root, path), mode)


def link(old: str, new: str) -> Op:
    return lambda root: os.link(_at(root, old), _at(root, new))


def symlink(target: str, path: str) -> Op:
    return lambda root: os.symlink(target, _at(root, path))


def rename(old: str, new: str) -> Op:
    return lambda root: os.rename(_at(root, old), _at(root, new))


def apply(root: Path, ops: Sequence[Op]) -> None:
    for op in ops:
        op(root)


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry's name, type, mode, owner and content or link target (fstest's check)."""
    out: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in ["", *dirs, *files]:
            if name == "" and directory != str(root):
                continue
            path = os.path.join(directory, name) if name else directory
            st = os.lstat(path)
            what: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = f.read()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = st.st_rdev
            key = "/" + os.path.relpath(path, root) if name else "/"
            out[key] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
            )
    return out


async def check_same(mounted: Path, flat: Path) -> None:
    got, want = await asyncio.to_thread(tree, mounted), await asyncio.to_thread(tree, flat)
    if got != want:
        differ = {
            k: (got.get(k), want.get(k))
            for k in got.keys() | want.keys()
            if got.get(k) != want.get(k)
        }
        pytest.fail(f"snapshot differs from the reference (path: (snapshot, reference)): {differ}")


async def apply_to(path: Path, ops: Sequence[Op]) -> None:
    await asyncio.to_thread(apply, path, ops)


async def commit_layer(h: Harness, name: str, parent: str, ops: Sequence[Op]) -> None:
    """Prepare `<name>-prepare` on `parent`, apply `ops` through its mounts, commit `name`."""
    key = f"{name}-prepare"
    async with h.mounted(await h.sn.prepare(key, parent, gc_root())) as path:
        await apply_to(path, ops)
    await h.sn.commit(name, key, gc_root())


async def check_snapshots(h: Harness, prefix: str, *layers: Sequence[Op]) -> None:
    """containerd's checkSnapshots: each layer committed on the last, each view checked."""
    flat = await h.flat()
    parent = ""
    for i, ops in enumerate(layers):
        name = f"{prefix}-{i}"
        await commit_layer(h, name, parent, ops)
        await apply_to(flat, ops)
        async with h.mounted(await h.sn.view(f"{name}-view", name, gc_root())) as path:
            await check_same(path, flat)
        await h.sn.remove(f"{name}-view")
        parent = name


def names(infos: Sequence[Info]) -> set[str]:
    return {i.name for i in infos}


# -- §A: the snapshotter suite -------------------------------------------------------------


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_basic_prepare_commit_view_and_remove_in_order(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        mounts = await sn.prepare("preparing", "", gc_root())
        assert mounts
        layer1 = [create_file("/foo", "foo\n", 0o777), create_dir("/a"), create_dir("/a/b"),
                  create_dir("/a/b/c")]  # fmt: skip
        flat = await h.flat()
        async with h.mounted(mounts) as path:
            await apply_to(path, layer1)
        await apply_to(flat, layer1)
        await sn.commit("committed", "preparing", gc_root())
        committed = await sn.stat("committed")
        assert (committed.name, committed.kind, committed.parent) == (
            "committed", Kind.COMMITTED, "",
        )  # fmt: skip
        with pytest.raises(NotFound):
            await sn.stat("preparing")

        layer2 = [create_file("/bar", "bar\n", 0o777), create_file("/foo", "bar\n", 0o777),
                  remove_all("/a/b")]  # fmt: skip
        async with h.mounted(await sn.prepare("nextlayer", "committed", gc_root())) as path:
            await check_same(path, flat)
            await apply_to(path, layer2)
        await apply_to(flat, layer2)
        next_info = await sn.stat("nextlayer")
        assert (next_info.kind, next_info.parent) == (Kind.ACTIVE, "committed")
        await sn.commit("committed-next", "nextlayer", gc_root())
        committed_next = await sn.stat("committed-next")
        assert (committed_next.kind, committed_next.parent) == (Kind.COMMITTED, "committed")
        with pytest.raises(NotFound):
            await sn.stat("nextlayer")

        walked = await sn.list()
        assert sorted(walked, key=lambda i: i.name) == [committed, committed_next]

        async with h.mounted(await sn.view("nextnextlayer", "committed-next", gc_root())) as path:
            await check_same(path, flat)
        await sn.remove("nextnextlayer")
        with pytest.raises(FailedPrecondition, match="remove"):
            await sn.remove("committed")
        await sn.remove("committed-next")
        await sn.remove("committed")
        assert await sn.list() == []

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_stat_of_an_active_snapshot_names_it_active_without_parent(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        async with h.mounted(await h.sn.prepare("active", "", gc_root())):
            pass
        await apply_to(h.work, [create_file("/not-in-the-snapshot", "x")])  # the mountpoint dir
        info = await h.sn.stat("active")
        assert (info.name, info.kind, info.parent) == ("active", Kind.ACTIVE, "")

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_stat_of_a_committed_snapshot_names_it_committed(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        async with h.mounted(await h.sn.prepare("active", "", gc_root())) as path:
            await apply_to(path, [create_file("/foo", "foo")])
        await h.sn.commit("committed", "active", gc_root())
        info = await h.sn.stat("committed")
        assert (info.name, info.kind, info.parent) == ("committed", Kind.COMMITTED, "")

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_parents_are_transitive(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await commit_layer(h, "snapA", "", [create_file("/foo", "A")])
        await commit_layer(h, "snapB", "snapA", [create_file("/foo", "B")])
        a, b = await h.sn.stat("snapA"), await h.sn.stat("snapB")
        assert (a.parent, b.parent) == ("", "snapA")
        assert (await h.sn.stat(b.parent)).parent == ""

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_a_key_taken_by_prepare_or_view_cannot_be_taken_again(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        await commit_layer(h, "snapA", "", [create_file("/foo", "A")])
        await sn.prepare("k1", "snapA", gc_root())
        with pytest.raises(AlreadyExists):
            await sn.view("k1", "snapA", gc_root())
        await sn.prepare("k2", "snapA", gc_root())
        with pytest.raises(AlreadyExists):
            await sn.prepare("k2", "snapA", gc_root())
        await sn.view("k3", "snapA", gc_root())
        with pytest.raises(AlreadyExists):
            await sn.view("k3", "snapA", gc_root())
        with pytest.raises(AlreadyExists):
            await sn.prepare("snapA", "", gc_root())  # keys and names share one space

    snapshotter.run(scenario)


async def base_set(h: Harness) -> dict[str, tuple[Info, Window]]:
    """c1 ← c2 committed, a1 active on c2, a2 active, v1 view on c2, v2 view: with windows."""
    out: dict[str, tuple[Info, Window]] = {}

    async def timed(name: str, make: Awaitable[Any]) -> None:
        before = time.time_ns()
        await make
        out[name] = (await h.sn.stat(name), (before, time.time_ns()))

    await h.sn.prepare("c1-prepare", "", gc_root())
    await timed("c1", h.sn.commit("c1", "c1-prepare", gc_root()))
    await h.sn.prepare("c2-prepare", "c1", gc_root())
    await timed("c2", h.sn.commit("c2", "c2-prepare", gc_root()))
    await timed("a1", h.sn.prepare("a1", "c2", gc_root()))
    await timed("a2", h.sn.prepare("a2", "", gc_root()))
    await timed("v1", h.sn.view("v1", "c2", gc_root()))
    await timed("v2", h.sn.view("v2", "", gc_root()))
    return out


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_update_changes_labels_only_by_the_paths_given(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        expected = {
            "c1": (Kind.COMMITTED, ""), "c2": (Kind.COMMITTED, "c1"), "a1": (Kind.ACTIVE, "c2"),
            "a2": (Kind.ACTIVE, ""), "v1": (Kind.VIEW, "c2"), "v2": (Kind.VIEW, ""),
        }  # fmt: skip
        for name, (info, window) in (await base_set(h)).items():
            kind, parent = expected[name]
            assert (info.name, info.kind, info.parent) == (name, kind, parent)
            within(info.created_at, window, f"{name} created_at")
            assert info.updated_at == info.created_at

            gc = {GC_ROOT: info.labels[GC_ROOT]}
            forged = Info(name, info.kind, "doesnotexist", {"l1": "v1", "l2": "v2", "l3": "v3",
                                                          **gc})  # fmt: skip
            before = time.time_ns()
            updated = await h.sn.update(forged)
            window = (before, time.time_ns())
            assert (updated.name, updated.kind, updated.parent) == (name, kind, parent)
            assert updated.created_at == info.created_at
            within(updated.updated_at, window, f"{name} updated_at")
            assert dict(updated.labels) == {"l1": "v1", "l2": "v2", "l3": "v3", **gc}
            assert await h.sn.stat(name) == updated

            partial = Info(name, info.kind, labels={"l1": "updated", "l4": "v4"})
            updated = await h.sn.update(partial, ["labels.l1", "labels.l2"])
            assert dict(updated.labels) == {"l1": "updated", "l3": "v3", **gc}

            whole = Info(name, info.kind, labels={"l1": "v1", **gc})
            updated = await h.sn.update(whole, ["labels"])
            assert dict(updated.labels) == {"l1": "v1", **gc}
            assert await h.sn.stat(name) == updated

            for path in ("parent", "name", "kind", "created_at"):
                with pytest.raises(InvalidArgument):
                    await h.sn.update(Info(name, info.kind, parent="c1", labels={}), [path])
            assert await h.sn.stat(name) == updated  # a refused update changes nothing

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_removed_keys_and_names_can_be_reused(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        await sn.prepare("committed-a", "", gc_root())
        await sn.commit("committed-1", "committed-a", gc_root())
        await sn.prepare("reuse-1", "committed-1", gc_root())
        await sn.remove("reuse-1")
        await sn.view("reuse-1", "committed-1", gc_root())
        await sn.remove("reuse-1")
        await sn.prepare("reuse-1", "", gc_root())
        await sn.remove("committed-1")
        await sn.commit("committed-1", "reuse-1", gc_root())
        assert (await sn.stat("committed-1")).kind == Kind.COMMITTED

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_walk_filters_by_name_parent_kind_and_labels(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        mark = {GC_ROOT: "check-walk"}
        await sn.prepare("a-np", "", mark)
        await sn.prepare("p-tmp", "", mark)
        await sn.commit("p", "p-tmp", mark)
        await sn.prepare("a", "p", mark)
        await sn.view("v", "p", mark)
        await sn.prepare("p-wl-tmp", "", mark)
        await sn.commit("p-wl", "p-wl-tmp", {"l": "1", **mark})
        await sn.prepare("a-wl", "p-wl", {"l": "2", **mark})
        await sn.view("v-wl", "p-wl", {"l": "3", **mark})
        await sn.prepare("a-np-wl", "", {"l": "2", **mark})

        every = f'labels."{GC_ROOT}"==check-walk'
        cases: list[tuple[list[str], set[str]]] = [
            ([every], {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"}),
            ([f"kind==active,{every}"], {"a-np", "a", "a-wl", "a-np-wl"}),
            ([f"kind==view,{every}"], {"v", "v-wl"}),
            ([f"kind==committed,{every}"], {"p", "p-wl"}),
            (["name==p", "name==a-np-wl"], {"p", "a-np-wl"}),
            (["name==a-wl,labels.l"], {"a-wl"}),
            (["parent==p"], {"a", "v"}),
            ([f'parent!="",{every}'], {"a", "v", "a-wl", "v-wl"}),
            (["labels.l"], {"p-wl", "a-wl", "v-wl", "a-np-wl"}),
            (["labels.l==2"], {"a-wl", "a-np-wl"}),
            ([], {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"}),
        ]
        for filters, want in cases:
            assert names(await sn.list(filters)) == want, filters
        # InvalidArgument, or through the daemon UNKNOWN, as containerd's List answers it
        with pytest.raises(CtrdError, match=r"\[kind==\]: expected value or quoted: invalid"):
            await sn.list(["kind=="])

    snapshotter.run(scenario)


LAYER_UPDATE_RUNS = 5  # as containerd; each run starts on a new second


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_layer_file_updates_show_in_views_even_within_one_second(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        l1 = [create_dir("/etc", 0o700), create_file("/etc/hosts", "mydomain 10.0.0.1", 0o644),
              create_file("/etc/profile", "PATH=/usr/bin", 0o644)]  # fmt: skip
        l2 = [create_file("/etc/hosts", "mydomain 10.0.0.2", 0o644), chmod("/etc/profile", 0o666),
              create_dir("/root", 0o700), create_file("/root/.bashrc", "PATH=/usr/sbin:/usr/bin",
                                                      0o644)]  # fmt: skip
        for run in range(LAYER_UPDATE_RUNS):
            # Start on a fresh second: both layers then share their mtimes' second.
            await asyncio.sleep(1 - time.time() % 1)
            await check_snapshots(h, f"update-{run}", l1, l2)

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_a_directory_removed_and_recreated_hides_the_lower_content(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await check_snapshots(
            h,
            "opaque",
            [create_dir("/lib", 0o700), create_file("/lib/hidden", "")],
            [remove_all("/lib"), create_dir("/lib", 0o700), create_file("/lib/not-hidden", "")],
            [create_file("/lib/newfile", "")],
        )

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_chown_in_an_upper_layer_shows_in_views(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await check_snapshots(
            h,
            "chown",
            [create_dir("/opt", 0o700), create_dir("/opt/a", 0o700),
             create_dir("/opt/a/b", 0o700), create_file("/opt/a/b/file.txt", "hello", 0o644)],
            [chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
             chown("/opt/a/b/file.txt", 1, 1)],
        )  # fmt: skip

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_directory_owners_and_modes_survive_each_commit(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await check_snapshots(
            h,
            "perms",
            [create_dir("/dir1", 0o700), create_dir("/dir2", 0o700), create_dir("/dir3", 0o700),
             create_dir("/dir4", 0o700), create_file("/dir4/f1", "hello", 0o644),
             create_dir("/dir5", 0o700), create_file("/dir5/f1", "hello", 0o644),
             chown("/dir1", 1, 1), chown("/dir2", 1, 1), chown("/dir3", 1, 1),
             chown("/dir5", 1, 1), chown("/dir5/f1", 1, 1)],
            [chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1),
             chown("/dir4/f1", 1, 1)],
            [create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
             create_dir("/dir5", 0o700), chown("/dir5", 1, 1)],
        )  # fmt: skip

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_an_intermediate_snapshot_is_removable_only_after_its_children(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        await commit_layer(h, "committed-base", "", [create_file("/base", "base")])
        await commit_layer(h, "committed-inter", "committed-base", [create_file("/i", "i")])
        await sn.prepare("toplayer", "committed-inter", gc_root())
        with pytest.raises(FailedPrecondition):
            await sn.remove("committed-inter")
        with pytest.raises(FailedPrecondition):
            await sn.remove("committed-base")
        await sn.remove("toplayer")
        await sn.remove("committed-inter")
        await sn.remove("committed-base")
        assert await sn.list() == []

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_files_deleted_in_a_child_stay_deleted_through_an_empty_layer(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await check_snapshots(
            h,
            "deleted",
            [create_file("/foo", "foo\n", 0o777), create_file("/foobar", "foobar\n", 0o777)],
            [remove_all("/foobar")],
            [],
        )

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_moving_a_file_from_a_lower_layer_by_hard_link(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await check_snapshots(
            h,
            "move",
            [create_dir("/dir1", 0o700), create_file("/dir1/f1", "Hello", 0o644),
             create_dir("/dir2", 0o700), create_file("/dir2/f2", "...", 0o644)],
            [create_dir("/dir3", 0o700), create_file("/dir3/f1", "Hello", 0o644),
             remove_all("/dir1"), link("/dir2/f2", "/dir3/f2"), remove_all("/dir2/f2")],
        )  # fmt: skip

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
@pytest.mark.parametrize("depth", [0, 1, 2], ids=["no-parent", "one-parent", "two-parents"])
def test_a_mounted_view_is_read_only(snapshotter: Subject, depth: int):
    async def scenario(h: Harness) -> None:
        parent = ""
        for i in range(depth):
            await commit_layer(h, f"layer-{i}", parent, [create_file(f"/f{i}", f"{i}")])
            parent = f"layer-{i}"
        writes = [create_file("/new", "x"), create_dir("/newdir"), chmod("/", 0o700)]
        if depth:
            writes += [remove_all("/f0"), create_file("/f0", "changed")]
        async with h.mounted(await h.sn.view("view", parent, gc_root())) as path:
            for write in writes:
                with pytest.raises(OSError, match="Read-only file system"):
                    await apply_to(path, [write])
        await h.sn.remove("view")

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_stat_inside_walk_gives_the_walked_info(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        await sn.prepare("stats-in-walk-c1-prepare", "", gc_root())
        await sn.commit("stats-in-walk-c1", "stats-in-walk-c1-prepare", gc_root())
        await sn.prepare("stats-in-walk-c2-prepare", "stats-in-walk-c1", gc_root())
        await sn.commit("stats-in-walk-c2", "stats-in-walk-c2-prepare", {"l": "x", **gc_root()})
        await sn.prepare("stats-in-walk-a1", "stats-in-walk-c2", gc_root())
        await sn.view("stats-in-walk-v1", "stats-in-walk-c2", gc_root())
        walked = await sn.list()
        assert len(walked) == 4
        for info in walked:
            assert await sn.stat(info.name) == info

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_closing_twice_is_fine(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await h.sn.prepare("prepare", "", gc_root())
        await h.sn.commit("committed", "prepare", gc_root())
        await h.sn.remove("committed")
        await h.close()
        await h.close()

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_the_root_of_a_new_snapshot_is_0755_whatever_the_umask(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        old = os.umask(0o077)
        try:
            mounts = await h.sn.prepare("root-permission", "", gc_root())
        finally:
            os.umask(old)
        async with h.mounted(mounts) as path:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o755

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_renames_over_lower_files_show_in_views(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        l1 = [create_dir("/dir1"), create_dir("/somefiles"),
              create_file("/somefiles/f1", "was here"),
              create_file("/somefiles/f2", "nothing interesting")]  # fmt: skip
        l2 = [create_file("/somefiles/f1-overwrite", "new content 1"),
              rename("/somefiles/f1-overwrite", "/somefiles/f1"),
              rename("/somefiles/f2", "/somefiles/f3")]  # fmt: skip
        if snapshotter.renames_lower_dirs:
            l2.append(rename("/dir1", "/dir2"))
        await check_snapshots(h, "rename", l1, l2)

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_128_stacked_layers_mount_and_show_every_layer(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        flat = await h.flat()
        layers: list[list[Op]] = [[
            create_file("/bottom", "way at the bottom\n", 0o777),
            create_file("/overwriteme", "FIRST!\n", 0o777),
            create_dir("/addhere"), create_dir("/onlyme"),
            create_file("/onlyme/bottom", "bye!\n", 0o777),
        ]]  # fmt: skip
        layers.extend([
            create_file("/overwriteme", f"overwrite {i}\n", 0o777),
            create_file(f"/addhere/file-{i}", "same\n", 0o755),
            remove_all("/onlyme"), create_dir("/onlyme"),
            create_file(f"/onlyme/file-{i}", "only me!\n", 0o777),
        ] for i in range(1, 128))  # fmt: skip
        parent = ""
        for i, ops in enumerate(layers):
            key = f"layer-{i}-prepare"
            async with h.mounted(await h.sn.prepare(key, parent, gc_root())) as path:
                await check_same(path, flat)
                await apply_to(path, ops)
                await apply_to(flat, ops)
                await check_same(path, flat)
            parent = f"layer-{i}"
            await h.sn.commit(parent, key, gc_root())
        async with h.mounted(await h.sn.view("top", parent, gc_root())) as path:
            await check_same(path, flat)
            every = await asyncio.to_thread(os.listdir, path / "addhere")
            assert sorted(every) == sorted(f"file-{i}" for i in range(1, 128))
            assert (path / "bottom").read_text() == "way at the bottom\n"
            assert os.listdir(path / "onlyme") == ["file-127"]

    snapshotter.run(scenario)


# -- beyond §A: errors, kinds, usage, concurrency ---------------------------------------------


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_every_refusal_has_its_error_kind_and_changes_nothing(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        await sn.prepare("base-prepare", "", gc_root())
        await sn.commit("base", "base-prepare", gc_root())
        await sn.prepare("active", "base", gc_root())
        await sn.view("view", "base", gc_root())
        before = await sn.list()

        refusals: list[tuple[type[Exception], Callable[[], Awaitable[Any]]]] = [
            (NotFound, lambda: sn.stat("missing")),
            (NotFound, lambda: sn.update(Info("missing", Kind.ACTIVE, labels={"a": "b"}))),
            (NotFound, lambda: sn.usage("missing")),
            (NotFound, lambda: sn.mounts("missing")),
            (NotFound, lambda: sn.prepare("new", "missing", gc_root())),
            (NotFound, lambda: sn.view("new", "missing", gc_root())),
            (NotFound, lambda: sn.commit("new", "missing", gc_root())),
            (NotFound, lambda: sn.remove("missing")),
            (AlreadyExists, lambda: sn.prepare("active", "", gc_root())),
            (AlreadyExists, lambda: sn.view("view", "", gc_root())),
            (AlreadyExists, lambda: sn.prepare("base", "", gc_root())),
            (AlreadyExists, lambda: sn.commit("base", "active", gc_root())),
            (AlreadyExists, lambda: sn.commit("view", "active", gc_root())),
            (InvalidArgument, lambda: sn.prepare("new", "active", gc_root())),
            (InvalidArgument, lambda: sn.prepare("new", "view", gc_root())),
            (InvalidArgument, lambda: sn.view("new", "active", gc_root())),
            (InvalidArgument, lambda: sn.update(Info("base", Kind.COMMITTED), ["parent"])),
            # InvalidArgument, or through the daemon UNKNOWN, as containerd's List answers it
            (CtrdError, lambda: sn.list(["name=="])),
            (FailedPrecondition, lambda: sn.commit("new", "view", gc_root())),
            (FailedPrecondition, lambda: sn.commit("new", "base", gc_root())),
            (FailedPrecondition, lambda: sn.mounts("base")),
            (FailedPrecondition, lambda: sn.remove("base")),
        ]
        for kind, call in refusals:
            with pytest.raises(kind):
                await call()
        assert await sn.list() == before

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_kinds_move_only_from_active_to_committed(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        prepared = await sn.prepare("active", "", gc_root())
        assert await sn.mounts("active") == prepared
        assert (await sn.stat("active")).kind == Kind.ACTIVE
        viewed = await sn.view("view", "", gc_root())
        assert await sn.mounts("view") == viewed
        assert (await sn.stat("view")).kind == Kind.VIEW

        before = time.time_ns()
        await sn.commit("committed", "active", {"only": "these", **gc_root()})
        info = await sn.stat("committed")
        assert info.kind == Kind.COMMITTED
        within(info.created_at, (before, time.time_ns()), "created_at at commit")
        assert set(info.labels) == {"only", GC_ROOT}  # the commit's labels, not the Active's
        with pytest.raises(NotFound):
            await sn.stat("active")
        with pytest.raises(FailedPrecondition):
            await sn.commit("again", "committed", gc_root())
        with pytest.raises(FailedPrecondition):
            await sn.commit("view-committed", "view", gc_root())
        # Only a Committed snapshot may be a parent, and it stays Committed.
        await sn.prepare("child", "committed", gc_root())
        await sn.view("child-view", "committed", gc_root())
        assert (await sn.stat("committed")).kind == Kind.COMMITTED

    snapshotter.run(scenario)


def _write_blocks(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "data").write_bytes(os.urandom(64 * 1024))
    os.link(root / "dir" / "data", root / "dir" / "same-data")


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_usage_walks_an_active_snapshot_and_is_kept_at_commit(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn = h.sn
        mounts = await sn.prepare("active", "", gc_root())
        empty = await sn.usage("active")
        assert empty.inodes >= 1
        async with h.mounted(mounts) as path:
            await asyncio.to_thread(_write_blocks, path)
        used = await sn.usage("active")
        assert used.inodes == empty.inodes + 2  # a directory and a file linked twice
        assert used.size >= empty.size + 64 * 1024
        await sn.commit("committed", "active", gc_root())
        assert await sn.usage("committed") == used
        await sn.view("view", "committed", gc_root())
        assert await sn.usage("view") == Usage()

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", ALL, indirect=True)
def test_concurrent_prepares_get_snapshots_of_their_own(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await commit_layer(h, "base", "", [create_file("/base", "base")])
        keys = [f"active-{i}" for i in range(16)]
        all_mounts = await asyncio.gather(*(h.sn.prepare(k, "base", gc_root()) for k in keys))
        assert len({tuple(m) for m in all_mounts}) == len(keys)
        for key, mounts in zip(keys, all_mounts, strict=True):
            async with h.mounted(mounts) as path:
                await apply_to(path, [create_file("/mine", key)])
        for key in keys:
            async with h.mounted(await h.sn.mounts(key)) as path:
                assert (path / "mine").read_text() == key
        await asyncio.gather(*(h.sn.remove(k) for k in keys))
        assert names(await h.sn.list()) == {"base"}

    snapshotter.run(scenario)


# -- backends: what they keep on disk ------------------------------------------------------


def entries(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("snapshotter", BACKENDS, indirect=True)
def test_cleanup_removes_directories_no_snapshot_owns(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        await commit_layer(h, "kept", "", [create_file("/kept", "kept")])
        await h.sn.prepare("removed", "kept", gc_root())
        snapshots = h.root / "snapshots"
        assert entries(snapshots) == {"1", "2"}
        await h.sn.remove("removed")
        assert entries(snapshots) == {"1"}  # removal is synchronous
        (snapshots / "99" / "fs" / "deep").mkdir(parents=True)
        (snapshots / "new-abc123" / "fs").mkdir(parents=True)
        (snapshots / "stray-file").write_text("x")
        await h.sn.cleanup()
        assert entries(snapshots) == {"1"}
        assert (snapshots / "1" / "fs" / "kept").read_text() == "kept"
        async with h.mounted(await h.sn.view("view", "kept", gc_root())) as path:
            assert (path / "kept").read_text() == "kept"

    snapshotter.run(scenario)


CRASH = """
import asyncio, os, sys
from pathlib import Path
from {module} import {cls} as Backend

root, when = Path(sys.argv[1]), sys.argv[2]
real_rename = os.rename

def crash(src, dst):
    if when == "after-rename":
        real_rename(src, dst)
        (Path(dst) / "fs" / "stale").write_text("left by a crash")
    os._exit(17)

async def main():
    sn = Backend(root)
    await sn.prepare("kept", "")
    os.rename = crash  # the next snapshot dies while being made
    await sn.prepare("crashed", "")

asyncio.run(main())
"""


@pytest.mark.parametrize("snapshotter", BACKENDS, indirect=True)
@pytest.mark.parametrize("when", ["before-rename", "after-rename"])
def test_a_crash_while_making_a_snapshot_leaves_no_record_and_cleanup_leaves_no_dir(
    snapshotter: Subject, when: str
):
    cls = BACKEND_CLASSES[snapshotter.name]
    code = CRASH.format(module=cls.__module__, cls=cls.__name__)
    crashed = subprocess.run(
        [sys.executable, "-c", code, str(snapshotter.root), when],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert crashed.returncode == 17, crashed.stderr

    async def scenario(h: Harness) -> None:
        snapshots = h.root / "snapshots"
        assert names(await h.sn.list()) == {"kept"}
        left = entries(snapshots) - {"1"}
        assert len(left) == 1
        if when == "after-rename":
            assert left == {"2"}
            # The id comes round again: its stale directory must not leak into the new one.
            async with h.mounted(await h.sn.prepare("again", "", gc_root())) as path:
                assert os.listdir(path) == []
            await h.sn.remove("again")
        else:
            assert left.pop().startswith("new-")
        await h.sn.cleanup()
        assert entries(snapshots) == {"1"}

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_layout_has_fs_for_each_and_work_made_for_active_only(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        snapshots = h.root / "snapshots"
        assert (mode(h.root), mode(snapshots)) == (0o700, 0o700)
        await h.sn.prepare("a", "", gc_root())
        assert entries(snapshots / "1") == {"fs", "work"}
        assert (mode(snapshots / "1" / "fs"), mode(snapshots / "1" / "work")) == (0o755, 0o711)
        await h.sn.commit("c", "a", gc_root())
        assert entries(snapshots / "1") == {"fs", "work"}  # kept, as containerd keeps it
        await h.sn.view("v", "c", gc_root())
        assert entries(snapshots / "2") == {"fs"}
        assert (h.root / "metadata.db").is_file()

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", NATIVE, indirect=True)
def test_native_snapshots_are_copies_bind_mounted(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        snapshots = h.root / "snapshots"
        assert (mode(h.root), mode(snapshots)) == (0o700, 0o700)
        mounts = await h.sn.prepare("a", "", gc_root())
        assert mounts == [Mount("bind", str(snapshots / "1" / "fs"), ("rbind", "rw"))]
        assert entries(snapshots / "1") == {"fs"}
        ops = [create_dir("/d", 0o750), chown("/d", 7, 8), create_file("/d/f", "x", 0o4755),
               link("/d/f", "/d/g"), symlink("f", "/d/s")]  # fmt: skip
        await apply_to(snapshots / "1" / "fs", ops)
        await h.sn.commit("c", "a", gc_root())
        assert await h.sn.view("v", "c", gc_root()) == [
            Mount("bind", str(snapshots / "2" / "fs"), ("rbind", "ro"))
        ]
        assert await h.sn.prepare("b", "c", gc_root()) == [
            Mount("bind", str(snapshots / "3" / "fs"), ("rbind", "rw"))
        ]
        copy = snapshots / "3" / "fs"
        assert tree(copy) == tree(snapshots / "1" / "fs")
        assert os.stat(copy / "d" / "f").st_ino == os.stat(copy / "d" / "g").st_ino

    snapshotter.run(scenario)


# -- overlay's own cases (overlay_test.go) ---------------------------------------------------


def index_off() -> list[str]:
    return ["index=off"] if Path("/sys/module/overlay/parameters/index").exists() else []


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_a_parentless_snapshot_mounts_as_a_bind_of_its_fs(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        mounts = await h.sn.prepare("/tmp/test", "", gc_root())
        assert mounts == [Mount("bind", str(h.root / "snapshots" / "1" / "fs"), ("rw", "rbind"))]
        assert await h.sn.view("/tmp/view", "", gc_root()) == [
            Mount("bind", str(h.root / "snapshots" / "2" / "fs"), ("ro", "rbind"))
        ]

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_commit_of_what_was_written_to_the_bind_source(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        (bind,) = await h.sn.prepare("/tmp/test", "", gc_root())
        await apply_to(Path(bind.source), [create_file("/foo", "hi")])
        await h.sn.commit("base", "/tmp/test", gc_root())
        assert (await h.sn.usage("base")).inodes == 2

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_an_active_child_mounts_overlay_with_work_upper_and_lower(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        (base,) = await h.sn.prepare("/tmp/test", "", gc_root())
        await apply_to(Path(base.source), [create_file("/foo", "hi")])
        await h.sn.commit("base", "/tmp/test", gc_root())
        mounts = await h.sn.prepare("/tmp/layer2", "base", gc_root())
        snapshots = h.root / "snapshots"
        assert mounts == [
            Mount("overlay", "overlay", (
                *index_off(),
                f"workdir={snapshots / '2' / 'work'}",
                f"upperdir={snapshots / '2' / 'fs'}",
                f"lowerdir={snapshots / '1' / 'fs'}",
            ))
        ]  # fmt: skip
        async with h.mounted(mounts) as path:
            assert (path / "foo").read_text() == "hi"  # TestOverlayOverlayRead

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_views_bind_one_parent_and_overlay_two_without_upper(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        sn, snapshots = h.sn, h.root / "snapshots"
        (base,) = await sn.prepare("/tmp/base", "", gc_root())
        await apply_to(Path(base.source), [create_file("/foo", "hi")])
        await sn.commit("base", "/tmp/base", gc_root())
        (top,) = await sn.prepare("/tmp/top", "base", gc_root())
        await apply_to(Path(_option(top, "upperdir")), [create_file("/bar", "hi, again")])
        await sn.commit("top", "/tmp/top", gc_root())

        assert await sn.view("/tmp/view1", "base", gc_root()) == [
            Mount("bind", str(snapshots / "1" / "fs"), ("ro", "rbind"))
        ]
        view2 = await sn.view("/tmp/view2", "top", gc_root())
        lower = f"lowerdir={snapshots / '2' / 'fs'}:{snapshots / '1' / 'fs'}"
        assert view2 == [Mount("overlay", "overlay", (*index_off(), lower))]
        async with h.mounted(view2) as path:
            assert ((path / "foo").read_text(), (path / "bar").read_text()) == ("hi", "hi, again")

    snapshotter.run(scenario)


def _option(m: Mount, name: str) -> str:
    return next(o.split("=", 1)[1] for o in m.options if o.startswith(f"{name}="))


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_usage_of_a_child_counts_only_its_own_changes(snapshotter: Subject):
    async def scenario(h: Harness) -> None:
        async with h.mounted(await h.sn.prepare("base-prepare", "", gc_root())) as path:
            await asyncio.to_thread(_write_blocks, path)
        await h.sn.commit("base", "base-prepare", gc_root())
        await h.sn.prepare("child", "base", gc_root())
        assert (await h.sn.usage("child")).inodes == 1  # its empty upper dir
        assert (await h.sn.usage("base")).inodes == 3

    snapshotter.run(scenario)


@pytest.mark.parametrize("snapshotter", OVERLAY, indirect=True)
def test_overlay_128_lowers_do_not_fit_a_page_unless_made_relative(snapshotter: Subject):
    """The 128-layer case passes because of the relative rewrite, not a roomy page."""

    async def scenario(h: Harness) -> None:
        parent = ""
        for i in range(128):
            await h.sn.prepare(f"l{i}-prepare", parent, gc_root())
            parent = f"l{i}"
            await h.sn.commit(parent, f"l{i}-prepare", gc_root())
        (overlay,) = await h.sn.prepare("top", parent, gc_root())
        assert len(",".join(overlay.options)) > mount.PAGE_SIZE
        target = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=h.work))
        call = mount.plan(overlay, target)
        assert call.cwd == str(h.root / "snapshots")
        assert len(call.data) < mount.PAGE_SIZE - 512
        absolute = mount.MountCall("overlay", str(target), "overlay", 0, ",".join(overlay.options))
        with pytest.raises(mount.MountError):
            await asyncio.to_thread(mount.perform, absolute)
        async with h.mounted([overlay]) as path:
            assert await asyncio.to_thread(os.listdir, path) == []

    snapshotter.run(scenario)
