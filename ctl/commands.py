"""ctrctl's container commands, with docker's options, output and exit codes.

`run` attaches to the container's stdio through FIFOs it makes (like ctr) unless detached.
Either way the container's output goes to the log its shim keeps (`ctrd-log://`), which `logs`
reads, as docker keeps it; attached, the shim copies each stream to its FIFO as well
(`ctrd-log://?tee=FIFO`). A terminal's output goes to its FIFO only. `run` exits with the
container's status; ctrctl's own errors exit 125, a command that cannot be executed 126, one
that is not found 127 (docker's codes).

`stop` and `restart` send the container's stop signal and wait its stop timeout before
SIGKILL, both kept in the container's labels at create (`--stop-signal`, else the image's
StopSignal, else SIGTERM; `--stop-timeout`, else 10 s: ctl.spec's container_labels); `-t`
overrides the timeout, -1 waits for good. `kill` sends SIGKILL unless told, as docker's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2

from ctl import netopts, secopts, volopts
from ctl import spec as oci
from ctl.client import NAME_LABEL, Client, ImageNotFound, NewContainer, NotFound, short
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from supervisor.api.containerd.types.task import task_pb2 as task_types

STATUS = {
    task_types.CREATED: "created",
    task_types.RUNNING: "running",
    task_types.PAUSED: "paused",
    task_types.STOPPED: "exited",
}
LOG_URI = "ctrd-log://"
EXIT_MISSING_NETWORK = 125  # docker's, for `--network` naming no network
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


def _env(values: list[str], files: list[str]) -> list[str]:
    env = []
    for path in files:
        with open(path) as f:
            env += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    env += values
    # docker's `-e NAME`: the value from ctrctl's own environment; when unset there, the bare
    # NAME goes on and unsets NAME in the container (the image's too), as with docker.
    return [e if "=" in e or e not in os.environ else f"{e}={os.environ[e]}" for e in env]


def _memory(text: str | None) -> int | None:
    if not text:
        return None
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower()
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def network_flags(args: argparse.Namespace) -> netopts.NetworkFlags:
    return netopts.NetworkFlags(
        network=args.network,
        publish=args.publish,
        publish_all=args.publish_all,
        expose=args.expose,
        ip=args.ip or "",
        aliases=args.network_alias,
        dns=args.dns,
        dns_search=args.dns_search,
        dns_options=args.dns_option,
        extra_hosts=args.add_host,
        hostname=args.hostname or "",
    )


HEALTH_FLAGS = ("health_cmd", "health_interval", "health_timeout", "health_start_period",
                "health_retries")  # fmt: skip


def _health(args: argparse.Namespace) -> dict[str, Any] | None:
    """The container's own Healthcheck (docker's form); ctl.healthopts imported only when a
    health flag is given."""
    if not args.no_healthcheck and all(getattr(args, f) is None for f in HEALTH_FLAGS):
        return None
    from ctl import healthopts

    return healthopts.from_args(args)


def _restart(args: argparse.Namespace) -> str:
    """The ctrd.io/restart label's value, docker's rules (ctl.restartopts, imported only when
    `--restart` asks for a policy)."""
    if args.restart in ("", "no"):
        return ""
    return str(_restartopts().checked(args))


def run_options(args: argparse.Namespace) -> oci.RunOptions:
    return oci.RunOptions(
        args=args.cmd,
        entrypoint=None if args.entrypoint is None else [args.entrypoint],  # "": docker's [""]
        env=_env(args.env, args.env_file),
        workdir=args.workdir or "",
        user=args.user or "",
        tty=args.tty,
        hostname=args.hostname or "",
        read_only=args.read_only,
        memory=_memory(args.memory),
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        network=args.network,
        net=network_flags(args),
        storage=volopts.parse(args.volume, args.mount, args.tmpfs, args.volumes_from),
        privileged=args.privileged,
        stop_signal=args.stop_signal or "",
        stop_timeout=args.stop_timeout,
        restart=_restart(args),  # the ctrd.io/restart label, docker's rules
        health=_health(args),  # the container's own Healthcheck (docker's form)
        security=secopts.from_args(args),  # docker's safe defaults, tuned by the flags
    )


def _restartopts() -> Any:
    """ctl.restartopts, imported by the commands that use it."""
    from ctl import restartopts

    return restartopts


def _network_options(client: Client, args: argparse.Namespace) -> oci.RunOptions:
    """The run options once the network flags passed docker's checks (their warnings said on
    stderr): `container:NAME` becomes `container:ID`, and the container takes that one's
    hostname, as dockerd gives it."""
    for warning in netopts.validate(network_flags(args)):
        print(warning, file=sys.stderr)
    options = run_options(args)
    if options.storage.volumes_from:  # what the other containers' mounts bring
        from ctl import volumes

        options = dataclasses.replace(options, storage=volumes.inherited(client, options.storage))
    if not netopts.is_container_mode(args.network):
        return options
    cid = client.resolve(netopts.container_of(args.network))
    shared = client.containers.Get(_get(cid), metadata=client.md).container
    hostname = _spec(shared).get("hostname") or cid[:12]
    return dataclasses.replace(
        options, network=netopts.CONTAINER_PREFIX + cid, hostname=str(hostname)
    )


class _Stdio:
    """FIFOs for a process's stdio, and the threads copying them to and from ours."""

    def __init__(self, interactive: bool, tty: bool) -> None:
        import tempfile  # (with shutil) only for an attached process: a detached run needs none

        self.dir = tempfile.mkdtemp(prefix="ctrctl-fifo-")
        self.stdin = os.path.join(self.dir, "stdin") if interactive else ""
        self.stdout = os.path.join(self.dir, "stdout")
        self.stderr = "" if tty else os.path.join(self.dir, "stderr")
        self._threads: list[threading.Thread] = []
        self._files: list[int] = []
        for path in (self.stdin, self.stdout, self.stderr):
            if path:
                os.mkfifo(path, 0o600)
        for path, target in ((self.stdout, 1), (self.stderr, 2)):
            if path:
                self._copy(path, target)
        if self.stdin:
            thread = threading.Thread(target=self._feed, args=(self.stdin,), daemon=True)
            thread.start()

    def _copy(self, path: str, dst: int) -> None:
        def copy() -> None:
            # A blocking open returns once the shim opened its end: reading before that
            # would see an EOF that is none.
            src = os.open(path, os.O_RDONLY)
            self._files.append(src)
            while chunk := os.read(src, 65536):
                _write_all(dst, chunk)

        thread = threading.Thread(target=copy, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _feed(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY)  # returns once the shim has opened its end
        with contextlib.suppress(OSError):
            while chunk := os.read(0, 65536):
                _write_all(fd, chunk)
        self.stdin_closed = True
        with contextlib.suppress(OSError):
            os.close(fd)

    stdin_closed = False

    def wait(self, timeout: float = 10) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        for fd in self._files:
            with contextlib.suppress(OSError):
                os.close(fd)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a write to a pipe or terminal may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(0):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _exit_code(client: Client, cid: str, exec_id: str = "") -> int:
    response = client.tasks.Wait(
        tpb.WaitRequest(container_id=cid, exec_id=exec_id), metadata=client.md
    )
    return int(response.exit_status)


def _create(client: Client, args: argparse.Namespace, options: oci.RunOptions) -> NewContainer:
    """docker's `--pull`: `missing` (the default) pulls an image not here yet, saying so first;
    `always` pulls every time; `never` leaves a missing image a "not found" error. The pull's
    progress goes to stderr, so that stdout is the container's alone."""
    name, runtime = args.name or "", args.runtime or ""
    if args.pull == "always":
        _pull(client, args.image)
    try:
        return client.create(args.image, options, name, runtime)
    except ImageNotFound:
        if args.pull != "missing":
            raise
    print(f"Unable to find image '{args.image}' locally", file=sys.stderr, flush=True)
    _pull(client, args.image)
    return client.create(args.image, options, name, runtime)


def _pull(client: Client, image: str) -> None:
    from ctl import pull

    request = argparse.Namespace(
        address=client.address, namespace=client.namespace, image=image, platform=None
    )
    pull.run(request, out=sys.stderr)


def missing_network(client: Client, network: str) -> bool:
    """Whether `--network` names a ctrd network that is not there (docker's error said)."""
    if not oci.is_named_network(network):
        return False
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2, networks_pb2_grpc

    stub = networks_pb2_grpc.NetworksStub(client.channel)
    try:
        stub.Get(networks_pb2.GetNetworkRequest(ref=network), metadata=client.md)
    except grpc.RpcError as e:
        if not (isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND):
            raise
        print(f"Error response from daemon: network {network} not found", file=sys.stderr)
        return True
    return False


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    options = _network_options(client, args)
    if missing_network(client, args.network):
        return EXIT_MISSING_NETWORK
    print(_create(client, args, options).id)
    return 0


def _start_task(
    client: Client,
    cid: str,
    stdio: _Stdio | None,
    tty: bool,
    log: bool = True,
    rootfs: Sequence[Any] | None = None,
) -> None:
    """Create the container's task: on its log, copied to `stdio`'s FIFOs when attached (as
    docker, ctrd keeps the output of attached containers too), else on its log alone (or no
    stdio); a terminal's output goes to its FIFO only. `rootfs`: the snapshot's mounts when
    known (a container just made), else asked for."""
    if rootfs is None:
        rootfs = client.rootfs(cid)
    request = tpb.CreateTaskRequest(container_id=cid, rootfs=rootfs, terminal=tty)
    if stdio is None:
        if log:
            request.stdout = request.stderr = LOG_URI
    elif tty:
        request.stdin, request.stdout, request.stderr = stdio.stdin, stdio.stdout, stdio.stderr
    else:
        request.stdin = stdio.stdin
        from urllib.parse import urlencode

        request.stdout = f"{LOG_URI}?{urlencode({'tee': stdio.stdout})}"
        request.stderr = f"{LOG_URI}?{urlencode({'tee': stdio.stderr})}"
    client.tasks.Create(request, metadata=client.md)


class _CannotRun(Exception):
    """The runtime could not start the process: docker's 126 (it cannot be executed) or 127
    (it is not there)."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.details = (error.details() if isinstance(error, grpc.Call) else "") or str(error)
        super().__init__(self.details)
        missing = "not found" in self.details or "no such file" in self.details
        self.status = 127 if missing else 126


def _runtime_refused(error: grpc.RpcError) -> bool:
    """Whether a task or process failed to start because of the command it was given."""
    details = (error.details() if isinstance(error, grpc.Call) else "") or ""
    return "exec: " in details or "executable file not found" in details


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    if args.detach and args.rm:
        raise ValueError("--rm cannot be used with -d here: a detached container is kept")
    options = _network_options(client, args)
    if missing_network(client, args.network):
        return EXIT_MISSING_NETWORK
    created = _create(client, args, options)
    cid = created.id
    try:
        status = _run(client, created, args)
    except _CannotRun as e:
        print(f"ctrctl: {e.details}", file=sys.stderr)
        status = e.status
    except BaseException:
        if args.rm:  # whatever went wrong, --rm leaves nothing behind (as docker's)
            with contextlib.suppress(Exception):
                _remove(client, cid, volumes=True)
        raise
    if args.rm:
        _remove(client, cid, volumes=True)  # its anonymous volumes too, as docker's --rm
    return status


def _remove(client: Client, cid: str, volumes: bool, has_task: bool | None = None) -> None:
    """Remove the container; with `volumes`, its anonymous volumes too (`rm -v`)."""
    removed = client.remove(cid, has_task=has_task)
    if volumes and volopts.VOLUMES_LABEL in removed.labels:
        from ctl import volumes as volume_calls

        volume_calls.remove_anonymous(client, removed.labels)


def _storage_view(client: Client, labels: Any, info: dict[str, Any]) -> None:
    """docker's `Mounts` and the storage part of its HostConfig, into `inspect`'s `info`."""
    from ctl import volumes

    info["Mounts"] = volumes.mounts_view(client, labels)
    info.setdefault("HostConfig", {}).update(volumes.host_config(labels))


def _run(client: Client, created: NewContainer, args: argparse.Namespace) -> int:
    """Start the container's task, attached to ours unless detached; its exit status."""
    cid = created.id
    if args.detach:
        _create_task(client, created, None, args.tty)
        client.tasks.Start(tpb.StartRequest(container_id=cid), metadata=client.md)
        print(cid)
        return 0
    stdio = _Stdio(args.interactive, args.tty)
    try:
        _create_task(client, created, stdio, args.tty)
        waiter = client.tasks.Wait.future(tpb.WaitRequest(container_id=cid), metadata=client.md)
        with _raw_terminal(args.tty and args.interactive):
            client.tasks.Start(tpb.StartRequest(container_id=cid), metadata=client.md)
            forward = _forward_signals(client, cid) if not args.tty else None
            with _follow_resizes(client, cid) if args.tty else contextlib.nullcontext():
                status = int(waiter.result().exit_status)
                stdio.wait()
        if forward is not None:
            forward()
    finally:
        stdio.close()
    return status


def _create_task(client: Client, created: NewContainer, stdio: _Stdio | None, tty: bool) -> None:
    try:
        _start_task(client, created.id, stdio, tty, rootfs=created.rootfs)
    except grpc.RpcError as e:
        if _runtime_refused(e):
            raise _CannotRun(e) from None
        raise


def _terminal_size() -> os.terminal_size:
    """The size of the terminal ctrctl runs on (not $COLUMNS/$LINES, which size output)."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.get_terminal_size(fd)
    import shutil

    return shutil.get_terminal_size()


def _resize(client: Client, cid: str, exec_id: str = "") -> None:
    size = _terminal_size()
    with contextlib.suppress(grpc.RpcError):
        client.tasks.ResizePty(
            tpb.ResizePtyRequest(container_id=cid, exec_id=exec_id, width=size.columns,
                                 height=size.lines),
            metadata=client.md,
        )  # fmt: skip


@contextlib.contextmanager
def _follow_resizes(client: Client, cid: str, exec_id: str = "") -> Iterator[None]:
    """Give the container's terminal our size now and whenever ours changes (SIGWINCH)."""
    previous = signal.signal(signal.SIGWINCH, lambda *_: _resize(client, cid, exec_id))
    try:
        _resize(client, cid, exec_id)
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _forward_signals(client: Client, cid: str) -> Any:
    """Signals ctrctl gets go to the container, as docker's run does; undo with the result."""

    def forward(signum: int, _: Any) -> None:
        with contextlib.suppress(grpc.RpcError):
            client.tasks.Kill(tpb.KillRequest(container_id=cid, signal=signum), metadata=client.md)

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in saved.items()]


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        cid = client.resolve(name)
        _restartopts().clear_stopped(client, cid)  # its restart policy applies again
        task = client.task(cid)
        if task is not None and task.status in (task_types.RUNNING, task_types.PAUSED):
            print(name)  # already started: nothing to do, as docker's
            continue
        if task is None or task.status == task_types.STOPPED:
            _new_task(client, cid, task)
        client.tasks.Start(tpb.StartRequest(container_id=cid), metadata=client.md)
        print(name)
    return 0


