"""The real ctr says, exits and calls the same against ctrd as against a real containerd (started
by the test; see tests/support/compat.py) for the command groups `tasks`, `run`, `events` (task
topics) and `images import`: their success paths and the error paths ctr can reach in them.

Table-driven: each case builds its state through ctr itself on both daemons, in a namespace of
its own (`{ns}`), runs one ctr command line on both and compares exit code, masked output and
the RPC sequence (method and status code). The states: `t1`, a container of the busybox image
(`IMAGE`) without a task, running `sleep`, paused, or exited (its task stopped, not deleted).
After each case every task of its namespace is killed and deleted, on both daemons.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support import compat, images
from tests.support.terminal import run_in_pty

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/compat:1"
# Each daemon's containers in cgroups of their own: ctr's default, /<namespace>/<id>, is the
# same path for both, and one daemon's pause would freeze the other's container too.
RUN_D = ("run", "-d", "--fifo-dir", "{fifo}", "--cgroup", "{base}/cgroup/{ns}", IMAGE)


@pytest.fixture(scope="module")
def both() -> Iterator[compat.Both]:
    with compat.Both.started() as pair:
        try:
            yield pair
        finally:
            for side in pair.sides:
                _remove_cgroups(side.base)
            # Containers made by `containers create` are in ctr's default cgroup, /<ns>/<id>.
            for ns in [f"tasks-{case.name}" for case in CASES] + ["tasks-api-no-task"]:
                _remove_cgroups(Path("/", ns))


def _remove_cgroups(base: Path) -> None:
    """The cgroup directories under `base` that the tests' containers left (runc removes only
    each leaf): only empty ones go."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] not in ("cgroup", "cgroup2"):
            continue
        top = Path(fields[4] + str(base))
        for directory, _, _ in os.walk(top, topdown=False) if top.is_dir() else ():
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        for parent in [top, *top.parents]:
            if parent == Path(fields[4]):
                break
            with contextlib.suppress(OSError):
                os.rmdir(parent)


