"""Shims share the pages they copy: their private memory is offered to the kernel's KSM.

A shim is a fork of the zygote. Running, it writes to pages it shares with the zygote (the
reference counts of the objects it uses, the 3.11 interpreter's inline caches in code objects)
and each page written becomes a private copy: ~2.8 MB per shim. Those copies are the same from
one shim to the next, because every shim runs the same code over the same objects, so the
kernel's same-page merging (KSM) can fold them back into one page that all of them map,
copied again only where a shim writes to it.

KSM merges only memory that opted in. The zygote opts in its private writable mappings before
it forks (its children inherit the mark), and each shim opts in the mappings it made itself
once its container runs. Nothing exec'd from a shim (runc, the containers) ever is: exec
starts from fresh, unmarked memory, so containers never share pages with each other this
way. Whether KSM runs at all is the host's setting (`/sys/kernel/mm/ksm/run`, which ctrd's
set-up turns on); when it does not, the marks cost nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

MADV_MERGEABLE = 12
KSM_RUN = "/sys/kernel/mm/ksm/run"


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def mark_mergeable() -> int:
    """Offer every private writable mapping of this process to KSM; the bytes marked."""
    madvise = _madvise()
    if madvise is None:
        return 0
    marked = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[1] != "rw-p":
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if madvise(start, end - start, MADV_MERGEABLE) == 0:
            marked += end - start
    return marked


def ksm_running() -> bool | None:
    """Whether the host merges pages now (None: this kernel has no KSM)."""
    try:
        with open(KSM_RUN) as f:
            return f.read().strip() == "1"
    except OSError:
        return None