def _new_task(client: Client, cid: str, old: Any | None) -> None:
    """A fresh task for a container whose task is stopped (`old`) or was never made.

    Nobody is attached to a restarted container, so its output goes to its log, as a detached
    one's: tasks that had FIFOs (attached `run`, or ctr's) or a log get a log; a task that had
    no stdio at all keeps none. The terminal choice is the old task's, else the spec's.
    """
    if old is not None:
        client.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid), metadata=client.md)
        _start_task(client, cid, None, old.terminal, log=bool(old.stdout or old.stderr))
        return
    process = _process(client.containers.Get(_get(cid), metadata=client.md).container)
    _start_task(client, cid, None, bool(process.get("terminal")))


def _spec(container: Any) -> dict[str, Any]:
    """A container's OCI spec; {} when it is not one ctrctl can read (a client may store any
    type there: ps must still list the container)."""
    try:
        spec = json.loads(container.spec.value or b"{}")
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _process(container: Any) -> dict[str, Any]:
    """The process of a container's OCI spec; {} when there is none ctrctl can read."""
    process = _spec(container).get("process")
    return process if isinstance(process, dict) else {}


def _get(cid: str) -> Any:
    from supervisor.api.containerd.services.containers.v1 import containers_pb2 as cpb

    return cpb.GetContainerRequest(id=cid)


