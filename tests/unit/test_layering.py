"""Import direction: the shim and the client stay light and independent of the daemon."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_the_shim_imports_nothing_of_the_daemon_nor_grpc():
    modules = loaded_after("import shim")
    assert not {m for m in modules if m.split(".")[0] in {"supervisor", "grpc", "google", "ctl"}}


def test_the_client_starts_without_grpc_or_the_daemon():
    modules = loaded_after("import ctl.main")
    assert "grpc" not in modules
    assert not {m for m in modules if m.startswith("supervisor")}


def test_the_snapshotter_knows_nothing_of_grpc():
    modules = loaded_after("import snapshotter")
    assert not {m for m in modules if m.split(".")[0] in {"grpc", "supervisor"}}


def test_errors_import_no_grpc():
    assert "grpc" not in loaded_after("import supervisor.errors")


CLIENT_MODULES = (
    "ctl.commands", "ctl.client", "ctl.images", "ctl.stats", "ctl.system", "ctl.groups",
    "ctl.completion", "ctl.pull", "ctl.push", "ctl.load", "ctl.save", "ctl.events", "ctl.networks",
)  # fmt: skip
DAEMON_ONLY = ("supervisor.server", "supervisor.services.", "supervisor.runtime",
               "supervisor.metadata", "supervisor.content", "supervisor.diff", "snapshotter",
               "shim", "aiohttp")  # fmt: skip


SHARED_DATA = {"shim", "shim.capnames"}  # the capability names' table, ctl's and the shim's


def test_the_clients_commands_load_none_of_the_daemons_machinery():
    """ctl shares only the API stubs and pure helpers (references, manifests, digests)."""
    modules = loaded_after("; ".join(f"import {m}" for m in CLIENT_MODULES))
    assert set(CLIENT_MODULES) <= modules
    assert not {m for m in modules if m.startswith(DAEMON_ONLY)} - SHARED_DATA
