"""The shim's cores stay light: standard library only, none of its heavy parts, and silent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
IMPORT = "import shim.protocol, shim.journal"

# Parts of the standard library that cost a shim megabytes (measured) or that it must not need.
HEAVY = {
    "asyncio",
    "concurrent",
    "dataclasses",
    "inspect",
    "logging",
    "pathlib",
    "ssl",
    "threading",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )


def test_importing_the_shim_cores_prints_nothing():
    result = run("-c", IMPORT)
    assert (result.stdout, result.stderr) == ("", "")


def test_the_shim_cores_load_only_light_parts_of_the_standard_library():
    # -I -S: without site's .pth hooks, which load modules of their own (certifi, pathlib,
    # threading, ...) that would hide ours from the comparison.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); {IMPORT}; "
        "loaded = sorted(set(sys.modules) - before); import json; print(json.dumps(loaded))"
    )
    loaded = {name.split(".")[0] for name in json.loads(run("-I", "-S", "-c", code).stdout)}
    assert "json" in loaded  # the comparison sees what the cores import
    assert loaded - sys.stdlib_module_names == {"shim"}
    assert not loaded & HEAVY