def _status(task: Any, now: float) -> str:
    """docker's STATUS: `Up 5 seconds`, `Up 2 minutes (Paused)`, `Exited (3) 1 second ago`."""
    from ctl.stats import process_start
    from ctl.table import ago, human_duration

    if task is None or task.status == task_types.CREATED:
        return "Created"
    if task.status == task_types.STOPPED:
        exited = task.exited_at.seconds + task.exited_at.nanos / 1e9
        return f"Exited ({task.exit_status}) {ago(exited, now)}".rstrip()
    started = process_start(task.pid)
    up = f"Up {human_duration(now - started)}" if started else "Up"
    return up + (" (Paused)" if task.status == task_types.PAUSED else "")


def _quoted(command: str, width: int = 20) -> str:
    """docker's COMMAND cell: cut to `width` characters (with "…") and in double quotes."""
    from ctl.table import cut

    return json.dumps(cut(command, width), ensure_ascii=False)


PS_FILTERS = ("id", "name", "label", "status", "exited", "ancestor", "health")


def _ps_filters(given: list[str]) -> dict[str, list[str]]:
    """docker's `ps --filter`s by key; a key given twice matches either value."""
    by_key: dict[str, list[str]] = {}
    for text in given:
        key, sep, value = text.partition("=")
        if not sep or key not in PS_FILTERS:
            raise ValueError(
                f'invalid filter "{text}": use KEY=VALUE with KEY one of {", ".join(PS_FILTERS)}'
            )
        by_key.setdefault(key, []).append(value)
    return by_key


