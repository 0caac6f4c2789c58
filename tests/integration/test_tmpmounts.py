"""A crash in the middle of a call that mounts under `<root>/tmpmounts` (diff, `ctrctl cp`)
leaves mounts there: the next start unmounts them and removes their directories, and never
deletes anything through a mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

from supervisor.volumes.local import mounted_under


def test_a_start_unmounts_and_removes_what_a_crash_left_in_tmpmounts(ctrd, short_tmp: Path):
    assert ctrd.stop() == 0  # the fixture's daemon made its root; the crash came after
    source = short_tmp / "source"
    (source / "inner").mkdir(parents=True)
    (source / "inner" / "keep").write_text("data")
    tmp = ctrd.root / "tmpmounts"
    view, nested = tmp / "archive-left", tmp / "diff-left" / "lower"
    for point in (view, nested):
        point.mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
    # a bind under the first: unmounting the parent first would leave it hidden, still there
    subprocess.run(["mount", "--bind", str(source), str(view / "inner")], check=True)
    try:
        ctrd.start()

        assert mounted_under(tmp) == []
        assert sorted(p.name for p in tmp.iterdir()) == []
        assert (source / "inner" / "keep").read_text() == "data"  # nothing deleted through
    finally:
        for point in sorted(mounted_under(tmp), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