@pytest.fixture(scope="module")
def archives() -> Iterator[dict[str, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="ctrd-compat-tasks-"))
    try:
        yield {
            "archive": images.oci_archive(images.busybox_image(), directory / "oci.tar", IMAGE),
            "docker-archive": images.docker_archive(
                images.busybox_image(schema="docker"), directory / "docker.tar", IMAGE
            ),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Step:
    args: tuple[str, ...]
    until: str = ""  # run again (up to 10 s) until `ctr tasks ls` shows this on both daemons


@dataclass(frozen=True)
class Case:
    name: str
    command: tuple[str, ...]
    setup: tuple[Step, ...] = ()
    masks: tuple[compat.Mask, ...] = ()
    calls: compat.CallOrder = "ordered"
    ignoring: tuple[str, ...] = ()  # calls ctr makes or not by timing, on either daemon
    says: str = ""  # words ctr must print (containerd's), checked on both daemons
    known: str = ""  # a difference not fixed yet: the case is expected to fail, and why


def step(*args: str, until: str = "") -> Step:
    return Step(args, until)


IMPORT = step("images", "import", "{archive}")
CONTAINER = (IMPORT, step("containers", "create", IMAGE, "t1"))
RUNNING = (IMPORT, step(*RUN_D, "t1", "sleep", "1000"))
PAUSED = (*RUNNING, step("tasks", "pause", "t1", until="PAUSED"))
EXITED = (IMPORT, step(*RUN_D, "t1", "sh", "-c", "exit 3"), step("tasks", "ls", until="STOPPED"))
DELETED = (*EXITED, step("tasks", "delete", "t1"))

PID = (r"(?m)^(t1|\d+) +\d+ +", r"\1 <pid> ")  # tasks ls, tasks ps
PS = (r"(?m)^\d+ ", "<pid> ")
# ctr pads its columns to the widest value: the headers' spacing follows the pids' lengths
LS_HEADER = (r"(?m)^TASK +PID +STATUS *$", "TASK PID STATUS")
PS_HEADER = (r"(?m)^PID +INFO *$", "PID INFO")
# Where each daemon keeps a task's bundle (runc's log.json is named when runc cannot run).
BUNDLE_LOG = (r"open <base>/\S+/log\.json", "open <bundle>/log.json")
# The values and the time they were taken, and so the columns' widths.
METRICS = ((r"\d+", "<n>"), (r" +", " "))

CASES = (
    # --- tasks delete
    Case("delete-deleted", ("tasks", "delete", "t1"), setup=DELETED,
         says="no running task found: task t1 not found: not found"),
    Case("delete-no-task", ("tasks", "delete", "t1"), setup=CONTAINER),
    Case("delete-running", ("tasks", "delete", "t1"), setup=RUNNING),
    Case("delete-paused", ("tasks", "delete", "t1"), setup=PAUSED),
    Case("delete-exited", ("tasks", "delete", "t1"), setup=EXITED),
    # ctr's Wait runs on a goroutine of its own: it may reach the daemon after the Kill.
    Case("delete-force-running", ("tasks", "delete", "-f", "t1"), setup=RUNNING,
         calls="unordered"),
    Case("delete-missing-exec", ("tasks", "delete", "--exec-id", "nope", "t1"), setup=RUNNING,
         says="no running process found: process does not exist nope: not found"),
    # --- tasks kill
    Case("kill-no-task", ("tasks", "kill", "t1"), setup=CONTAINER),
    Case("kill-deleted", ("tasks", "kill", "t1"), setup=DELETED),
    Case("kill-running", ("tasks", "kill", "-s", "KILL", "t1"), setup=RUNNING),
    Case("kill-exited", ("tasks", "kill", "t1"), setup=EXITED),
    Case("kill-paused", ("tasks", "kill", "-s", "KILL", "t1"), setup=PAUSED),
    Case("kill-missing-exec", ("tasks", "kill", "--exec-id", "nope", "t1"), setup=RUNNING,
         says="process does not exist nope: not found"),
    Case("kill-all-exited", ("tasks", "kill", "-a", "t1"), setup=EXITED),
    Case("kill-bad-signal", ("tasks", "kill", "-s", "NOPE", "t1"), setup=RUNNING),
    # --- tasks ps, pause, resume, metrics, checkpoint, ls
    Case("ps-no-task", ("tasks", "ps", "t1"), setup=CONTAINER),
    Case("ps-running", ("tasks", "ps", "t1"), setup=RUNNING, masks=(PS, PS_HEADER)),
    Case("ps-exited", ("tasks", "ps", "t1"), setup=EXITED),
    Case("pause-no-task", ("tasks", "pause", "t1"), setup=CONTAINER),
    Case("pause-paused", ("tasks", "pause", "t1"), setup=PAUSED,
         says="cannot pause a paused container: unknown"),
    Case("pause-exited", ("tasks", "pause", "t1"), setup=EXITED,
         says="cannot pause a stopped container: unknown"),
    Case("resume-running", ("tasks", "resume", "t1"), setup=RUNNING,
         says="cannot resume a running process: unknown"),
    Case("resume-exited", ("tasks", "resume", "t1"), setup=EXITED,
         says="cannot resume a stopped container: unknown"),
    Case("resume-paused", ("tasks", "resume", "t1"), setup=PAUSED),
    Case("metrics-no-task", ("tasks", "metrics", "t1"), setup=CONTAINER),
    Case("metrics-running", ("tasks", "metrics", "t1"), setup=RUNNING, masks=METRICS),
    Case("metrics-exited", ("tasks", "metrics", "t1"), setup=EXITED, masks=METRICS),
    Case("checkpoint-no-task", ("tasks", "checkpoint", "t1"), setup=CONTAINER),
    Case("checkpoint-exited", ("tasks", "checkpoint", "t1"), setup=EXITED),
    Case("checkpoint-running", ("tasks", "checkpoint", "t1"), setup=RUNNING,
         known="ctrd has no checkpoint (UNIMPLEMENTED); containerd's runc fails on CRIU"),
    Case("ls-running", ("tasks", "ls"), setup=RUNNING, masks=(PID, LS_HEADER)),
    Case("ls-paused", ("tasks", "ls"), setup=PAUSED, masks=(PID, LS_HEADER)),
    Case("ls-exited", ("tasks", "ls"), setup=EXITED, masks=(PID, LS_HEADER)),
    Case("ls-none", ("tasks", "ls")),
    # --- tasks exec
    Case("exec-no-task", ("tasks", "exec", "--exec-id", "e1", "t1", "true"), setup=CONTAINER),
    Case("exec-exited", ("tasks", "exec", "--exec-id", "e1", "t1", "true"), setup=EXITED,
         says="cannot exec in a stopped state: unknown"),
    Case("exec-paused", ("tasks", "exec", "--exec-id", "e1", "t1", "true"), setup=PAUSED,
         says="cannot exec in a paused state: unknown"),
    # ctr's stdin copier closes the exec's stdin (CloseIO) when its stdin ends, racing the
    # exec's exit or failed start: sent or not by timing (seen both ways on both daemons)
    Case("exec-status", ("tasks", "exec", "--fifo-dir", "{fifo}", "--exec-id", "e1", "t1",
                         "sh", "-c", "echo out; exit 3"), setup=RUNNING, calls="unordered",
         ignoring=("Tasks/CloseIO",)),
    Case("exec-not-found", ("tasks", "exec", "--fifo-dir", "{fifo}", "--exec-id", "e1", "t1",
                            "/nonexistent"), setup=RUNNING, calls="unordered",
         says='ctr: OCI runtime exec failed: exec failed: unable to start container process: '
              'exec: "/nonexistent": stat /nonexistent: no such file or directory: unknown',
         ignoring=("Tasks/CloseIO",)),
    Case("exec-bad-cwd", ("tasks", "exec", "--fifo-dir", "{fifo}", "--exec-id", "e1", "--cwd",
                          "/nope", "t1", "true"), setup=RUNNING, calls="unordered",
         ignoring=("Tasks/CloseIO",)),
    Case("exec-no-exec-id", ("tasks", "exec", "t1", "true"), setup=RUNNING),
    # --- tasks start, attach
    Case("start-running", ("tasks", "start", "t1"), setup=RUNNING),
    Case("start-exited", ("tasks", "start", "t1"), setup=EXITED),
    Case("start-missing", ("tasks", "start", "nope")),
    Case("start-detached", ("tasks", "start", "-d", "--fifo-dir", "{fifo}", "t1"),
         setup=CONTAINER),
    Case("start-attached", ("tasks", "start", "--fifo-dir", "{fifo}", "t1"),
         # (containers create takes no --cgroup: both tasks' cgroup is /{ns}/t1, one at a time)
         setup=(IMPORT, step("containers", "create", IMAGE, "t1", "seq", "3")),
         calls="unordered"),
    Case("start-attached-failing", ("tasks", "start", "--fifo-dir", "{fifo}", "t1"),
         setup=(IMPORT, step("containers", "create", IMAGE, "t1", "false")), calls="unordered"),
    Case("attach-no-task", ("tasks", "attach", "t1"), setup=CONTAINER),
    Case("attach-exited", ("tasks", "attach", "t1"), setup=EXITED),
    # --- run
    Case("run-existing-id", (*RUN_D, "t1", "true"), setup=RUNNING),
    Case("run-existing-container", (*RUN_D, "t1", "true"), setup=CONTAINER),
    Case("run-not-found", (*RUN_D, "t1", "/nonexistent"), setup=(IMPORT,),
         says="ctr: failed to create shim task: OCI runtime create failed: runc create failed: "),
    Case("run-runc-binary-missing", ("run", "-d", "--runc-binary", "nope", *RUN_D[2:], "t1"),
         setup=(IMPORT,), masks=(BUNDLE_LOG,),
         says='executable file not found in $PATH: unknown'),
    Case("run-runc-binary-path-missing", ("run", "-d", "--runc-binary", "/nope", *RUN_D[2:],
                                          "t1"), setup=(IMPORT,), masks=(BUNDLE_LOG,)),
    Case("run-missing-image", ("run", "-d", "docker.io/library/nope:1", "t1", "true")),
    Case("run-bad-runtime", ("run", "-d", "--runtime", "io.containerd.nope.v1", IMAGE, "t1"),
         setup=(IMPORT,)),
    Case("run-rm-status", ("run", "--rm", *RUN_D[2:], "t1", "sh", "-c", "echo hi; exit 7"),
         setup=(IMPORT,), calls="unordered"),
    # --- images import
    Case("import-again", ("images", "import", "{archive}"), setup=(IMPORT,)),
    Case("import-index-name-blobs-elsewhere", ("images", "import", "--index-name", "idx",
                                               "{archive}"), setup=(IMPORT,)),
    Case("import-index-name", ("images", "import", "--index-name", "idx", "{archive}")),
    Case("import-all-platforms", ("images", "import", "--all-platforms", "{archive}")),
    Case("import-base-name", ("images", "import", "--base-name", "docker.io/x/y",
                              "{docker-archive}")),
    Case("import-docker-index-name", ("images", "import", "--index-name", "idx",
                                      "{docker-archive}")),
    Case("import-missing-file", ("images", "import", "{base}/nope.tar")),
)  # fmt: skip

# Cases whose state lives in another namespace first: the blobs exist, but not in `{ns}`.
ELSEWHERE = {"import-index-name-blobs-elsewhere"}


def _expand(args: tuple[str, ...], ns: str, archives: dict[str, Path]) -> tuple[str, ...]:
    out = []
    for arg in args:
        arg = arg.replace("{ns}", ns)
        for name, path in archives.items():
            arg = arg.replace("{" + name + "}", str(path))
        out.append(arg)
    return tuple(out)


def _ctr(side: compat.Side, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [a.replace("{fifo}", str(side.fifo_dir)) for a in args]
    return subprocess.run(
        [require_binary("ctr"), "-a", side.tap, "-n", ns, *argv],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _build(both: compat.Both, setup: Step, ns: str) -> None:
    """One step of a case's state, on both daemons. A step with `until` is run again until
    `ctr tasks ls` shows that: containerd refuses to pause a task `run -d` has just started
    ("OCI runtime pause failed: container not running") until runc sees it running."""
    if not setup.until:
        both.setup(*setup.args, ns=ns)
        return
    for side in both.sides:
        deadline = time.monotonic() + 10
        while setup.until not in (listed := _ctr(side, ns, "tasks", "ls")).stdout:
            if time.monotonic() > deadline:
                pytest.fail(f"{side.name}: never {setup.until}:\n{listed.stdout}")
            _ctr(side, ns, *setup.args)
            time.sleep(0.05)


def _clean(both: compat.Both, ns: str) -> None:
    """Every task of `ns` killed and deleted, on both daemons (not compared)."""
    for side in both.sides:
        for cid in _ctr(side, ns, "tasks", "ls", "-q").stdout.split():
            _ctr(side, ns, "tasks", "rm", "-f", cid)


def _params(cases: tuple[Case, ...]) -> list[object]:
    return [
        pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.known, strict=True)])
        if c.known
        else pytest.param(c, id=c.name)
        for c in cases
    ]