def _ps_matches(row: dict[str, Any], labels: Any, filters: dict[str, list[str]]) -> bool:
    from ctl.client import normalize

    def one(key: str, value: str) -> bool:
        if key == "health":
            return True  # compared in cmd_ps, with the health the daemon keeps
        if key == "id":
            return str(row["id"]).startswith(value)
        if key == "name":
            return value in row["name"] or value in row["id"]
        if key == "label":
            name, sep, wanted = value.partition("=")
            return name in labels and (not sep or str(labels[name]) == wanted)
        if key == "status":
            return str(row["state"]) == value
        if key == "exited":
            return row["exitCode"] is not None and str(row["exitCode"]) == value
        return str(row["image"]) in (value, normalize(value))  # ancestor

    return all(any(one(key, v) for v in values) for key, values in filters.items())


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    from ctl import healthview, netview
    from ctl.table import ago, table

    now = time.time()
    filters = _ps_filters(args.filter)
    healthview.check_filter(filters.get("health", ()))
    last = 1 if args.latest else args.last
    everything = args.all or last > 0 or "status" in filters or "exited" in filters
    rows = []
    endpoints = _endpoints_by_container(client)
    tasks = client.all_tasks()
    containers = sorted(
        client.list_containers(),
        key=lambda c: (c.created_at.seconds, c.created_at.nanos),
        reverse=True,  # the newest first, as docker lists them
    )
    health = healthview.all_health(client, containers)  # one call, when a check is asked for
    restarts = _restart_states(client, containers)
    for container in containers[:last] if last > 0 else containers:
        task = tasks.get(container.id)
        if not everything and (task is None or task.status == task_types.STOPPED):
            continue
        command = " ".join(map(str, _process(container).get("args", [])))
        state = STATUS.get(task.status, "unknown") if task is not None else "created"
        row: dict[str, Any] = {
            "id": container.id, "image": container.image, "command": command,
            "created": container.created_at.ToJsonString(), "state": state,
            "status": _status(task, now), "pid": task.pid if task is not None else 0,
            "exitCode": task.exit_status if task is not None and state == "exited" else None,
            "name": container.labels.get(NAME_LABEL, ""),
            "ports": netview.displayable_ports(
                netview.container_ports(
                    container.labels, endpoints.get(container.id, []) if _live(task) else []
                )
            ),
        }  # fmt: skip
        if task is not None and task.status == task_types.RUNNING:
            row["status"] += healthview.status_suffix(health.get(container.id))
        health_status = healthview.filter_status(health.get(container.id))
        if "health" in filters and health_status not in filters["health"]:
            continue
        if (restart := _restartopts().status(restarts.get(container.id), task, now)) is not None:
            row["state"], row["status"] = restart  # Restarting (1) 2 seconds ago
        if not _ps_matches(row, container.labels, filters):
            continue
        row["createdSince"] = ago(container.created_at.seconds, now)
        rows.append(row)
    ident = (lambda cid: cid) if args.no_trunc else short
    if args.quiet:
        for row in rows:
            print(ident(row["id"]))
    elif args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        width = 1 << 20 if args.no_trunc else 20
        table(
            ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
            [[ident(r["id"]), r["image"], _quoted(r["command"], width), r["createdSince"],
              r["status"], r["ports"], r["name"]] for r in rows],
            shrink=(1, 2, 5),
        )  # fmt: skip
    return 0


