"""A CRI container's main-process stdio, as attach needs it: FIFOs made before its task.

`stdio(base, log_uri, stdin, tty)` makes the directory `base` (one per container, under the
daemon's state: `directory(state, id)`) and in it
- `stdout` and `stderr`: FIFOs the shim copies the container's output to besides its log (the
  log URI's `tee=`, with `tee-drop=1`: the shim never waits for them; what nobody reads is
  dropped once a FIFO is full). With a terminal there is only `stdout`;
- `stdin` when the container takes input: the task's stdin, held open by the shim itself
  (`stdin_hold`), so attach clients may come and go; only CloseIO ends it (`stdin_once`).
It answers the task's stdio. A container without a log (`log_uri` "") gets one to /dev/null,
so that its output still reaches attached clients.

`remove(base)` removes the directory, once the task is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

STDOUT, STDERR, STDIN = "stdout", "stderr", "stdin"
NO_LOG = "ctrd-log:///dev/null?format=cri"


def directory(state: Path, container_id: str) -> Path:
    return state / "cri" / "io" / container_id


def _fifo(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path, 0o600)
    return str(path)


def stdio(base: Path, log_uri: str, stdin: bool, tty: bool) -> dict[str, Any]:
    os.makedirs(base, 0o700, exist_ok=True)
    log_uri = log_uri or NO_LOG
    joiner = "&" if "?" in log_uri else "?"
    out = err = f"{log_uri}{joiner}tee={_fifo(base / STDOUT)}&tee-drop=1"
    if not tty:
        err = f"{log_uri}{joiner}tee={_fifo(base / STDERR)}&tee-drop=1"
    return {
        "stdin": _fifo(base / STDIN) if stdin else "",
        "stdout": out,
        "stderr": err,
        "terminal": tty,
        "stdin_hold": stdin,
    }


def remove(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
