"""Tasks through the real ctr: run, exit statuses, stdio, exec, pause, kill, delete."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.conftest import Ctrd
from tests.support.registry import PushedImage
from tests.support.tasks import CtrEvents, cgroups_of, logging_runc


def pull(ctrd: Ctrd, image: PushedImage, ns: str = "default") -> str:
    ctrd.ctr("images", "pull", "--plain-http", image.ref, ns=ns)
    return image.ref


def run(ctrd: Ctrd, *args: str, ns: str = "default", check: bool = True, **kw):
    return ctrd.ctr("run", "--fifo-dir", ctrd.fifo_dir(), *args, ns=ns, check=check, **kw)


def test_run_rm_prints_output_and_pid_1(ctrd, busybox2_image):
    ref = pull(ctrd, busybox2_image)
    result = run(ctrd, "--rm", ref, "r1", "sh", "-c", "cat /etc/extra; echo $$")
    assert result.stdout.splitlines()[-1] == "1"
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    time.sleep(0.5)
    # A shim that exits after its task's delete is not mistaken for one that died.
    for recovery in ("shim_buried", "shim_reconnected", "bundle_removed", "journal_unreadable"):
        assert recovery not in ctrd.log()


def test_run_rm_exit_status_is_ctrs(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = run(ctrd, "--rm", ref, "r3", "sh", "-c", "exit 3", check=False)
    assert result.returncode == 3, result.stderr


def test_run_rm_reads_stdin(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = run(ctrd, "--rm", ref, "si1", "cat", input="hello-through-stdin\n")
    assert result.stdout == "hello-through-stdin\n"


def script(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command on a terminal, as `script` gives it one."""
    return subprocess.run(
        ["script", "-qec", shlex.join(command), "/dev/null"],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def ctr_command(ctrd: Ctrd, *args: str, ns: str = "default") -> list[str]:
    return ["ctr", "-a", ctrd.address, "-n", ns, *args]


def test_run_with_a_terminal(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = script(
        ctr_command(
            ctrd, "run", "--fifo-dir", ctrd.fifo_dir(), "-t", "--rm", ref, "t1",
            "sh", "-c", "echo hi-tty; tty; exit 3",
        )
    )  # fmt: skip
    assert result.returncode == 3, result
    assert "hi-tty" in result.stdout
    assert "/dev/pts/0" in result.stdout


def test_detached_task_lifecycle(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "d1", "sleep", "1000")
    [line] = ctrd.ctr("tasks", "ls").stdout.splitlines()[1:]
    task, pid, status = line.split()
    assert (task, status) == ("d1", "RUNNING")
    assert pid in ctrd.ctr("tasks", "ps", "d1").stdout.split()

    out = ctrd.ctr("tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "--exec-id", "x", "d1",
                   "sh", "-c", "echo hi; exit 4", check=False)  # fmt: skip
    assert (out.returncode, out.stdout) == (4, "hi\n")
    tty = script(ctr_command(ctrd, "tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "-t",
                             "--exec-id", "xt", "d1", "sh", "-c", "echo hi-tty"))  # fmt: skip
    assert tty.returncode == 0, tty
    assert "hi-tty" in tty.stdout

    ctrd.ctr("tasks", "pause", "d1")
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "PAUSED"
    ctrd.ctr("tasks", "resume", "d1")
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "RUNNING"
    checkpoint = ctrd.ctr("tasks", "checkpoint", "d1", check=False)
    assert checkpoint.returncode != 0
    assert "checkpoint" in checkpoint.stderr
    assert "not implemented" in checkpoint.stderr  # UNIMPLEMENTED, whether or not CRIU is here
    metrics = ctrd.ctr("tasks", "metrics", "d1").stdout
    assert "memory.usage_in_bytes" in metrics or "memory.current" in metrics, metrics

    ctrd.ctr("tasks", "kill", "d1")  # SIGTERM: pid 1 without a handler ignores it
    time.sleep(0.2)
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "RUNNING"
    ctrd.ctr("tasks", "kill", "-s", "KILL", "d1")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    assert ctrd.ctr("tasks", "kill", "d1", check=False).returncode != 0  # already finished
    ctrd.ctr("tasks", "rm", "d1")
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    ctrd.ctr("containers", "rm", "d1")
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_kill_all_and_force_delete(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "k1", "sh", "-c", "sleep 1000 & sleep 1000")
    ctrd.ctr("tasks", "kill", "-a", "-s", "KILL", "k1")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    ctrd.ctr("tasks", "rm", "k1")
    run(ctrd, "-d", ref, "k2", "sleep", "1000")
    assert ctrd.ctr("tasks", "rm", "k2", check=False).returncode != 0  # running
    ctrd.ctr("tasks", "rm", "-f", "k2")
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_run_options_take_effect(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    shared = short_tmp / "shared"
    shared.mkdir()
    (shared / "in").write_text("from-the-host\n")
    script_ = (
        "echo env=$GREETING; pwd; cat /mnt/in; echo out > /mnt/out;"
        " cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || true;"
        " touch /rootfile 2>/dev/null && echo writable || echo read-only;"
        " ip link 2>/dev/null | grep -c lo: ; ls /dev | grep -c . "
    )
    result = run(
        ctrd, "--rm", "--env", "GREETING=hello", "--cwd", "/tmp",
        "--mount", f"type=bind,src={shared},dst=/mnt,options=rbind:rw",
        "--read-only", "--memory-limit", str(64 << 20), "--cpus", "0.5",
        ref, "opts", "sh", "-c", script_,
    ).stdout.splitlines()  # fmt: skip
    assert result[:3] == ["env=hello", "/tmp", "from-the-host"], result
    assert (shared / "out").read_text() == "out\n"
    assert "read-only" in result
    # The cgroup the container runs in has the limit (found from the host side: the
    # container's own /sys/fs/cgroup view depends on the cgroup namespace).
    host = run(ctrd, "--rm", "--net-host", ref, "nh", "sh", "-c", "cat /proc/net/dev")
    host_ifaces = {line.split(":")[0].strip() for line in host.stdout.splitlines()[2:]}
    with open("/proc/net/dev") as f:
        ours = {line.split(":")[0].strip() for line in f.read().splitlines()[2:]}
    assert host_ifaces == ours
    isolated = run(ctrd, "--rm", ref, "ni", "sh", "-c", "cat /proc/net/dev").stdout
    assert {line.split(":")[0].strip() for line in isolated.splitlines()[2:]} == {"lo"}
    devices = run(ctrd, "--rm", "--privileged", ref, "pr", "ls", "/dev").stdout.split()
    plain = run(ctrd, "--rm", ref, "np", "ls", "/dev").stdout.split()
    assert len(devices) > len(plain)


def test_memory_limit_and_cpus_reach_the_cgroup(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", "--memory-limit", str(64 << 20), "--cpus", "0.5", ref, "lim", "sleep", "1000")
    pid = ctrd.ctr("tasks", "ls").stdout.split()[-2]
    with open(f"/proc/{pid}/cgroup") as f:
        paths = dict(line.strip().split(":", 2)[1:] for line in f)
    memory = next(p for k, p in paths.items() if "memory" in k.split(","))
    cpu = next(p for k, p in paths.items() if "cpu" in k.split(","))
    limit = int(Path(f"/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes").read_text())
    assert limit == 64 << 20
    quota = int(Path(f"/sys/fs/cgroup/cpu{cpu}/cpu.cfs_quota_us").read_text())
    period = int(Path(f"/sys/fs/cgroup/cpu{cpu}/cpu.cfs_period_us").read_text())
    assert quota / period == 0.5
    ctrd.ctr("tasks", "kill", "-s", "KILL", "lim")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    ctrd.ctr("tasks", "rm", "lim")


def test_runtime_option_names_the_runtime(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    bad = run(ctrd, "--rm", "--runc-binary", "no-runc", ref, "rt", "true", check=False)
    assert bad.returncode != 0
    assert "no-runc" in bad.stderr
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []  # --rm removed it
    assert list((ctrd.state / "s").iterdir()) == []  # the shim that could not create is gone
    ok = run(ctrd, "--rm", "--runtime", "io.containerd.runc.v2", ref, "rt2", "true")
    assert ok.returncode == 0


def test_events_show_a_run_in_order_with_one_exit(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    events = CtrEvents(ctrd)
    try:
        run(ctrd, "--rm", ref, "e1", "echo", "hi")
        events.wait_for_topic("/containers/delete")
    finally:
        out = events.stop()
    topics = events.topics()
    tasks = [t for t in topics if t.startswith("/tasks/")]
    assert tasks == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], out
    assert topics.index("/containers/create") < topics.index("/tasks/create")
    assert topics[-1] == "/containers/delete"
    assert "/snapshot/remove" in topics


def test_tty_exec_delivers_its_last_line(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "big", "sleep", "1000")
    for n in range(3):
        out = script(ctr_command(ctrd, "tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "-t",
                                 "--exec-id", f"s{n}", "big", "seq", "1", "1000000"))  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith("1000000"), out.stdout[-200:]
    ctrd.ctr("tasks", "kill", "-s", "KILL", "big")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    ctrd.ctr("tasks", "rm", "big")


def open_fds(pid: int) -> list[str]:
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return fds


def test_a_full_cycle_leaves_nothing_behind(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "--rm", ref, "warm", "true")  # the first run opens what stays open (zygote...)
    assert ctrd.proc is not None
    before = open_fds(ctrd.proc.pid)
    with open("/proc/self/mounts") as f:
        mounts_before = f.read().count(str(ctrd.base))
    for n in range(3):
        run(ctrd, "-d", ref, f"c{n}", "sleep", "1000")
    assert len(shims(ctrd)) == 3
    for n in range(3):
        ctrd.ctr("tasks", "kill", "-s", "KILL", f"c{n}")
    for n in range(3):
        wait_for(lambda n=n: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
        ctrd.ctr("tasks", "rm", "-f", f"c{n}")
        ctrd.ctr("containers", "rm", f"c{n}")
    wait_for(lambda: shims(ctrd) == [])
    # No more fds of any kind than before (a client connection may have closed meanwhile),
    # and exactly as many pipes, once the collector's sweep (which opens directories) is done.
    kinds_before = Counter(fd.split(":")[0] for fd in before)

    def settled() -> bool:
        kinds_after = Counter(fd.split(":")[0] for fd in open_fds(ctrd.proc.pid))
        return kinds_after <= kinds_before and kinds_after["pipe"] == kinds_before["pipe"]

    wait_for(settled, timeout=5)
    with open("/proc/self/mounts") as f:
        assert f.read().count(str(ctrd.base)) == mounts_before
    runc_root = ctrd.state / "runc" / "default"
    assert list(runc_root.iterdir()) == []
    assert list((ctrd.state / "s").iterdir()) == []
    assert not (ctrd.state / "tasks" / "default").exists()


def shims(ctrd: Ctrd) -> list[int]:
    """Pids of the shims serving this daemon (by their command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("shim ") and ctrd.address in cmdline:
            found.append(int(entry))
    return found


def test_log_uris_file_and_binary(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    log = short_tmp / "logs" / "out.log"
    run(
        ctrd,
        "--rm",
        "--log-uri",
        f"file://{log}",
        ref,
        "lf",
        "sh",
        "-c",
        "echo to-file; echo err >&2",
    )
    assert sorted(log.read_text().splitlines()) == ["err", "to-file"]

    # A logging binary gets stdout on fd 3 and stderr on fd 4, and closes fd 5 when ready.
    logger = short_tmp / "logger.sh"
    captured = short_tmp / "captured"
    logger.write_text(
        "#!/bin/sh\n"
        f'exec 5>&-; cat <&3 > "{captured}.out" & cat <&4 > "{captured}.err" &'
        f' echo "$CONTAINER_NAMESPACE/$CONTAINER_ID $1" > "{captured}.env"; wait\n'
    )
    logger.chmod(0o755)
    run(ctrd, "--rm", "--log-uri", f"binary://{logger}?tag", ref, "lb", "sh", "-c",
        "echo out-line; echo err-line >&2")  # fmt: skip
    wait_for(lambda: Path(f"{captured}.out").exists() and Path(f"{captured}.out").read_text())
    wait_for(lambda: Path(f"{captured}.err").read_text() == "err-line\n")
    assert Path(f"{captured}.out").read_text() == "out-line\n"
    assert Path(f"{captured}.env").read_text() == "default/lb tag\n"


def test_exec_as_another_user(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "u1", "sleep", "1000")
    out = ctrd.ctr("tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "--user", "1234",
                   "--exec-id", "u", "u1", "id", "-u")  # fmt: skip
    assert out.stdout == "1234\n"
    ctrd.ctr("tasks", "rm", "-f", "u1")


def test_a_shims_event_stream_resumes_from_a_sequence_number(ctrd, busybox_image):
    from shim import protocol

    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "ev", "sleep", "1000")
    address = (ctrd.state / "tasks" / "default" / "ev" / "address").read_text()
    decoder = protocol.Decoder()
    messages: list[protocol.Message] = []

    def receive(sock: socket.socket, count: int) -> None:
        while len(messages) < count:
            data = sock.recv(65536)
            assert data, "the shim closed the connection"
            messages.extend(protocol.parse(m) for m in decoder.feed(data))

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(address.removeprefix("unix://"))
        sock.sendall(protocol.encode(protocol.Request(1, "events", {"after": 1}).to_wire()))
        receive(sock, 2)  # the answer, then the replay of what followed seq 1
        assert messages[0] == protocol.Response(1, {"last_seq": 2})
        assert isinstance(messages[1], protocol.Event)
        assert (messages[1].seq, messages[1].topic) == (2, "/tasks/start")
        ctrd.ctr("tasks", "kill", "-s", "KILL", "ev")
        receive(sock, 3)  # then live events
        exit_ = messages[2]
        assert isinstance(exit_, protocol.Event)
        assert (exit_.seq, exit_.topic, exit_.event["exit_status"]) == (3, "/tasks/exit", 137)
    # This connection may hear of the exit before the daemon's own does.
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
    ctrd.ctr("tasks", "rm", "ev")


def test_an_oom_kill_is_an_event(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    events = CtrEvents(ctrd)
    try:
        result = run(ctrd, "--rm", "--memory-limit", str(16 << 20), ref, "oom",
                     "tail", "/dev/zero", check=False)  # fmt: skip
        events.wait_for_topic("/containers/delete")
    finally:
        out = events.stop()
    assert result.returncode == 137, result.stderr
    topics = events.topics()
    assert "/tasks/oom" in topics, out
    assert topics.index("/tasks/oom") < topics.index("/tasks/delete")


def test_the_shim_starts_kills_and_deletes_a_runc_container_itself(ctrd, busybox_image, tmp_path):
    """`runc start`, `runc kill` of the init and `runc delete` of a stopped container only touch
    files or send a signal: the shim does them itself, and leaves what runc would (no state, no
    cgroup). A kill of every process is runc's."""
    ref = pull(ctrd, busybox_image)
    runc, log = logging_runc(tmp_path / "bin")
    result = run(ctrd, "--rm", "--runc-binary", str(runc), ref, "own", "sh", "-c", "echo ran")
    assert result.stdout == "ran\n"
    assert log.read_text().split() == ["create"]
    assert not (ctrd.state / "runc" / "default" / "own").exists()
    assert cgroups_of("default", "own") == []

    run(ctrd, "-d", "--runc-binary", str(runc), ref, "own2", "sleep", "1000")
    assert cgroups_of("default", "own2")  # what the delete below must remove
    ctrd.ctr("tasks", "kill", "-s", "KILL", "own2")
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
    ctrd.ctr("tasks", "rm", "own2")
    ctrd.ctr("containers", "rm", "own2")
    assert log.read_text().split() == ["create", "create"]
    assert not (ctrd.state / "runc" / "default" / "own2").exists()
    assert cgroups_of("default", "own2") == []

    run(ctrd, "-d", "--runc-binary", str(runc), ref, "own3", "sleep", "1000")
    ctrd.ctr("tasks", "kill", "--all", "-s", "KILL", "own3")
    wait_for(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout)
    ctrd.ctr("tasks", "rm", "own3")
    ctrd.ctr("containers", "rm", "own3")
    assert log.read_text().split() == ["create", "create", "create", "kill"]


def test_a_poststop_hook_is_left_to_runc_delete(ctrd, busybox_image, tmp_path):
    """What more than removing is asked of a delete is runc's: its poststop hook runs."""
    ref = pull(ctrd, busybox_image)
    runc, log = logging_runc(tmp_path / "bin")
    marker = tmp_path / "poststop-ran"
    ctrd.ctr("containers", "create", ref, "hooked", "true")
    spec = json.loads(ctrd.ctr("containers", "info", "hooked").stdout)["Spec"]
    ctrd.ctr("containers", "rm", "hooked")
    spec["hooks"] = {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {marker}"]}]}
    # With a spec file, ctr takes no image: the root is a directory of busybox's.
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "true").symlink_to("busybox")
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    # ctr run without --rm deletes the task (not the container) once it exited.
    run(ctrd, "--runc-binary", str(runc), "--config", str(spec_file), "hooked")
    assert marker.exists()
    assert log.read_text().split() == ["create", "delete"]  # started by the shim
    ctrd.ctr("containers", "rm", "hooked")
    assert cgroups_of("default", "hooked") == []