def _restart_states(client: Client, containers: Sequence[Any], cid: str = "") -> dict[str, Any]:
    """The daemon's restart states (one call), when a container has a restart policy."""
    restartopts = _restartopts()
    if not any(restartopts.has_policy(c.labels) for c in containers):
        return {}
    return dict(restartopts.states(client, cid))


def _endpoints(client: Client, cid: str = "") -> list[Any]:
    """The network endpoints of container `cid` (every container's when ""), from one
    ListEndpoints call; none from a daemon without the networks service."""
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2, networks_pb2_grpc

    stub = networks_pb2_grpc.NetworksStub(client.channel)
    request = networks_pb2.ListEndpointsRequest(container_id=cid)
    try:
        return list(stub.ListEndpoints(request, metadata=client.md).endpoints)
    except grpc.RpcError as e:
        if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return []
        raise


def _live(task: Any | None) -> bool:
    """Whether a container's network is shown: while its task runs (or is paused), as docker
    shows addresses and ports; a stopped task keeps its endpoints until it is deleted."""
    return task is not None and task.status in (task_types.RUNNING, task_types.PAUSED)


def _live_endpoints(client: Client, cid: str) -> list[Any]:
    return _endpoints(client, cid) if _live(client.task(cid)) else []


def _endpoints_by_container(client: Client) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for endpoint in _endpoints(client):
        found.setdefault(endpoint.container_id, []).append(endpoint)
    return found


