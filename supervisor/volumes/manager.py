"""Volumes for the service and for Tasks.Create: the records, the local driver and copy-up.

One manager serves the whole daemon. Each volume has a lock: its creation, removal, mount and
copy-up never interleave. A volume with mount options (`supervisor.volumes.local`) is mounted
when the first task that uses it is created and unmounted when the last one is deleted
(docker's count, taken at start and given back at stop; a ctrd task stops using its volumes at
Delete, which every client sends after an exit); the tasks using each volume are in memory,
rebuilt at the daemon's start from the tasks it took back and their containers' labels
(`reconcile`), which also unmounts what no task uses, finishes removals a crash cut off and
discards copy-ups a crash cut off. At the daemon's stop whatever no task uses is unmounted;
a volume that a task still running uses stays mounted, as the task does.

`prepare_task` is Tasks.Create's part (kept apart from the networks' `prepare_task`: either,
both or neither may apply to a container): it resolves the container's `ctrd.io/volumes`
label to volumes of its namespace (a missing one is NotFound), mounts those that need it,
fills new empty ones from the image (`supervisor.volumes.copyup`) and answers the spec with a
bind mount per volume; `release` undoes it for a deleted task, or for a create that failed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import os
import re
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import Message

from snapshotter.mount import temp_mount, unmount
from snapshotter.protocol import Mount
from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2 as pb
from supervisor.errors import CtrdError, FailedPrecondition, InvalidArgument, NotFound
from supervisor.events import Publish
from supervisor.metadata.db import Database
from supervisor.volumes import copyup, local
from supervisor.volumes import labels as volume_labels
from supervisor.volumes.store import Volume, VolumeStore, all_volumes, users_in

log = structlog.get_logger("ctrd.volumes")

Key = tuple[str, str]  # (namespace, volume name) or (namespace, container id)
LIST_FILTERS = ("dangling", "name", "driver", "label")
PRUNE_FILTERS = ("label", "label!", "all")


@dataclass(frozen=True)
class Usage:
    size: int  # -1: not computed or not available
    containers: tuple[str, ...]


def parse_filters(given: Iterable[str], accepted: Sequence[str]) -> dict[str, list[str]]:
    """docker's `--filter KEY=VALUE` list, by key; a key not accepted is refused in its
    words."""
    found: defaultdict[str, list[str]] = defaultdict(list)
    for item in given:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"bad format of filter (expected name=value): {item}", plain=True)
        found[key.strip()].append(value)
    for key in found:
        if key not in accepted:
            raise InvalidArgument(f"Invalid filter '{key}'", plain=True)
    return dict(found)


def labels_match(wanted: Sequence[str], labels: Mapping[str, str]) -> bool:
    """docker's MatchKVList: every `KEY` or `KEY=VALUE` holds (no filter: true)."""
    if not wanted:
        return True
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _name_matches(patterns: Sequence[str], name: str) -> bool:
    for pattern in patterns:
        if pattern == name:
            return True
        try:
            if re.search(pattern, name):
                return True
        except re.error:
            continue
    return False


def list_matcher(filters: Mapping[str, list[str]]) -> Callable[[Volume, bool], bool]:
    """docker's volume ls filters: (volume, whether it is used) -> shown."""
    dangling: bool | None = None
    if "dangling" in filters:
        values = filters["dangling"]
        if "true" in values or "1" in values:
            dangling = True
        elif "false" in values or "0" in values:
            dangling = False
        else:
            raise InvalidArgument(f"Invalid filter 'dangling=[{' '.join(values)}]'", plain=True)

    def matches(volume: Volume, used: bool) -> bool:
        if "driver" in filters and volume.driver not in filters["driver"]:
            return False
        if "name" in filters and not _name_matches(filters["name"], volume.name):
            return False
        if not labels_match(filters.get("label", []), volume.labels):
            return False
        return dangling is None or used != dangling

    return matches


