"""Running CNI plugins: one network list's ADD or DEL, as libcni runs them.

Each plugin is its binary `<bin dir>/<type>` (the first of the bin dirs that has it), run as
a child of the daemon in the host's network namespace with the environment `CNI_COMMAND`,
`CNI_CONTAINERID`, `CNI_NETNS` ("" when the namespace is gone), `CNI_IFNAME`, `CNI_ARGS`
(`K=V;K=V`), `CNI_PATH` (the bin dirs) over the daemon's own, and on its stdin the plugin's
object from the list with `name` and `cniVersion` of the list, `runtimeConfig` holding the
capability args it declared (and only those), and `prevResult`.

- ADD runs the plugins in order, each one's result the next one's `prevResult`; the last is
  the network's result. DEL runs them in reverse, each given the stored result as
  `prevResult` (lists of cniVersion 0.4.0 and later; older ones get none, as libcni).
- A plugin that fails prints `{"code","msg","details"}`: the error says which plugin of which
  network failed at what, then the plugin's own words (`plugin type="bridge" name="net"
  failed (add): failed to allocate ...; details`). A binary that is busy being written
  (ETXTBSY) is tried again, up to 5 times a second apart; one that does not answer within
  the timeout (or whose caller gives up) is killed with what it started (its own session).
- A plugin outlives a daemon killed while it ran (it is in a session of its own). Left alone,
  it would finish its ADD after the restarted daemon's DEL of that attachment and leave an
  address, a veth or portmap's rules that nothing records: `kill_orphans` finds such plugins
  of a sandbox by their environment and kills them with what they started, before the DEL.
- libcni's cache is kept for the tools that read it (crictl, CNI's GC): after an ADD,
  `<cache>/results/<network>-<container>-<ifname>` (`cniCacheV1`: the list's bytes in base64,
  the args, the result), removed after the DEL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import FailedPrecondition, InvalidArgument, Unknown
from supervisor.network.cni.conf import NetworkList, PluginConf
from supervisor.network.cni.result import Result, ResultError, parse

DEFAULT_TIMEOUT = 120.0  # seconds for one plugin (kubelet gives RunPodSandbox 4 minutes)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # libcni's container id and network name


class PluginError(Unknown):
    """A plugin that failed; `code` is its CNI error code (0 when it gave none)."""

    def __init__(self, detail: str, code: int = 0) -> None:
        super().__init__(detail, plain=True)
        self.code = code


@dataclass(frozen=True)
class Call:
    """What one attachment's plugins are run for."""

    container_id: str
    netns: str
    ifname: str
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def env(self, command: str, path: str) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PATH", DEFAULT_PATH)  # the plugins look up iptables, ip6tables
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in self.cni_args),
            CNI_PATH=path,
        )
        return env


def validate(network: NetworkList, call: Call) -> None:
    """libcni's checks before an ADD."""
    if not _ID.match(call.container_id):
        raise InvalidArgument(f"invalid characters in container id {call.container_id!r}")
    if not _ID.match(network.name):
        raise FailedPrecondition(f"invalid characters found in network name {network.name!r}")
    name = call.ifname
    if not name or len(name) > 15 or name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise InvalidArgument(f"invalid interface name {name!r}")


def plugin_config(
    network: NetworkList, plugin: PluginConf, call: Call, prev: dict[str, Any] | None
) -> bytes:
    """The plugin's stdin (see the module)."""
    conf = dict(plugin.raw)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    if prev is not None:
        conf["prevResult"] = prev
    runtime = {
        cap: call.capability_args[cap]
        for cap in sorted(plugin.capabilities)
        if cap in call.capability_args
    }
    if runtime:
        conf["runtimeConfig"] = runtime
    return json.dumps(conf).encode()


def describe(network: NetworkList, plugin: PluginConf) -> str:
    return f'plugin type="{plugin.type}" name="{plugin.name or network.name}"'