@pytest.mark.parametrize("case", _params(CASES))
def test_ctr_says_what_containerd_says(
    both: compat.Both, archives: dict[str, Path], case: Case
) -> None:
    ns = f"tasks-{case.name}"
    setup_ns = f"{ns}-elsewhere" if case.name in ELSEWHERE else ns
    try:
        for setup in case.setup:
            _build(both, Step(_expand(setup.args, ns, archives), setup.until), setup_ns)
        pair = both.ctr(*_expand(case.command, ns, archives), ns=ns, masks=case.masks)
        compat.assert_same(pair, case.calls, case.ignoring)
        if case.says:
            assert case.says in pair.ctrd.output, pair.ctrd.output
    finally:
        _clean(both, ns)


def _in_pty(side: compat.Side, ns: str, *args: str) -> compat.Outcome:
    """`ctr ARGS` on a terminal (for `-t`), as a compat outcome (calls compared unordered)."""
    mark = side.proxy.mark()
    argv = [a.replace("{fifo}", str(side.fifo_dir)) for a in args]
    out, status = run_in_pty(
        [require_binary("ctr"), "-a", side.tap, "-n", ns, *argv], b"", prompt=b"\0", timeout=30
    )
    text = re.sub(r"\[\d{4}\]", "[<elapsed>]", out.decode("latin-1"))
    return compat.Outcome(side.name, status, text, side.proxy.calls_since(mark))