def prune_matcher(filters: Mapping[str, list[str]]) -> Callable[[Volume], bool]:
    """docker's volume prune filters (API 1.42): anonymous volumes only unless `all=true`."""
    every = False
    values = filters.get("all", [])
    if len(values) > 1:
        raise InvalidArgument(
            f"invalid filter 'all=[{' '.join(values)}]': only one value is expected", plain=True
        )
    if values:
        value = values[0].lower()
        if value not in ("1", "t", "true", "0", "f", "false"):
            raise InvalidArgument(
                f"invalid filter 'all': strconv.ParseBool: parsing \"{values[0]}\": invalid syntax",
                plain=True,
            )
        every = value in ("1", "t", "true")
    wanted = list(filters.get("label", []))
    if not every:
        wanted.append(volume_labels.ANONYMOUS_LABEL)
    unwanted = filters.get("label!", [])

    def matches(volume: Volume) -> bool:
        if not labels_match(wanted, volume.labels):
            return False
        return not (unwanted and labels_match(unwanted, volume.labels))

    return matches


def _users_of(ns: str, conn: sqlite3.Connection) -> dict[str, builtins.list[str]]:
    return users_in(conn, ns)


class VolumeManager:
    def __init__(
        self, db: Database, root: Path, scratch: Path, publish: Publish | None = None
    ) -> None:
        """`root`: `<ctrd root>/volumes`; `scratch`: where a rootfs is mounted for a copy-up;
        `publish(ns, topic, event)`: the daemon's events (docker's volume events)."""
        self._db = db
        self._publish = publish
        self.root = root
        self._scratch = scratch
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._holders: defaultdict[Key, set[str]] = defaultdict(set)  # volume -> task ids
        self._mounted: dict[Key, Mapping[str, str]] = {}  # volume -> its options
        self._by_task: dict[Key, tuple[str, ...]] = {}  # task -> the volumes it uses
        self._announced: set[Key] = set()  # tasks whose mounts were published

    def store(self, ns: str) -> VolumeStore:
        return VolumeStore(self._db, ns)

    def paths(self, ns: str, name: str) -> local.VolumePaths:
        return local.VolumePaths(self.root, ns, name)

    def is_mounted(self, ns: str, name: str) -> bool:
        return (ns, name) in self._mounted

    # --- the API's calls ---

    async def create(
        self,
        ns: str,
        name: str,
        driver: str = "",
        options: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Volume:
        name = name or secrets.token_hex(32)
        driver = driver or local.DRIVER
        options = dict(options or {})
        try:
            if driver != local.DRIVER:  # dockerd's words: its plugin store's, and its 404
                raise NotFound(
                    f'error looking up volume plugin {driver}: plugin "{driver}" not found',
                    plain=True,
                )
            local.validate_name(name)
            local.validate_options(options)
        except CtrdError as e:
            raise type(e)(f"create {name}: {e}", plain=True) from None
        async with self._locks[(ns, name)]:
            await asyncio.to_thread(local.make, self.paths(ns, name))
            volume, made = await self.store(ns).create(
                Volume(name, driver, dict(labels or {}), options)
            )
        if made:
            await self._event(ns, "/volumes/create", pb.VolumeCreate(name=name, driver=driver))
        return volume

    async def _event(self, ns: str, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(ns, topic, event)

    async def get(self, ns: str, name: str) -> Volume:
        return await self.store(ns).get(name)

    async def list(self, ns: str) -> builtins.list[Volume]:
        return await self.store(ns).list()

    async def users(self, ns: str) -> dict[str, builtins.list[str]]:
        return await self.store(ns).users()

    async def size(self, ns: str, volume: Volume) -> int:
        """Bytes of the volume's data; -1 for one with options (docker's system df skips
        those: their data is not local)."""
        if volume.options:
            return -1
        return await asyncio.to_thread(local.size, self.paths(ns, volume.name).data)

    async def remove(self, ns: str, name: str, force: bool = False) -> int:
        """Remove an unused volume and its data: the bytes it held. In use: refused, force or
        not; missing: NotFound, unless force (docker's `volume rm -f`)."""
        async with self._locks[(ns, name)]:
            try:
                volume = await self.store(ns).get(name)
            except NotFound:
                if force:
                    return 0
                raise
            if self._holders.get((ns, name)):
                users = sorted(self._holders[(ns, name)])
                raise FailedPrecondition(
                    f"remove {name}: volume is in use - [{', '.join(users)}]", plain=True
                )
            size = await self.size(ns, volume)
            await self.store(ns).delete(name)
            await asyncio.to_thread(local.remove, self.paths(ns, name))
            self._locks.pop((ns, name), None)
        log.info("volume_removed", ns=ns, name=name)
        await self._event(ns, "/volumes/delete", pb.VolumeDelete(name=name, driver=volume.driver))
        return max(size, 0)

    async def prune(self, ns: str, filters: Iterable[str]) -> tuple[builtins.list[str], int]:
        """docker's volume prune: unused local volumes without options that match."""
        matches = prune_matcher(parse_filters(filters, PRUNE_FILTERS))
        users = await self.users(ns)
        removed: builtins.list[str] = []
        reclaimed = 0
        for volume in await self.list(ns):
            if volume.driver != local.DRIVER or volume.options or users.get(volume.name):
                continue
            if not matches(volume):
                continue
            try:
                reclaimed += await self.remove(ns, volume.name)
            except (FailedPrecondition, NotFound):
                continue  # used or removed meanwhile
            removed.append(volume.name)
        return removed, reclaimed

    # --- Tasks.Create and Delete ---

    async def prepare_task(
        self, ns: str, cid: str, labels: Mapping[str, str], spec: bytes, rootfs: Sequence[Mount]
    ) -> bytes:
        """The spec with the container's volumes bind-mounted (see the module's doc)."""
        wanted = volume_labels.parse(labels.get(volume_labels.VOLUMES_LABEL, ""))
        if not wanted:
            return spec
        try:
            config = json.loads(spec)
        except ValueError as e:
            raise InvalidArgument(f'container "{cid}": spec is not JSON: {e}') from None
        store = self.store(ns)
        volumes: dict[str, Volume] = {}
        for m in wanted:
            if m.name not in volumes:
                try:
                    volumes[m.name] = await store.get(m.name)
                except NotFound:
                    raise NotFound(
                        f'volume "{m.name}" (label {volume_labels.VOLUMES_LABEL} of container '
                        f'"{cid}")'
                    ) from None
        self._by_task[(ns, cid)] = ()
        try:
            for name in sorted(volumes):  # one order: two creates never wait on each other
                await self._acquire(ns, cid, volumes[name])
            copies = [m for m in wanted if not m.nocopy]
            if copies:
                await self._copy_up(ns, cid, copies, config, rootfs)
        except BaseException:
            await self.release(ns, cid)
            raise
        for m in wanted:
            mounted = pb.VolumeMount(
                name=m.name, container_id=cid, destination=m.target, read_write=not m.readonly
            )
            await self._event(ns, "/volumes/mount", mounted)
        self._announced.add((ns, cid))
        return json.dumps(self._with_binds(ns, config, wanted)).encode()

    async def _acquire(self, ns: str, cid: str, volume: Volume) -> None:
        key = (ns, volume.name)
        async with self._locks[key]:
            await self.store(ns).get(volume.name)  # not removed since it was looked up
            paths = self.paths(ns, volume.name)
            if local.needs_mount(volume.options) and key not in self._mounted:
                await asyncio.to_thread(self._mount, paths, volume.options)
                self._mounted[key] = volume.options
                log.info("volume_mounted", ns=ns, name=volume.name, id=cid)
            elif not local.needs_mount(volume.options):
                await asyncio.to_thread(local.make, paths)  # a record whose directory went
            self._holders[key].add(cid)
            self._by_task[(ns, cid)] += (volume.name,)

    @staticmethod
    def _mount(paths: local.VolumePaths, options: Mapping[str, str]) -> None:
        local.make(paths)
        if not local.is_mounted(paths):
            local.mount(paths, options)

    async def _copy_up(
        self,
        ns: str,
        cid: str,
        copies: Sequence[volume_labels.VolumeMount],
        config: dict[str, Any],
        rootfs: Sequence[Mount],
    ) -> None:
        """Fill the new, empty volumes from the image, each under its lock (one at a time, by
        name: two creates never wait on each other); a volume named at two targets is filled
        from the first. The rootfs is mounted read-only once, only if a volume takes a copy,
        and unmounted after."""
        firsts: dict[str, volume_labels.VolumeMount] = {}
        for m in copies:
            firsts.setdefault(m.name, m)
        async with contextlib.AsyncExitStack() as stack:
            root: list[Path | None] = []  # resolved at the first volume that wants a copy
            for name in sorted(firsts):
                m = firsts[name]
                paths = self.paths(ns, name)
                async with self._locks[(ns, name)]:
                    if not await asyncio.to_thread(copyup.wanted, paths.directory, paths.data):
                        continue
                    if not root:
                        root.append(await self._rootfs(stack, config, rootfs))
                    if root[0] is None:
                        continue
                    copied = await asyncio.to_thread(
                        copyup.copy_up, root[0], m.target, paths.directory, paths.data
                    )
                if copied.entries:
                    log.info(
                        "volume_copied_up", ns=ns, name=name, id=cid, entries=copied.entries,
                        ms=round(copied.copy_ms, 1), sync_ms=round(copied.sync_ms, 1),
                    )  # fmt: skip

    async def _rootfs(
        self, stack: contextlib.AsyncExitStack, config: dict[str, Any], rootfs: Sequence[Mount]
    ) -> Path | None:
        """The container's root, mounted read-only under the scratch directory until `stack`
        closes, or the spec's absolute root path when the request carries no mounts."""
        if not rootfs:
            given = str((config.get("root") or {}).get("path", ""))
            return Path(given) if given.startswith("/") else None
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        readonly = [Mount(m.type, m.source, (*m.options, "ro")) for m in rootfs]
        mounted = temp_mount(readonly, self._scratch)
        path = await asyncio.to_thread(mounted.__enter__)

        async def leave() -> None:
            await asyncio.to_thread(mounted.__exit__, None, None, None)

        stack.push_async_callback(leave)
        return path

    def _with_binds(
        self, ns: str, config: dict[str, Any], wanted: Sequence[volume_labels.VolumeMount]
    ) -> dict[str, Any]:
        targets = {m.target for m in wanted}
        kept = [
            m
            for m in config.get("mounts") or []
            if os.path.normpath(str(m.get("destination", ""))) not in targets
        ]
        binds = [
            {
                "destination": m.target,
                "type": "bind",
                "source": str(self.paths(ns, m.name).data),
                "options": ["rbind", "ro" if m.readonly else "rw"],
            }
            for m in sorted(wanted, key=lambda m: m.target.count("/"))
        ]
        # docker's order: a mount after those of shallower paths, so that a bind at /srv/conf
        # stays visible over a volume at /srv; a stable sort keeps the rest as it was
        mounts = sorted(kept + binds, key=lambda m: _depth(str(m.get("destination", ""))))
        return {**config, "mounts": mounts}

    async def release(self, ns: str, cid: str) -> None:
        """The task `cid` no longer uses its volumes: those no other task uses are unmounted
        (a tmpfs one forgets its copy-up: its data went with it). Nothing to release is
        fine."""
        announced = (ns, cid) in self._announced
        self._announced.discard((ns, cid))
        for name in self._by_task.pop((ns, cid), ()):
            if announced:
                unmounted = pb.VolumeUnmount(name=name, container_id=cid)
                await self._event(ns, "/volumes/unmount", unmounted)
            key = (ns, name)
            async with self._locks[key]:
                self._holders[key].discard(cid)
                if self._holders[key]:
                    continue
                del self._holders[key]
                if key in self._mounted:
                    await self._unmount(key)

    async def _unmount(self, key: Key) -> None:
        options = self._mounted.pop(key)
        paths = self.paths(*key)

        def unmount() -> None:
            local.unmount_data(paths)
            if options.get("type") == "tmpfs":
                copyup.forget(paths.directory)

        try:
            await asyncio.to_thread(unmount)
        except CtrdError as e:
            log.warning("volume_unmount_failed", ns=key[0], name=key[1], error=str(e))
            return
        log.info("volume_unmounted", ns=key[0], name=key[1])

    # --- the daemon's start and stop ---

    async def reconcile(self, tasks: Iterable[tuple[str, str]]) -> None:
        """At start, before serving: the tasks that use each volume (from the tasks taken
        back and their containers' labels), mounts made to match, cut-off removals and
        copy-ups discarded, stray mounts under the volumes' root undone."""
        live = set(tasks)
        volumes = await all_volumes(self._db)
        users: dict[str, dict[str, builtins.list[str]]] = {}
        for ns in {ns for ns, _ in volumes}:
            users[ns] = await self._db.read(functools.partial(_users_of, ns))
        known: set[str] = set()
        for ns, volume in volumes:
            key = (ns, volume.name)
            paths = self.paths(ns, volume.name)
            known.add(str(paths.data))
            holders = {cid for cid in users[ns].get(volume.name, []) if (ns, cid) in live}
            for cid in holders:
                self._by_task[(ns, cid)] = (*self._by_task.get((ns, cid), ()), volume.name)
            if holders:
                self._holders[key] = holders
            try:
                await asyncio.to_thread(self._reconcile_one, paths, volume, bool(holders))
            except (CtrdError, OSError) as e:
                log.warning("volume_reconcile_failed", ns=ns, name=volume.name, error=str(e))
                continue
            if holders and local.needs_mount(volume.options):
                self._mounted[key] = volume.options
        await asyncio.to_thread(self._sweep, known)

    @staticmethod
    def _reconcile_one(paths: local.VolumePaths, volume: Volume, held: bool) -> None:
        mounted = local.is_mounted(paths)
        if held and local.needs_mount(volume.options) and not mounted:
            local.make(paths)
            local.mount(paths, volume.options)
        elif not held and mounted:
            local.unmount_data(paths)
            if volume.options.get("type") == "tmpfs":
                copyup.forget(paths.directory)
        if not held and paths.data.is_dir() and copyup.discard_pending(paths.directory, paths.data):
            log.info("volume_copy_up_discarded", ns=paths.namespace, name=paths.name)

    def _sweep(self, known: set[str]) -> None:
        """What a crash left under the root: the rootfs of a copy-up still mounted, a volume
        whose record went but not its directory (a removal cut off), the trash."""
        scratch = str(self._scratch) + "/"
        for point in reversed(local.mounted_under(self.root)):
            if point.startswith(scratch) or (
                point.endswith("/" + local.DATA) and point not in known
            ):
                with contextlib.suppress(CtrdError):
                    unmount(Path(point))
        if self._scratch.is_dir():
            for leftover in self._scratch.iterdir():
                with contextlib.suppress(OSError):
                    leftover.rmdir()
        for ns_dir in self.root.iterdir() if self.root.is_dir() else ():
            if ns_dir.name.startswith(".") or not ns_dir.is_dir():
                continue
            for directory in ns_dir.iterdir():
                if str(directory / local.DATA) not in known:
                    log.info("volume_directory_removed", ns=ns_dir.name, name=directory.name)
                    with contextlib.suppress(CtrdError, OSError):
                        local.remove(local.VolumePaths(self.root, ns_dir.name, directory.name))
        local.empty_trash(self.root)

    async def close(self) -> None:
        """At the daemon's stop: unmount every volume no task uses (none should be mounted)."""
        for key in [k for k in self._mounted if not self._holders.get(k)]:
            await self._unmount(key)


def _depth(path: str) -> int:
    """How many parts a mount's path has (dockerd sorts its mounts by it)."""
    return os.path.normpath(path).count("/") if path not in ("", "/") else 0
