"""`ctrctl cp` against a test ctrd with real containers: both ways, running and stopped
containers, directories and files, `-` streams, `-a`, `-L`, docker's errors, and escapes that
must never reach the host (a container's `/escape -> /` and `../../..` symlinks, a tar with
`../` names or a symlink entry to `/`)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import Ctrd
from tests.integration.test_tasks import pull

pytestmark = pytest.mark.integration


def ctrctl(
    ctrd: Ctrd, *args: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
        capture_output=True, timeout=60, input=input,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, (args, done.stderr.decode())
    return done


def sh(ctrd: Ctrd, name: str, script: str) -> str:
    return ctrctl(ctrd, "exec", name, "sh", "-c", script).stdout.decode()


def started(ctrd: Ctrd, ref: str, name: str, *flags: str) -> None:
    ctrctl(ctrd, "run", "-d", "--name", name, *flags, ref, "sleep", "1000")


def test_cp_both_ways_with_a_running_container(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    started(ctrd, ref, "web")
    local = short_tmp / "local"
    (local / "tree" / "sub").mkdir(parents=True)
    (local / "tree" / "sub" / "a").write_text("A\n")
    (local / "tree" / "b").write_text("B\n")
    (local / "file").write_text("F\n")
    # a file into a directory, then under a new name; a directory under a new name, into one
    ctrctl(ctrd, "cp", str(local / "file"), "web:/tmp")
    ctrctl(ctrd, "cp", str(local / "file"), "web:/tmp/renamed")
    ctrctl(ctrd, "cp", str(local / "tree"), "web:/tmp/copy")
    ctrctl(ctrd, "cp", str(local / "tree"), "web:/tmp/copy")
    ctrctl(ctrd, "cp", str(local / "tree") + "/.", "web:/tmp/contents")
    seen = sh(ctrd, "web", "cd /tmp && find . | sort && cat file renamed copy/sub/a copy/tree/b")
    assert seen.split() == [
        ".", "./contents", "./contents/b", "./contents/sub", "./contents/sub/a",
        "./copy", "./copy/b", "./copy/sub", "./copy/sub/a",
        "./copy/tree", "./copy/tree/b", "./copy/tree/sub", "./copy/tree/sub/a",
        "./file", "./renamed", "F", "F", "A", "B",
    ]  # fmt: skip
    # out again: a file to a new name, a directory into an existing one, its contents
    out = short_tmp / "out"
    out.mkdir()
    ctrctl(ctrd, "cp", "web:/tmp/renamed", str(out / "f2"))
    ctrctl(ctrd, "cp", "web:/tmp/copy", str(out))
    ctrctl(ctrd, "cp", "web:/tmp/copy/.", str(out / "flat"))
    assert (out / "f2").read_text() == "F\n"
    assert (out / "copy" / "sub" / "a").read_text() == "A\n"
    assert (out / "flat" / "tree" / "b").read_text() == "B\n"
    # docker's errors
    missing = ctrctl(ctrd, "cp", "web:/nope", str(out), check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        b"Error: No such container:path: web:/nope\n",
    )
    no_container = ctrctl(ctrd, "cp", str(local / "file"), "ghost:/tmp", check=False)
    assert no_container.stderr == b"Error: No such container:path: ghost:/\n"  # docker: the parent
    directory_on_file = ctrctl(ctrd, "cp", str(local / "tree"), "web:/tmp/file", check=False)
    assert directory_on_file.stderr == b"cannot copy directory\n"
    file_as_dir = ctrctl(ctrd, "cp", str(local / "file"), "web:/tmp/none/", check=False)
    assert file_as_dir.stderr == b"no such directory\n"
    no_parent = ctrctl(ctrd, "cp", "web:/tmp/file", str(short_tmp / "x" / "y"), check=False)
    assert no_parent.stderr.decode() == (
        f'invalid output path: directory "{short_tmp}/x" does not exist\n'
    )
    both = ctrctl(ctrd, "cp", "web:/a", "web:/b", check=False)
    assert both.stderr == b"copying between containers is not supported\n"


def test_cp_streams_tar_on_stdout_and_from_stdin(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    started(ctrd, ref, "box")
    sh(ctrd, "box", "mkdir -p /data/d && echo one > /data/d/one && ln -s one /data/d/link")
    out = ctrctl(ctrd, "cp", "box:/data/d", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["d", "d/link", "d/one"]
        assert members["d/link"].issym()
        assert members["d/link"].linkname == "one"
        assert tar.extractfile("d/one").read() == b"one\n"  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("in/new")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"new\n"))
    ctrctl(ctrd, "cp", "-", "box:/data", input=buffer.getvalue())
    assert sh(ctrd, "box", "cat /data/in/new") == "new\n"
    onto_file = ctrctl(ctrd, "cp", "-", "box:/data/d/one", input=buffer.getvalue(), check=False)
    assert onto_file.stderr == b'destination "box:/data/d/one" must be a directory\n'
