"""What containerd's shim refuses to do to a process in each state, in its words.

containerd's runc shim (`pkg/process`, `init_state.go` and `exec_state.go`) keeps one state
object per process; an operation its state does not allow fails with a plain error, which
reaches clients with the code UNKNOWN (`cannot pause a stopped container: unknown`). Clients
and scripts match those words, so the shim refuses the same operations with the same ones.

`refusal(is_init, status, operation)` is the whole table: the words, or None when the state
allows the operation. Pure, and stdlib only (the shim imports nothing of the daemon).
"""

from __future__ import annotations

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"

_INIT: dict[tuple[str, str], str] = {
    (CREATED, "pause"): "cannot pause task in created state",
    (CREATED, "resume"): "cannot resume task in created state",
    (RUNNING, "resume"): "cannot resume a running process",
    (RUNNING, "start"): "cannot start a running process",
    (RUNNING, "delete"): "cannot delete a running process",
    (PAUSED, "pause"): "cannot pause a paused container",
    (PAUSED, "start"): "cannot start a paused process",
    (PAUSED, "delete"): "cannot delete a paused process",
    (PAUSED, "exec"): "cannot exec in a paused state",
    (STOPPED, "pause"): "cannot pause a stopped container",
    (STOPPED, "resume"): "cannot resume a stopped container",
    (STOPPED, "update"): "cannot update a stopped container",
    (STOPPED, "start"): "cannot start a stopped process",
    (STOPPED, "exec"): "cannot exec in a stopped state",
}

_EXEC: dict[tuple[str, str], str] = {
    (RUNNING, "start"): "cannot start a running process",
    (RUNNING, "delete"): "cannot delete a running process",
    (STOPPED, "start"): "cannot start a stopped process",
    (STOPPED, "resize"): "cannot resize a stopped container",
}


def refusal(is_init: bool, status: str, operation: str) -> str | None:
    """containerd's words for `operation` refused to a process in `status`, or None."""
    return (_INIT if is_init else _EXEC).get((status, operation))
