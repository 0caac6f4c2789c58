"""The CNI networks a pod is attached to, read from the conf dir as containerd's go-cni does.

- The conf dir's files ending `.conf`, `.conflist` or `.json` (not directories), sorted by
  name; the first one is the pod network (containerd's `max_conf_num = 1`), its interface
  `eth0`. A `.conflist` is a list; any other file is one plugin's config, wrapped into a list
  of one (its `name` and `cniVersion` become the list's). The first file decides: when it does
  not parse, nothing is loaded (go-cni stops there too) and the error names it.
- Before it, always, the built-in loopback network `cni-loopback` (interface `lo`).
- Ready means both are loaded; otherwise "cni plugin not initialized", containerd's words,
  and the reason after them (no file, which file does not parse and why).

`ConfDir.load()` is called at every Status and every setup: it lists the directory and stats
the candidate files, and parses again only when a name, size, mtime or inode changed. So a
conflist that a DaemonSet writes after ctrd started (or writes in two steps) is picked up at
the next call, with no watcher to miss it (containerd's "stays NotReady until restarted").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

EXTENSIONS = (".conf", ".conflist", ".json")
NOT_INITIALIZED = "cni plugin not initialized"  # go-cni's ErrCNINotInitialized
LOOPBACK_NAME = "cni-loopback"
LOOPBACK_IFNAME = "lo"
DEFAULT_IFNAME = "eth0"  # the pod network's interface (go-cni's prefix "eth", index 0)
LOOPBACK_BYTES = b'{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}'


class ConfError(Exception):
    """A network config that does not load; the message says which file and why."""


@dataclass(frozen=True)
class PluginConf:
    """One plugin of a list: its object as written (`raw`), and what the runtime reads of it."""

    type: str
    raw: dict[str, Any]
    capabilities: frozenset[str] = frozenset()  # those declared true
    name: str = ""  # the plugin's own "name", rarely set inside a list


@dataclass(frozen=True)
class NetworkList:
    """A network config list (libcni's NetworkConfigList) with the interface it gets."""

    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    source: bytes  # the list's JSON: what DEL runs with later, and libcni's cache keeps
    ifname: str
    disable_check: bool = False


@dataclass(frozen=True)
class Loaded:
    """What the conf dir gave at one load: the networks (loopback first) or why none."""

    networks: tuple[NetworkList, ...] = ()
    error: str = ""  # "" when ready
    files: tuple[str, ...] = field(default_factory=tuple)  # the candidate files, sorted

    @property
    def ready(self) -> bool:
        return not self.error and len(self.networks) >= 2

    @property
    def message(self) -> str:
        """Why not ready, containerd's words first; "" when ready."""
        if self.ready:
            return ""
        return NOT_INITIALIZED if not self.error else f"{NOT_INITIALIZED}: {self.error}"


def parse_list(data: bytes, ifname: str) -> NetworkList:
    """A `.conflist`'s bytes as libcni's ConfListFromBytes reads them."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ConfError(f"error parsing configuration list: {e}") from None
    if not isinstance(raw, dict):
        raise ConfError("error parsing configuration list: not a JSON object")
    name = raw.get("name")
    if name is None:
        raise ConfError("error parsing configuration list: no name")
    if not isinstance(name, str):
        raise ConfError(f"error parsing configuration list: invalid name type {_type(name)}")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise ConfError(
            f"error parsing configuration list: invalid cniVersion type {_type(version)}"
        )
    disable_check = raw.get("disableCheck", False)
    if not isinstance(disable_check, bool):
        raise ConfError(
            f"error parsing configuration list: invalid disableCheck type {_type(disable_check)}"
        )
    if "plugins" not in raw:
        raise ConfError("error parsing configuration list: no 'plugins' key")
    plugins = raw["plugins"]
    if not isinstance(plugins, list):
        raise ConfError(
            f"error parsing configuration list: invalid 'plugins' type {_type(plugins)}"
        )
    if not plugins:
        raise ConfError("error parsing configuration list: no plugins in list")
    parsed = []
    for i, plugin in enumerate(plugins):
        try:
            parsed.append(_plugin(plugin))
        except ConfError as e:
            raise ConfError(f"failed to parse plugin config {i}: {e}") from None
    return NetworkList(name, version, tuple(parsed), data, ifname, disable_check)


def parse_single(data: bytes, ifname: str) -> NetworkList:
    """A `.conf`/`.json` file (one plugin's config) wrapped into a list of one."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ConfError(f"error parsing configuration: {e}") from None
    plugin = _plugin(raw)
    if "plugins" in raw and not plugin.type:
        raise ConfError("network type not found (a list in a .conf file?)")
    name = raw.get("name", "")
    version = raw.get("cniVersion", "")
    if not isinstance(name, str) or not isinstance(version, str):
        raise ConfError("error parsing configuration: name and cniVersion must be strings")
    wrapped = json.dumps({"name": name, "cniVersion": version, "plugins": [raw]}).encode()
    return parse_list(wrapped, ifname)


def _plugin(raw: Any) -> PluginConf:
    if not isinstance(raw, dict):
        raise ConfError("error parsing configuration: not a JSON object")
    kind = raw.get("type", "")
    if not isinstance(kind, str):
        raise ConfError(f"error parsing configuration: invalid type {_type(kind)}")
    if not kind:
        raise ConfError("error parsing configuration: missing 'type'")
    caps = raw.get("capabilities") or {}
    if not isinstance(caps, dict):
        raise ConfError("error parsing configuration: capabilities must be an object")
    name = raw.get("name", "")
    return PluginConf(
        kind,
        raw,
        frozenset(k for k, on in caps.items() if on is True),
        name if isinstance(name, str) else "",
    )


def _type(value: Any) -> str:
    return type(value).__name__


def loopback() -> NetworkList:
    return parse_list(LOOPBACK_BYTES, LOOPBACK_IFNAME)


def load_dir(directory: str, names: list[str]) -> Loaded:
    """The networks of `directory` whose candidate files are `names` (sorted)."""
    files = tuple(os.path.join(directory, n) for n in names)
    if not files:
        return Loaded(error=f"no network config found in {directory}", files=files)
    first = files[0]
    try:
        with open(first, "rb") as f:
            data = f.read()
    except OSError as e:
        return Loaded(error=f"failed to read config file {first}: {e.strerror}", files=files)
    try:
        if first.endswith(".conflist"):
            network = parse_list(data, DEFAULT_IFNAME)
        else:
            network = parse_single(data, DEFAULT_IFNAME)
    except ConfError as e:
        kind = "config list file" if first.endswith(".conflist") else "config file"
        return Loaded(error=f"failed to load CNI {kind} {first}: {e}", files=files)
    return Loaded((loopback(), network), files=files)


def candidates(directory: str) -> tuple[list[str], tuple[tuple[str, int, int, int], ...]]:
    """The conf dir's candidate file names, sorted, and a key of their stats (name, size,
    mtime, inode) that changes when any of them does. A missing dir has none."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return [], ()
    except NotADirectoryError:
        return [], ()
    names: list[str] = []
    key: list[tuple[str, int, int, int]] = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.name.endswith(EXTENSIONS):
            continue
        try:
            if entry.is_dir():
                continue
            st = entry.stat()
        except OSError:
            continue  # removed meanwhile
        names.append(entry.name)
        key.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return names, tuple(key)


class ConfDir:
    """The conf dir, loaded again only when what is in it changed (see the module)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._key: tuple[tuple[str, int, int, int], ...] | None = None
        self._loaded = Loaded()

    def load(self) -> Loaded:
        names, key = candidates(self.directory)
        if key != self._key:
            self._loaded = load_dir(self.directory, names)
            self._key = key
        return self._loaded