def cmd_port(client: Client, args: argparse.Namespace) -> int:
    """docker's `port`: a container's published ports, or where one of its ports is."""
    from ctl import netview

    try:
        cid = client.resolve(args.container)
    except NotFound as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    container = client.containers.Get(_get(cid), metadata=client.md).container
    try:
        lines = netview.port_lines(
            container.labels, _live_endpoints(client, cid), args.container, args.port or ""
        )
    except netview.NoPublicPort as e:
        print(e, file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    from ctl.times import parse_time, rfc3339_nano
    from supervisor.api.ctrd.services.logs.v1 import logs_pb2, logs_pb2_grpc

    cid = client.resolve(args.container)
    request = logs_pb2.ReadRequest(container_id=cid, follow=args.follow)
    if args.tail not in (None, "all"):
        request.tail = int(args.tail)
    if args.since:
        request.since.FromNanoseconds(parse_time(args.since))
    if args.until:
        request.until.FromNanoseconds(parse_time(args.until))
    stub = logs_pb2_grpc.LogsStub(client.channel)
    try:
        for entry in stub.Read(request, metadata=client.md):
            stream = sys.stdout.buffer if entry.stream == "stdout" else sys.stderr.buffer
            if args.timestamps:  # docker's: RFC 3339 with nanoseconds, then a space
                stream.write(rfc3339_nano(entry.time.ToNanoseconds()).encode() + b" ")
            stream.write(entry.data)
            stream.flush()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(
                f"{args.container} has no log: its task was not started by ctrctl"
            ) from None
        raise
    return 0


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    """docker's `wait`: block until each container's task has stopped; print its status."""
    for name in args.containers:
        cid = client.resolve(name)
        if client.task(cid) is None:
            raise NotFound(f"container {name} is not running: it has no task to wait for")
        answer = client.tasks.Wait(tpb.WaitRequest(container_id=cid), metadata=client.md)
        print(answer.exit_status, flush=True)
    return 0


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        _stop(client, client.resolve(name), args.time)
        print(name)
    return 0


def _stop(client: Client, cid: str, timeout: float | None) -> None:
    """The container's stop signal, then SIGKILL after `timeout` seconds (None: the
    container's own stop timeout, 10 s by default; negative: no SIGKILL), as dockerd stops a
    container; returns once it is dead. A restart policy is told first (ctl.restartopts)."""
    container = client.containers.Get(_get(cid), metadata=client.md).container
    _restartopts().mark_stopped(client, container)  # before the task is looked at
    task = client.task(cid)
    if task is None or task.status not in (task_types.RUNNING, task_types.PAUSED):
        return
    waiter = client.tasks.Wait.future(tpb.WaitRequest(container_id=cid), metadata=client.md)
    if task.status == task_types.PAUSED:
        client.tasks.Resume(tpb.ResumeTaskRequest(container_id=cid), metadata=client.md)
    sig, own_timeout = oci.stop_settings(container.labels)
    timeout = own_timeout if timeout is None else timeout
    _kill(client, cid, sig, all_=False)
    try:
        waiter.result(timeout=timeout if timeout >= 0 else None)
    except grpc.FutureTimeoutError:
        _kill(client, cid, int(signal.SIGKILL), all_=True)
        waiter.result(timeout=30)


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        cid = client.resolve(name)
        _stop(client, cid, args.time)
        _restartopts().clear_stopped(client, cid)
        _new_task(client, cid, client.task(cid))
        client.tasks.Start(tpb.StartRequest(container_id=cid), metadata=client.md)
        print(name)
    return 0


def _kill(client: Client, cid: str, sig: int, all_: bool) -> None:
    with contextlib.suppress(grpc.RpcError):
        client.tasks.Kill(
            tpb.KillRequest(container_id=cid, signal=sig, all=all_), metadata=client.md
        )


def cmd_kill(client: Client, args: argparse.Namespace) -> int:
    """docker's kill: SIGKILL unless told (never the stop signal, which is `stop`'s). As
    dockerd's killWithSignal, SIGKILL, the container's stop signal, or any signal when it has
    none of its own, is the user's stop: a restart policy does not bring it back."""
    number = oci.parse_signal(args.signal)
    for name in args.containers:
        cid = client.resolve(name)
        container = client.containers.Get(_get(cid), metadata=client.md).container
        labels = container.labels
        if (
            number == int(signal.SIGKILL)
            or not oci.stop_signal_set(labels)
            or number == oci.stop_settings(labels)[0]
        ):
            _restartopts().mark_stopped(client, container)  # docker: not restarted after it
        client.tasks.Kill(tpb.KillRequest(container_id=cid, signal=number), metadata=client.md)
        print(name)
    return 0


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        cid = client.resolve(name)
        if args.force:  # not restarted under our feet, nor while a restart is pending
            container = client.containers.Get(_get(cid), metadata=client.md).container
            _restartopts().call_off(client, container)
        task = client.task(cid)
        if task is not None and task.status != task_types.STOPPED:
            if not args.force:
                raise ValueError(
                    f"cannot remove running container {name}: stop it first, or use -f"
                )
            waiter = client.tasks.Wait.future(tpb.WaitRequest(container_id=cid), metadata=client.md)
            _kill(client, cid, int(signal.SIGKILL), all_=True)
            waiter.result(timeout=30)
        _remove(client, cid, args.volumes, has_task=task is not None)
        print(name)
    return 0


def cmd_pause(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        cid = client.resolve(name)
        if args.command == "pause":
            client.tasks.Pause(tpb.PauseTaskRequest(container_id=cid), metadata=client.md)
        else:
            client.tasks.Resume(tpb.ResumeTaskRequest(container_id=cid), metadata=client.md)
        print(name)
    return 0


def cmd_exec(client: Client, args: argparse.Namespace) -> int:
    cid = client.resolve(args.container)
    task = client.task(cid)
    if task is not None and task.status == task_types.PAUSED:
        raise ValueError(f"container {args.container} is paused: unpause it first")
    if task is None or task.status != task_types.RUNNING:
        raise ValueError(f"container {args.container} is not running")
    container = client.containers.Get(_get(cid), metadata=client.md).container
    process = _process(container)
    if not process:
        raise ValueError(f"container {args.container} has no OCI process spec to exec from")
    process["args"] = args.cmd
    process["terminal"] = args.tty
    if args.workdir:
        process["cwd"] = args.workdir
    if args.env:
        process["env"] = oci.merge_env(process.get("env", []), _env(args.env, []))
    if args.user:
        user = _user_in_container(client, cid, args.user)
        process["user"] = {
            "uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids),
        }  # fmt: skip
    exec_id = f"exec-{time.time_ns()}"
    stdio = _Stdio(args.interactive, args.tty)
    try:
        client.tasks.Exec(
            tpb.ExecProcessRequest(
                container_id=cid, exec_id=exec_id, terminal=args.tty, stdin=stdio.stdin,
                stdout=stdio.stdout, stderr=stdio.stderr,
                spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode()),
            ),
            metadata=client.md,
        )  # fmt: skip
        waiter = client.tasks.Wait.future(
            tpb.WaitRequest(container_id=cid, exec_id=exec_id), metadata=client.md
        )
        with _raw_terminal(args.tty and args.interactive):
            try:
                client.tasks.Start(
                    tpb.StartRequest(container_id=cid, exec_id=exec_id), metadata=client.md
                )
            except grpc.RpcError as e:
                client.tasks.DeleteProcess(
                    tpb.DeleteProcessRequest(container_id=cid, exec_id=exec_id), metadata=client.md
                )
                refused = _CannotRun(e)
                print(f"ctrctl: {refused.details}", file=sys.stderr)
                return refused.status
            with _follow_resizes(client, cid, exec_id) if args.tty else contextlib.nullcontext():
                status = int(waiter.result().exit_status)
                stdio.wait()
        client.tasks.DeleteProcess(
            tpb.DeleteProcessRequest(container_id=cid, exec_id=exec_id), metadata=client.md
        )
    finally:
        stdio.close()
    return status


def _user_in_container(client: Client, cid: str, user: str) -> oci.User:
    """`exec -u`'s user resolved in the running container's /etc/passwd and /etc/group, as
    dockerd resolves it (by name or uid, its gid and groups), read through ctrd's archive
    service into a scratch directory."""
    import io
    import tarfile
    import tempfile
    from pathlib import Path

    from ctl.client import stub
    from supervisor.api.ctrd.services.archive.v1 import archive_pb2

    archive = stub(client.channel, archive_pb2, "Archive")
    with tempfile.TemporaryDirectory(prefix="ctrctl-users-") as scratch:
        (Path(scratch) / "etc").mkdir()
        for name in ("passwd", "group"):
            path = f"/etc/{name}"
            for _ in range(8):  # a symlink's target, as the container would read it
                try:
                    data = b"".join(
                        m.data
                        for m in archive.Get(
                            archive_pb2.GetRequest(container_id=cid, path=path),
                            metadata=client.md,
                        )
                    )
                except grpc.RpcError as e:
                    if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                        break
                    raise
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    member = next(iter(tar), None)
                    if member is None:
                        break
                    if member.issym():
                        target = member.linkname
                        path = target if target.startswith("/") else f"/etc/{target}"
                        continue
                    content = tar.extractfile(member) if member.isfile() else None
                    if content is not None:
                        (Path(scratch) / "etc" / name).write_bytes(content.read())
                break
        return oci.resolve_user(user, Path(scratch))


def cmd_inspect(client: Client, args: argparse.Namespace) -> int:
    from ctl import healthview, netview
    from supervisor import anys

    out: list[dict[str, Any]] = []
    for name in args.containers:
        try:
            cid = client.resolve(name)
        except NotFound as e:  # docker's inspect looks at images next
            if not str(e).startswith("No such container"):
                raise
            from ctl.images import inspect_images

            try:
                out += inspect_images(client, [name])
            except NotFound as missing:
                if str(missing).startswith("No such image"):
                    raise NotFound(f"No such object: {name}") from None
                raise
            continue
        container = client.containers.Get(_get(cid), metadata=client.md).container
        # Anys of any type (ctr's, dockerd's, made-up ones) decode or show raw, never fail.
        info = anys.message_to_json(container)
        info["spec"] = anys.content(container.spec) if container.HasField("spec") else {}
        info["runtime"] = container.runtime.name
        if container.runtime.HasField("options"):
            info["runtimeOptions"] = anys.to_json(container.runtime.options)
        _storage_view(client, container.labels, info)  # Mounts, HostConfig's Binds...
        task = client.task(cid)
        host_network = _host_network(container)
        info["NetworkSettings"] = netview.network_settings(
            container.labels, _endpoints(client, cid) if _live(task) else [], host_network
        )
        info.setdefault("HostConfig", {}).update(
            netview.host_config(container.labels, host_network)
        )
        healthview.inspect_fields(client, cid, container.labels, info)  # Config/State health
        if task is not None:
            info["state"] = {
                "status": STATUS.get(task.status, "unknown"), "pid": task.pid,
                "exitCode": task.exit_status,
            }  # fmt: skip
        restarts = _restart_states(client, [container], cid)
        _restartopts().inspect_fields(container.labels, restarts.get(cid), info)
        out.append(info)
    print(json.dumps(out, indent=2))
    return 0


def _host_network(container: Any) -> bool:
    """Whether a container's spec runs it in the host's network namespace."""
    linux = _spec(container).get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    if not isinstance(namespaces, list):
        return False
    return not any(isinstance(n, dict) and n.get("type") == "network" for n in namespaces)
