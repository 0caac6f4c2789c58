"""Shims offer the pages they copy from their zygote to KSM; their containers never do.

The set-up (deploy/setup.sh) turns KSM on; these tests need it on, as CI has it.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_restart import shim_pid, tasks
from tests.integration.test_tasks import pull, run, wait_for

KSM = Path("/sys/kernel/mm/ksm")


def ksm_stat(pid: int) -> dict[str, str]:
    """`ksm_rmap_items 0`, `ksm_mergeable: yes`... as a dict."""
    lines = Path(f"/proc/{pid}/ksm_stat").read_text().splitlines()
    pairs = (line.split(maxsplit=1) for line in lines if " " in line)
    return {key.rstrip(":"): value for key, value in pairs}


def test_shims_pages_are_merged_and_their_containers_are_left_alone(ctrd, busybox_image):
    assert (KSM / "run").read_text().strip() == "1", "KSM is off: run deploy/setup.sh"
    ref = pull(ctrd, busybox_image)
    names = [f"k{n}" for n in range(3)]
    for name in names:
        run(ctrd, "-d", ref, name, "sleep", "1000")
    listed = tasks(ctrd)
    shims = [shim_pid(ctrd, name) for name in names]
    for name, shim in zip(names, shims, strict=True):
        assert ksm_stat(shim)["ksm_mergeable"] == "yes", name
        container = int(listed[name][0])
        assert ksm_stat(container)["ksm_mergeable"] == "no", name  # exec'd: fresh memory
    # The three shims run the same code over the same objects: KSM finds identical copies.
    wait_for(lambda: all(int(ksm_stat(s)["ksm_merging_pages"]) > 100 for s in shims), 90)
    for name in names:
        ctrd.ctr("tasks", "rm", "-f", name)
