"""Regenerate the Python gRPC bindings for our containerd API protos.

Compiles every ``.proto`` under ``proto/containerd`` (containerd's API) and
``proto/io`` (the cgroups metrics packages ``io.containerd.cgroups.*``) and ``proto/ctrd``
(ctrd's own extensions, package ``ctrd.*``) and ``proto/runtime`` (Kubernetes' CRI,
package ``runtime.v1``) with the
protoc bundled in grpcio-tools (``python -m grpc_tools.protoc``), so the output
only depends on the pinned grpcio-tools version, and writes ``*_pb2.py``,
``*_pb2.pyi`` and ``*_pb2_grpc.py`` into ``supervisor/api/containerd`` and
``supervisor/api/io``.

protoc emits absolute imports such as ``from containerd.types import
mount_pb2``; they are rewritten to ``supervisor.api.containerd...``.
``google.*`` imports are left alone (well-known types come from protobuf,
``google.rpc.status_pb2`` from googleapis-common-protos).  ``*_pb2_grpc.py``
files of protos without services hold nothing but a version check and are
dropped.  An empty ``__init__.py`` is written in every generated package.

Usage::

    python3 proto/generate.py           # regenerate in place
    python3 proto/generate.py --check   # exit 1 if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
API_DIR = REPO_ROOT / "supervisor" / "api"
# Top-level proto package directories; also the only generated subtrees of API_DIR.
GENERATED_TOPS = ("containerd", "ctrd", "io", "runtime")
PYTHON_PACKAGE = "supervisor.api"

_TOPS = "|".join(GENERATED_TOPS)
# `from containerd.x import y` / `import containerd.x` at the start of a line.
_IMPORT_RE = re.compile(rf"^(\s*)(from|import) ({_TOPS})\.", re.MULTILINE)
# Module name handed to the protobuf builder; it becomes the classes' __module__.
_MODULE_NAME_RE = re.compile(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({_TOPS})\.)")


def _grpc_tools_include() -> Path:
    """Directory holding google/protobuf/*.proto shipped with grpcio-tools."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("grpcio-tools is not installed")
    include = Path(spec.origin).parent / "_proto"
    if not (include / "google" / "protobuf" / "any.proto").is_file():
        raise SystemExit(f"grpc_tools include dir lacks well-known protos: {include}")
    return include


def _googleapis_include() -> Path:
    """Directory holding google/rpc/status.proto (googleapis-common-protos)."""
    spec = importlib.util.find_spec("google.rpc")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        status = Path(location) / "status.proto"
        if status.is_file():
            return status.parent.parent.parent
    raise SystemExit("google/rpc/status.proto not found; install googleapis-common-protos")


def proto_files() -> list[str]:
    """Proto files to compile, relative to PROTO_ROOT, in a stable order."""
    return sorted(
        path.relative_to(PROTO_ROOT).as_posix()
        for top in GENERATED_TOPS
        for path in (PROTO_ROOT / top).rglob("*.proto")
    )


def _run_protoc(out_dir: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{_grpc_tools_include()}",
        f"-I{_googleapis_include()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *proto_files(),
    ]
    result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")


def _rewrite(text: str) -> str:
    text = _IMPORT_RE.sub(rf"\1\2 {PYTHON_PACKAGE}.\3.", text)
    return _MODULE_NAME_RE.sub(rf"\g<1>{PYTHON_PACKAGE}.\2", text)


def _postprocess(out_dir: Path) -> None:
    """Fix imports, drop service-less grpc modules, add __init__.py files."""
    tops = [out_dir / name for name in GENERATED_TOPS]
    for path in sorted(p for top in tops for p in top.rglob("*_pb2_grpc.py")):
        if "Stub:" not in path.read_text(encoding="utf-8"):
            path.unlink()
    for path in sorted(p for top in tops for p in [*top.rglob("*.py"), *top.rglob("*.pyi")]):
        original = path.read_text(encoding="utf-8")
        rewritten = _rewrite(original)
        if rewritten != original:
            path.write_text(rewritten, encoding="utf-8")
    packages = {out_dir, *tops, *(p for top in tops for p in top.rglob("*") if p.is_dir())}
    for package in sorted(packages):
        (package / "__init__.py").write_text("", encoding="utf-8")


def generate(out_dir: Path) -> None:
    """Generate the complete supervisor/api tree into out_dir (must be empty)."""
    _run_protoc(out_dir)
    _postprocess(out_dir)


def _tree(root: Path) -> set[str]:
    """Generated-file paths under root, relative to it (caches ignored)."""
    if not root.is_dir():
        return set()
    files = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    # Only the top-level __init__.py and the generated subtrees are ours.
    return {
        f
        for f in files
        if f == "__init__.py" or any(f.startswith(f"{top}/") for top in GENERATED_TOPS)
    }


def differences(fresh: Path, committed: Path) -> list[str]:
    """Relative paths that are missing, extra or different in committed."""
    fresh_files, committed_files = _tree(fresh), _tree(committed)
    changed = [
        name
        for name in fresh_files & committed_files
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]
    return sorted({*changed, *(fresh_files ^ committed_files)})


def _install(fresh: Path) -> None:
    API_DIR.mkdir(parents=True, exist_ok=True)
    for top in GENERATED_TOPS:
        shutil.rmtree(API_DIR / top, ignore_errors=True)
        shutil.copytree(fresh / top, API_DIR / top)
    shutil.copyfile(fresh / "__init__.py", API_DIR / "__init__.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 listing files that differ from a fresh generation",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ctrd-protogen-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            stale = differences(fresh, API_DIR)
            if stale:
                print("generated code is out of date; run `python3 proto/generate.py`:")
                for name in stale:
                    print(f"  supervisor/api/{name}")
                return 1
            print("generated code is up to date")
            return 0
        _install(fresh)
    print(f"generated {len(proto_files())} protos into {API_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
