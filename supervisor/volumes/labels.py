"""The container label that asks for volumes, read by Tasks.Create without loading the rest.

It is the whole contract between a client and the daemon's volumes, so a container made by the
real `ctr` (`ctr run --label 'ctrd.io/volumes=[{"name":"data","target":"/data"}]' ...`) gets
exactly what `ctrctl run -v data:/data` gets:

- `ctrd.io/volumes`: a JSON array of `{"name": NAME, "target": "/abs/path", "readonly": bool,
  "nocopy": bool}`, the volumes of the container's namespace mounted in it (`readonly` and
  `nocopy` default to false). Each is bind-mounted (`rbind`, plus `ro` when readonly) at
  `target` in the spec the task is created with; a new, empty volume is first filled with what
  the image has at `target`, unless `nocopy` (docker's copy-up, `supervisor.volumes.copyup`).
  A volume is in use, and cannot be removed, while a container, running or not, names it here.
- `ctrd.io/anonymous`: on a volume (not a container), marks one made for a single container
  (`-v /path`, an image's `VOLUME`), as docker's `com.docker.volume.anonymous`: `volume prune`
  takes only those unless told `all`. ctrctl makes them before it creates the container.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from supervisor.errors import InvalidArgument

VOLUMES_LABEL = "ctrd.io/volumes"
ANONYMOUS_LABEL = "ctrd.io/anonymous"


@dataclass(frozen=True)
class VolumeMount:
    """One volume a container asks for."""

    name: str
    target: str
    readonly: bool = False
    nocopy: bool = False


def wants_volumes(labels: Mapping[str, str]) -> bool:
    """Whether Tasks.Create has volumes to mount for a container with these labels."""
    return bool(labels.get(VOLUMES_LABEL, "").strip())


def parse(value: str) -> tuple[VolumeMount, ...]:
    """The label's volumes, checked: InvalidArgument naming the label when it is malformed."""
    if not value.strip():
        return ()
    try:
        entries = json.loads(value)
    except ValueError as e:
        raise InvalidArgument(f"label {VOLUMES_LABEL} is not JSON: {e}") from None
    if not isinstance(entries, list):
        raise InvalidArgument(f"label {VOLUMES_LABEL} must be a JSON array")
    mounts = tuple(_entry(entry) for entry in entries)
    targets = [posixpath.normpath(m.target) for m in mounts]
    for target in targets:
        if targets.count(target) > 1:  # docker's words for two mounts on one path
            raise InvalidArgument(f"Duplicate mount point: {target}", plain=True)
    return mounts


def _entry(entry: object) -> VolumeMount:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"label {VOLUMES_LABEL}: each entry must be a JSON object")
    name, target = entry.get("name"), entry.get("target")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"label {VOLUMES_LABEL}: an entry has no volume name")
    if not isinstance(target, str) or not target:
        raise InvalidArgument(f"label {VOLUMES_LABEL}: volume {name!r} has no target")
    if not target.startswith("/"):  # docker's words (its mount parser's)
        raise InvalidArgument(f"invalid mount config for type \"volume\": invalid mount path: "
                              f"'{target}' mount path must be absolute", plain=True)  # fmt: skip
    flags = {key: entry.get(key, False) for key in ("readonly", "nocopy")}
    for key, flag in flags.items():
        if not isinstance(flag, bool):
            raise InvalidArgument(f"label {VOLUMES_LABEL}: volume {name!r}: {key} must be a bool")
    return VolumeMount(name, posixpath.normpath(target), flags["readonly"], flags["nocopy"])


def named(labels: Mapping[str, str]) -> tuple[str, ...]:
    """The volume names a container's label names, leniently: a malformed label names none
    (what counts a volume as in use must never fail on another client's label)."""
    try:
        return tuple(dict.fromkeys(m.name for m in parse(labels.get(VOLUMES_LABEL, ""))))
    except InvalidArgument:
        return ()