@pytest.mark.parametrize(
    ("name", "command", "says"),
    [
        # The exec has exited when ctr's first resize reaches it: containerd refuses that.
        ("exited", ("true",), "cannot resize a stopped container: unknown"),
        ("running", ("sleep", "0.5"), ""),
    ],
)
def test_exec_on_a_terminal_resizes_as_containerd_does(
    both: compat.Both, archives: dict[str, Path], name: str, command: tuple[str, ...], says: str
) -> None:
    ns = f"tasks-exec-tty-{name}"
    try:
        for setup in RUNNING:
            _build(both, Step(_expand(setup.args, ns, archives), setup.until), ns)
        args = ("tasks", "exec", "-t", "--fifo-dir", "{fifo}", "--exec-id", "e1", "t1", *command)
        ctrd, containerd = (_in_pty(side, ns, *args) for side in both.sides)
        compat.assert_same(compat.Pair(args, ns, ctrd, containerd), calls="unordered")
        assert says in ctrd.output, ctrd.output
    finally:
        _clean(both, ns)


EVENT_MASKS = (
    (r"(?m)^\S+ \S+ \+0000 UTC ", ""),  # when each event was published
    (r'"(pid|exited_at)":("[^"]*"|\d+)', r'"\1":<\1>'),
    (r'"bundle":"[^"]*"', '"bundle":<bundle>'),  # each daemon's own layout
    (r'"options":\[[^]]*\]', '"options":<overlay options>'),
    (r"fifo/\d+/", "fifo/<n>/"),
)


