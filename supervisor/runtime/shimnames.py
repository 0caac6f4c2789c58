"""Which runtime names a task may be created with, and containerd's words for the others.

A container names its runtime (`io.containerd.runc.v2`, ctr's `--runtime`); containerd starts
the shim binary that name gives (`containerd-shim-<name>-<version>`, looked up on PATH) and
fails Tasks.Create when there is none. ctrd runs every task through its own shim, on runc, so
it takes the runc names (and the legacy v1 runtime's) and any name whose shim is installed,
and refuses the rest with the words containerd's runtime manager would use.
"""

from __future__ import annotations

import os
import shutil

_OURS = frozenset(
    ("io.containerd.runc.v1", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux")
)


def binary_name(runtime: str) -> str:
    """containerd's shim binary for a runtime name ("" for a name it cannot read)."""
    parts = runtime.split(".")
    return f"containerd-shim-{parts[-2]}-{parts[-1]}" if len(parts) >= 2 else ""


def problem(runtime: str) -> str:
    """Why containerd could not start a shim for `runtime` here, in its words; "" if it could."""
    if not runtime or runtime in _OURS:
        return ""
    why = _resolve(runtime)
    return f"failed to start shim: failed to resolve runtime path: {why}" if why else ""


def _resolve(runtime: str) -> str:
    if os.path.isabs(runtime):
        if os.path.exists(runtime):
            return ""
        return f"invalid custom binary path: stat {runtime}: no such file or directory"
    name = binary_name(runtime)
    if not name:
        return (
            f"invalid runtime name {runtime}, correct runtime name should be either format "
            "like `io.containerd.runc.v1` or a full path to the binary"
        )
    if shutil.which(name) is not None:
        return ""
    return f'runtime "{runtime}" binary not installed "{name}": file does not exist'
