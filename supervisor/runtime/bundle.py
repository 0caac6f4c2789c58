"""Task bundles: the OCI bundle a shim and runc work in, `<state>/tasks/<ns>/<id>/`.

A bundle holds `config.json` (the container's spec, as the client wrote it), `rootfs/` (the
container's root filesystem, mounted from the mounts Tasks.Create names) and, later, what the
shim writes (its address, its journal). Creating is all or nothing: a failure unmounts and
removes whatever was made. Deleting is idempotent, so a delete interrupted by a crash is
finished by the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shim import dirs
from snapshotter.mount import mount_all, unmount
from snapshotter.protocol import Mount
from supervisor import identifiers
from supervisor.errors import AlreadyExists, InvalidArgument

CONFIG = "config.json"
ROOTFS = "rootfs"


@dataclass(frozen=True)
class Bundle:
    path: Path
    namespace: str
    id: str

    @property
    def rootfs(self) -> Path:
        return self.path / ROOTFS

    @classmethod
    def at(cls, state: Path, namespace: str, cid: str) -> Bundle:
        identifiers.validate(namespace)
        identifiers.validate(cid)
        return cls(state / "tasks" / namespace / cid, namespace, cid)

    def create(
        self, spec: bytes, mounts: Sequence[Mount], records: Mapping[str, str] | None = None
    ) -> float:
        """Write the spec and `records` (file name -> text) and mount the root filesystem
        (blocking; run it on a thread); returns the seconds the mounting took.

        With no mounts the spec's `root.path` is used as it is (dockerd mounts its own rootfs).
        """
        try:
            config = json.loads(spec)
        except ValueError as e:
            raise InvalidArgument(f'container "{self.id}": spec is not JSON: {e}') from None
        if not isinstance(config, dict):
            raise InvalidArgument(f'container "{self.id}": spec is not a JSON object')
        if not dirs.make_dirs(self.path, mode=0o700, parent_mode=0o711):
            raise AlreadyExists(f'bundle for task "{self.id}"')
        try:
            (self.path / CONFIG).write_bytes(spec)
            for name, text in (records or {}).items():
                (self.path / name).write_text(text)
            started = time.monotonic()
            if mounts:
                self.rootfs.mkdir(mode=0o711)
                mount_all(mounts, self.rootfs)
            return time.monotonic() - started
        except BaseException:
            self.delete()
            raise

    def release(self) -> None:
        """Unmount and remove the root filesystem and the spec; keep the records beside them."""
        if self.rootfs.exists():
            unmount(self.rootfs)
            shutil.rmtree(self.rootfs, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.path / CONFIG).unlink()

    def delete(self) -> None:
        """Unmount the root filesystem and remove the bundle; nothing to do is fine."""
        if self.rootfs.exists():
            unmount(self.rootfs)
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # the namespace's directory, once empty
            os.rmdir(self.path.parent)