def test_task_events_carry_containerds_fields(both: compat.Both, archives: dict[str, Path]) -> None:
    """`ctr events` for a task's life: create, start, exec, exits, delete (an init's with an
    empty `id`), field by field as containerd fills them."""
    ns = "tasks-events"
    for side in both.sides:
        assert _ctr(side, ns, "images", "import", str(archives["archive"])).returncode == 0
    seen = {}
    for side in both.sides:
        events = subprocess.Popen(
            [require_binary("ctr"), "-a", side.tap, "events"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            time.sleep(0.5)  # subscribed (containerd has no log line to wait for)
            run = ("run", "--fifo-dir", "{fifo}", "--cgroup", f"{side.base}/cgroup/{ns}", IMAGE)
            _ctr(side, ns, *run[:1], "--rm", *run[1:], "e1", "sh", "-c", "exit 3")
            _ctr(side, ns, *run[:1], "-d", *run[1:], "e2", "sleep", "1000")
            _ctr(side, ns, "tasks", "exec", "--fifo-dir", "{fifo}", "--exec-id", "x", "e2", "true")
            _ctr(side, ns, "tasks", "pause", "e2")
            _ctr(side, ns, "tasks", "resume", "e2")
            _ctr(side, ns, "tasks", "rm", "-f", "e2")
            time.sleep(0.5)
        finally:
            events.terminate()
            out, _ = events.communicate(timeout=10)
        lines = [line for line in out.splitlines() if f" {ns} /tasks/" in line]
        text = "\n".join(lines).replace(str(side.base), "<base>")
        for pattern, replacement in EVENT_MASKS:
            text = re.sub(pattern, replacement, text)
        seen[side.name] = text
    assert seen["ctrd"] == seen["containerd"]
    assert f'{ns} /tasks/delete {{"container_id":"e1","pid":<pid>,"exit_status":3,' in seen["ctrd"]


def _write_session(tap: str, ns: str, ref: str, data: bytes) -> list[str]:
    """A Content/Write session as ctr's import drives it (STAT declaring the total, WRITE,
    COMMIT at the offset reached); the replies, their times masked."""
    import grpc

    from supervisor.api.containerd.services.content.v1 import content_pb2 as cpb
    from supervisor.api.containerd.services.content.v1 import content_pb2_grpc as cpb_grpc

    requests = [
        cpb.WriteContentRequest(action=cpb.STAT, ref=ref, total=len(data)),
        cpb.WriteContentRequest(action=cpb.WRITE, offset=0, data=data),
        cpb.WriteContentRequest(action=cpb.COMMIT, total=len(data), offset=len(data)),
    ]
    with grpc.insecure_channel(f"unix://{tap}") as channel:
        replies = cpb_grpc.ContentStub(channel).Write(
            iter(requests), metadata=[("containerd-namespace", ns)], timeout=30
        )
        out = []
        for reply in replies:
            for stamp in (reply.started_at, reply.updated_at):
                if stamp.seconds:
                    stamp.seconds, stamp.nanos = 1, 0
            out.append(str(reply).replace("\n", " "))
        return out


def test_content_write_replies_are_containerds_when_the_blob_is_in_another_namespace(
    both: compat.Both,
) -> None:
    """ctr's import writes each blob of an archive in a Write session; the replies (offsets,
    total, times, digest) are containerd's, whether the blob exists in another namespace or
    nowhere yet."""
    data = b"a layer that both namespaces import\n" * 10
    seen = {}
    for side in both.sides:
        seen[side.name] = [
            _write_session(side.tap, "tasks-write-a", "import-blob", data),
            _write_session(side.tap, "tasks-write-b", "import-blob", data),
        ]
    assert seen["ctrd"] == seen["containerd"]


def _task_calls(tap: str, ns: str, cid: str) -> list[str]:
    """Every Tasks call on one container id; each answer's code and words."""
    import grpc

    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc as tpb_grpc

    calls = [
        ("Get", tpb.GetRequest(container_id=cid)),
        ("Start", tpb.StartRequest(container_id=cid)),
        ("Kill", tpb.KillRequest(container_id=cid, signal=9)),
        ("Delete", tpb.DeleteTaskRequest(container_id=cid)),
        ("DeleteProcess", tpb.DeleteProcessRequest(container_id=cid, exec_id="x")),
        ("Pause", tpb.PauseTaskRequest(container_id=cid)),
        ("Resume", tpb.ResumeTaskRequest(container_id=cid)),
        ("ListPids", tpb.ListPidsRequest(container_id=cid)),
        ("ResizePty", tpb.ResizePtyRequest(container_id=cid, width=80, height=24)),
        ("CloseIO", tpb.CloseIORequest(container_id=cid, stdin=True)),
        ("Wait", tpb.WaitRequest(container_id=cid)),
        ("Exec", tpb.ExecProcessRequest(container_id=cid)),  # no exec id
        ("Exec", tpb.ExecProcessRequest(container_id=cid, exec_id="x")),
    ]
    out = []
    with grpc.insecure_channel(f"unix://{tap}") as channel:
        stub = tpb_grpc.TasksStub(channel)
        for method, request in calls:
            try:
                getattr(stub, method)(request, metadata=[("containerd-namespace", ns)], timeout=10)
                out.append(f"{method} OK")
            except grpc.RpcError as e:
                out.append(f"{method} {e.code().name} {e.details()}")
    return out


def test_tasks_calls_without_a_task_answer_as_containerd_does(
    both: compat.Both, archives: dict[str, Path]
) -> None:
    """Through the API, not only ctr (which looks the container up first): a missing container
    is the container store's NotFound, a container without a task is "task x not found"."""
    ns = "tasks-api-no-task"
    for setup in CONTAINER:
        _build(both, Step(_expand(setup.args, ns, archives), setup.until), ns)
    seen = {side.name: (_task_calls(side.tap, ns, "nope"), _task_calls(side.tap, ns, "t1"))
            for side in both.sides}  # fmt: skip
    assert seen["ctrd"] == seen["containerd"]


def _exec_calls(tap: str, ns: str, cid: str) -> list[str]:
    """The Tasks calls that name a process of a running task: one that does not exist, then
    one added but not started (ResizePty and CloseIO take it, Kill refuses it)."""
    import grpc
    from google.protobuf import any_pb2

    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc as tpb_grpc

    spec = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
        value=b'{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}',
    )
    missing = [
        ("Get", tpb.GetRequest(container_id=cid, exec_id="nope")),
        ("Start", tpb.StartRequest(container_id=cid, exec_id="nope")),
        ("Kill", tpb.KillRequest(container_id=cid, exec_id="nope", signal=9)),
        ("DeleteProcess", tpb.DeleteProcessRequest(container_id=cid, exec_id="nope")),
        ("ResizePty", tpb.ResizePtyRequest(container_id=cid, exec_id="nope", width=80)),
        ("CloseIO", tpb.CloseIORequest(container_id=cid, exec_id="nope", stdin=True)),
        ("Wait", tpb.WaitRequest(container_id=cid, exec_id="nope")),
    ]
    added = [
        ("Exec", tpb.ExecProcessRequest(container_id=cid, exec_id="x", spec=spec)),
        ("Exec", tpb.ExecProcessRequest(container_id=cid, exec_id="x", spec=spec)),
        ("ResizePty", tpb.ResizePtyRequest(container_id=cid, exec_id="x", width=80)),
        ("CloseIO", tpb.CloseIORequest(container_id=cid, exec_id="x", stdin=True)),
        ("Kill", tpb.KillRequest(container_id=cid, exec_id="x", signal=9)),
        ("DeleteProcess", tpb.DeleteProcessRequest(container_id=cid, exec_id="x")),
        ("Resume", tpb.ResumeTaskRequest(container_id=cid)),
        ("Start", tpb.StartRequest(container_id=cid)),
    ]
    out = []
    with grpc.insecure_channel(f"unix://{tap}") as channel:
        stub = tpb_grpc.TasksStub(channel)
        for method, request in missing + added:
            try:
                getattr(stub, method)(request, metadata=[("containerd-namespace", ns)], timeout=10)
                out.append(f"{method} OK")
            except grpc.RpcError as e:
                out.append(f"{method} {e.code().name} {e.details()}")
    return out


def test_process_calls_on_a_running_task_answer_as_containerd_does(
    both: compat.Both, archives: dict[str, Path]
) -> None:
    ns = "tasks-api-processes"
    try:
        for setup in RUNNING:
            _build(both, Step(_expand(setup.args, ns, archives), setup.until), ns)
        seen = {side.name: _exec_calls(side.tap, ns, "t1") for side in both.sides}
        assert seen["ctrd"] == seen["containerd"]
    finally:
        _clean(both, ns)
