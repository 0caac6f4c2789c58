"""The committed code in supervisor/api is exactly what proto/generate.py produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_committed_generated_code_matches_a_fresh_generation() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        "supervisor/api is stale; run `python3 proto/generate.py` and commit the result\n"
        + result.stdout
        + result.stderr
    )
