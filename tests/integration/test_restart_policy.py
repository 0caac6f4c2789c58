"""Restart policies (issue #16 point 3): real containers on a test ctrd, driven by ctrctl.

`--restart always` comes back after its process is killed, with the back-off growing
(100 ms, doubled), and after ctrd is started again (a SIGKILL, a reboot that wiped the state
dir); `on-failure:3` gives up after 3; a user's stop is never undone; `unless-stopped`
stopped by the user stays stopped when ctrd starts, `always` does not (docker's rules).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Ctrd, ns_metadata
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_tasks import pull


def inspect(ctrd: Ctrd, name: str) -> dict[str, Any]:
    shown = ctrctl(ctrd, "inspect", name)
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout)[0])


def pid_of(ctrd: Ctrd, name: str) -> int:
    state = inspect(ctrd, name).get("state", {})
    return int(state["pid"]) if state.get("status") == "running" else 0


def eventually(what: Callable[[], Any], timeout: float = 10.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(every)


def run_d(ctrd: Ctrd, ref: str, name: str, policy: str, *cmd: str) -> None:
    ran = ctrctl(ctrd, "run", "-d", "--name", name, "--network", "none", "--restart", policy,
                 ref, *cmd)  # fmt: skip
    assert ran.returncode == 0, ran.stderr


def log_events(ctrd: Ctrd, event: str, cid: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in ctrd.log().splitlines() if line.startswith("{"))
    return [e for e in lines if e.get("event") == event and e.get("id") == cid]


def test_always_comes_back_after_its_process_is_killed_with_a_growing_back_off(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "back", "always", "sh", "-c", "echo up; sleep 1000")
    first = eventually(lambda: pid_of(ctrd, "back"))
    os.kill(first, signal.SIGKILL)  # a crash: nobody asked ctrd
    second = eventually(lambda: (pid := pid_of(ctrd, "back")) != first and pid)
    assert inspect(ctrd, "back")["RestartCount"] == 1
    assert ctrctl(ctrd, "logs", "back").stdout == "up\nup\n"  # the same log, both runs
    # A task that crashes at once: 100 ms, 200, 400, 800 between its exit and its start.
    run_d(ctrd, ref, "loop", "always", "sh", "-c", "exit 1")
    eventually(lambda: len(log_events(ctrd, "container_restarted", "loop")) >= 4, 15, 0.2)
    scheduled = [e["ms"] for e in log_events(ctrd, "restart_scheduled", "loop")]
    assert scheduled[:5] == [100, 200, 400, 800, 1600]
    exits = [e["exited_at"] for e in log_events(ctrd, "restart_scheduled", "loop")]
    starts = [e["started_at"] for e in log_events(ctrd, "container_restarted", "loop")]
    gaps = [(start - exit_) / 1e6 for exit_, start in zip(exits, starts, strict=False)][:4]
    for gap, wanted in zip(gaps, (100, 200, 400, 800), strict=True):
        assert wanted <= gap < wanted + 1000, gaps  # closely timed: bench/restart_policy.py
    assert inspect(ctrd, "loop")["RestartCount"] >= 4
    listed = ctrctl(ctrd, "ps", "-a", "--filter", "name=loop").stdout
    assert "Restarting (1)" in listed or "Up" in listed, listed
    assert pid_of(ctrd, "back") == second
    for name in ("back", "loop"):
        assert ctrctl(ctrd, "rm", "-f", name).returncode == 0


def test_always_comes_back_when_ctrd_starts_after_a_sigkill_and_after_a_reboot(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "phoenix", "always", "sh", "-c", "echo up; sleep 1000")
    first = eventually(lambda: pid_of(ctrd, "phoenix"))
    assert ctrd.proc is not None
    ctrd.proc.send_signal(signal.SIGKILL)
    ctrd.proc.wait()
    ctrd.proc = None
    os.kill(first, signal.SIGKILL)  # exits while ctrd is down: acted on when it is back
    ctrd.start()
    second = eventually(lambda: (pid := pid_of(ctrd, "phoenix")) != first and pid)
    # A reboot: every process gone, the state dir with them; the root stays.
    ctrd.stop(signal.SIGKILL)
    ctrd.cleanup()
    shutil.rmtree(ctrd.state)
    ctrd.start()
    third = eventually(lambda: (pid := pid_of(ctrd, "phoenix")) not in (second, 0) and pid)
    assert third
    assert ctrctl(ctrd, "logs", "phoenix").stdout == "up\nup\nup\n"
    assert ctrctl(ctrd, "rm", "-f", "phoenix").returncode == 0


def test_on_failure_3_gives_up_after_3_restarts(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "flaky", "on-failure:3", "sh", "-c", "exit 3")
    eventually(lambda: inspect(ctrd, "flaky")["RestartCount"] == 3, timeout=10)

    def gave_up() -> bool:
        shown = inspect(ctrd, "flaky")
        return shown.get("state", {}).get("status") == "exited"

    eventually(gave_up)
    time.sleep(1)  # the next back-off (800 ms) would have passed
    shown = inspect(ctrd, "flaky")
    assert shown["RestartCount"] == 3
    assert shown["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert shown["state"]["exitCode"] == 3
    assert "Exited (3)" in ctrctl(ctrd, "ps", "-a", "--filter", "name=flaky").stdout
    # A clean exit is no failure: no restart at all.
    run_d(ctrd, ref, "clean", "on-failure", "true")
    eventually(lambda: inspect(ctrd, "clean").get("state", {}).get("status") == "exited")
    time.sleep(0.5)
    assert inspect(ctrd, "clean")["RestartCount"] == 0
    for name in ("flaky", "clean"):
        assert ctrctl(ctrd, "rm", "-f", name).returncode == 0


def test_a_users_stop_is_not_undone_and_a_start_gives_the_policy_back(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "kept", "always", "sleep", "1000")
    eventually(lambda: pid_of(ctrd, "kept"))
    assert ctrctl(ctrd, "stop", "-t", "1", "kept").returncode == 0
    time.sleep(1)
    assert pid_of(ctrd, "kept") == 0
    assert "Exited (" in ctrctl(ctrd, "ps", "-a", "--filter", "name=kept").stdout
    assert ctrctl(ctrd, "start", "kept").returncode == 0
    started = eventually(lambda: pid_of(ctrd, "kept"))
    os.kill(started, signal.SIGKILL)
    eventually(lambda: (pid := pid_of(ctrd, "kept")) != started and pid)
    assert ctrctl(ctrd, "kill", "kept").returncode == 0  # SIGKILL: a user's stop too
    time.sleep(1)
    assert pid_of(ctrd, "kept") == 0
    assert ctrctl(ctrd, "rm", "-f", "kept").returncode == 0


def test_unless_stopped_stopped_by_the_user_stays_stopped_when_ctrd_starts(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "polite", "unless-stopped", "sleep", "1000")
    run_d(ctrd, ref, "stubborn", "always", "sleep", "1000")
    run_d(ctrd, ref, "never", "no", "sleep", "1000")
    for name in ("polite", "stubborn", "never"):
        eventually(lambda name=name: pid_of(ctrd, name))
        assert ctrctl(ctrd, "stop", "-t", "1", name).returncode == 0
    ctrd.restart()
    eventually(lambda: pid_of(ctrd, "stubborn"))  # docker starts `always` again, even so
    time.sleep(1)
    assert pid_of(ctrd, "polite") == 0
    assert pid_of(ctrd, "never") == 0
    for name in ("polite", "stubborn", "never"):
        assert ctrctl(ctrd, "rm", "-f", name).returncode == 0


def test_bad_policies_are_refused_with_dockers_words(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    for policy, words in (  # the rest of docker's words: tests/unit/restart
        ("always", "Conflicting options: --restart and --rm"),
        ("sometimes", "invalid restart policy 'sometimes'"),
        ("always:3", "maximum retry count cannot be used with restart policy 'always'"),
    ):
        args = ["run", "--restart", policy, *(["--rm"] if policy == "always" else []), ref, "true"]
        refused = ctrctl(ctrd, *args)
        assert (refused.returncode, refused.stderr) == (125, f"ctrctl: {words}\n"), policy
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    made = ctrctl(ctrd, "create", "--name", "later", "--network", "none", ref, "sleep", "100")
    assert made.returncode == 0, made.stderr
    assert inspect(ctrd, "later")["HostConfig"]["RestartPolicy"]["Name"] == "no"
    updated = ctrctl(ctrd, "update", "--restart", "on-failure:2", "later")
    assert (updated.returncode, updated.stdout) == (0, "later\n"), updated.stderr
    assert inspect(ctrd, "later")["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure", "MaximumRetryCount": 2,
    }  # fmt: skip
    assert ctrctl(ctrd, "update", "--restart", "bad", "later").returncode == 125
    assert ctrctl(ctrd, "rm", "later").returncode == 0


def test_rm_f_removes_a_container_whose_restart_is_pending(ctrd, busybox_image):
    """Between an exit and its restart the daemon deletes the old task and makes the new one:
    `rm -f` calls the restart off and waits for that, never finds a task made under it."""
    ref = pull(ctrd, busybox_image)
    for i in range(3):
        name = f"gone{i}"
        run_d(ctrd, ref, name, "always", "sh", "-c", "sleep 0.2; exit 1")
        eventually(lambda name=name: log_events(ctrd, "container_restarted", name), 10, 0.05)
        time.sleep(0.05 * i)  # at different moments of the next exit and restart
        removed = ctrctl(ctrd, "rm", "-f", name)
        assert removed.returncode == 0, removed.stderr
    time.sleep(0.5)
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []


def test_an_exit_a_client_publishes_restarts_nothing(ctrd, busybox_image):
    from supervisor.api.containerd.events import task_pb2 as task_events
    from supervisor.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc

    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "steady", "always", "sleep", "1000")
    pid = eventually(lambda: pid_of(ctrd, "steady"))
    forged = events_pb2.PublishRequest(topic="/tasks/exit")
    forged.event.Pack(task_events.TaskExit(container_id="steady", id="steady", exit_status=1))
    ctrd.stub(events_pb2_grpc.EventsStub).Publish(forged, metadata=ns_metadata(), timeout=5)
    time.sleep(1)
    shown = inspect(ctrd, "steady")
    assert (shown["RestartCount"], pid_of(ctrd, "steady")) == (0, pid)
    assert ctrctl(ctrd, "rm", "-f", "steady").returncode == 0


def test_update_sets_limits_on_a_running_container_and_its_next_tasks(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run_d(ctrd, ref, "tight", "no", "sleep", "1000")
    eventually(lambda: pid_of(ctrd, "tight"))
    updated = ctrctl(ctrd, "update", "--memory", "64m", "--pids-limit", "50", "tight")
    assert (updated.returncode, updated.stdout) == (0, "tight\n"), updated.stderr
    shown = inspect(ctrd, "tight")
    cgroup = shown["spec"]["linux"]["cgroupsPath"]
    assert shown["spec"]["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    v1 = Path(f"/sys/fs/cgroup/pids{cgroup}/pids.max")  # else the unified hierarchy's
    assert (v1 if v1.exists() else Path(f"/sys/fs/cgroup{cgroup}/pids.max")).read_text() == "50\n"
    refused = ctrctl(ctrd, "update", "tight")
    assert (refused.returncode, refused.stderr) == (
        125, "ctrctl: you must provide one or more flags when using this command\n",
    )  # fmt: skip
    assert ctrctl(ctrd, "rm", "-f", "tight").returncode == 0
