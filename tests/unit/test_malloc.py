"""The daemon's malloc thresholds: large blocks freed and allocated again reuse the heap."""

from __future__ import annotations

import subprocess
import sys

CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from supervisor.main import tune_malloc
    assert tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # blocks of an upload's sizes, allocated and freed as gRPC does
    a = b"x" * (1 << 20)
    b = b"y" * (3 << 20)
    del a
    c = b"z" * (2 << 20)
    del b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_tuned_malloc_reuses_freed_megabytes_instead_of_faulting_in_new_pages():
    # 200 rounds of 6 MiB are 300,000 pages when every block is mapped afresh. Whether glibc's
    # defaults do that depends on the heap's state when the churn starts (its mmap threshold
    # moves with the first frees): ~300,000 faults after Debian's site imports, ~6,000 in a
    # bare venv. Tuned, it never does.
    tuned = page_faults("tuned")
    assert tuned < 10_000
    assert tuned <= page_faults("default")