def error_text(status: int, stdout: bytes, stderr: bytes) -> tuple[str, int]:
    """What a failed plugin said, as libcni reads it, and its CNI code."""
    if not stdout.strip():
        if not stderr.strip():
            return f"netplugin failed with no error message: exit status {status}", 0
        return f"netplugin failed: {stderr.decode(errors='replace').strip()!r}", 0
    try:
        said = json.loads(stdout)
        if not isinstance(said, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        text = stdout.decode(errors="replace").strip()
        return f"netplugin failed but error parsing its diagnostic message {text!r}: {e}", 0
    msg = str(said.get("msg") or "")
    details = str(said.get("details") or "")
    code = said.get("code")
    text = f"{msg}; {details}" if details else msg
    return text or f"netplugin failed with code {code}", code if isinstance(code, int) else 0


def version_at_least(version: str, least: tuple[int, ...]) -> bool:
    try:
        return tuple(int(p) for p in version.split(".")) >= least
    except ValueError:
        return False


class Plugins:
    """The plugin binaries of the bin dirs, and running them."""

    def __init__(self, dirs: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.dirs = tuple(dirs)
        self.timeout = timeout

    def find(self, kind: str) -> str:
        for d in self.dirs:
            path = os.path.join(d, kind)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise FailedPrecondition(
            f'failed to find plugin "{kind}" in path [{" ".join(self.dirs)}]', plain=True
        )

    async def add(self, network: NetworkList, call: Call) -> Result:
        """ADD of every plugin of the list, in order; the last result."""
        validate(network, call)
        prev: dict[str, Any] | None = None
        result: Result | None = None
        for plugin in network.plugins:
            out = await self._run("ADD", network, plugin, call, prev)
            try:
                result = parse(out, network.cni_version)
            except ResultError as e:
                raise PluginError(f"{describe(network, plugin)} failed (add): {e}") from None
            prev = result.raw
        assert result is not None  # a list has a plugin at least (conf.parse_list)
        return result

    async def delete(self, network: NetworkList, call: Call, stored: str) -> None:
        """DEL of every plugin of the list, in reverse, with the stored result (JSON or "")."""
        prev: dict[str, Any] | None = None
        if stored and version_at_least(network.cni_version, (0, 4, 0)):
            prev = json.loads(stored)
        for plugin in reversed(network.plugins):
            await self._run("DEL", network, plugin, call, prev)

    async def _run(
        self,
        command: str,
        network: NetworkList,
        plugin: PluginConf,
        call: Call,
        prev: dict[str, Any] | None,
    ) -> bytes:
        what = f"{describe(network, plugin)} failed ({'add' if command == 'ADD' else 'delete'})"
        try:
            binary = self.find(plugin.type)
        except FailedPrecondition as e:
            raise FailedPrecondition(f"{what}: {e.detail}", plain=True) from None
        stdin = plugin_config(network, plugin, call, prev)
        env = call.env(command, ":".join(self.dirs))
        status, out, err = await self._exec(binary, stdin, env, what)
        if status != 0:
            text, code = error_text(status, out, err)
            raise PluginError(f"{what}: {text}", code)
        return out

    async def _exec(
        self, binary: str, stdin: bytes, env: dict[str, str], what: str
    ) -> tuple[int, bytes, bytes]:
        for attempt in range(6):
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    start_new_session=True,  # its children (IPAM plugins) killed with it
                )
            except OSError as e:
                if e.errno == errno.ETXTBSY and attempt < 5:
                    await asyncio.sleep(1)
                    continue
                raise PluginError(f"{what}: {e}") from None
            try:
                async with asyncio.timeout(self.timeout):
                    out, err = await proc.communicate(stdin)
            except TimeoutError:
                raise PluginError(f"{what}: no answer in {self.timeout:g}s (killed)") from None
            finally:
                if proc.returncode is None:  # timed out or cancelled: not left running
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            assert proc.returncode is not None
            return proc.returncode, out, err
        raise AssertionError("unreachable")


def orphans(container_id: str, proc: Path = Path("/proc")) -> list[int]:
    """The plugins run for `container_id` by a daemon that is gone: leaders of their own
    session (as `Plugins` starts them) with `CNI_CONTAINERID=<id>` in their environment and a
    parent that is not this process."""
    wanted = f"\0CNI_CONTAINERID={container_id}\0".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes()
            if wanted not in environ:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        pid, ppid, session = int(entry.name), int(fields[1]), int(fields[3])
        if session == pid and ppid != os.getpid():
            found.append(pid)
    return found


def kill_orphans(container_id: str, wait: float = 2.0) -> list[int]:
    """Kill the orphaned plugins of `container_id` (their sessions' process groups) and wait
    up to `wait` seconds for them to go (blocking; run it on a thread); their pids."""
    import time

    killed = orphans(container_id)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    return killed


def _alive(pid: int) -> bool:
    """Still running: not gone and not a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> Path:
    return Path(cache_dir) / "results" / f"{network}-{container_id}-{ifname}"


def write_cache(cache_dir: str, network: NetworkList, call: Call, result: Result) -> None:
    """libcni's cache file of an attachment (see the module); written whole or not at all."""
    cached: dict[str, Any] = {
        "kind": "cniCacheV1",
        "containerId": call.container_id,
        "config": base64.b64encode(network.source).decode(),
        "ifName": call.ifname,
        "networkName": network.name,
    }
    if call.cni_args:
        cached["cniArgs"] = [list(kv) for kv in call.cni_args]
    if call.capability_args:
        cached["capabilityArgs"] = dict(call.capability_args)
    cached["result"] = result.raw
    path = cache_path(cache_dir, network.name, call.container_id, call.ifname)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cached, f)
    os.replace(tmp, path)


def remove_cache(cache_dir: str, network: str, call: Call) -> None:
    cache_path(cache_dir, network, call.container_id, call.ifname).unlink(missing_ok=True)
