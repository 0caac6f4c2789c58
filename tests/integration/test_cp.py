"""`ctrctl cp` against a test ctrd with real containers: both ways, running and stopped
containers, directories and files, `-` streams, `-a`, `-L`, docker's errors, and escapes that
must never reach the host (a container's `/escape -> /` and `../../..` symlinks, a tar with
`../` names or a symlink entry to `/`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

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
    started(ctrd, ref, "frozen", "--read-only")
    frozen = ctrctl(ctrd, "cp", "-", "frozen:/", input=buffer.getvalue(), check=False)
    assert frozen.stderr == b"Error response from daemon: container rootfs is marked read-only\n"
    # a reader that goes away in the middle: the daemon ends the call cleanly (the fixture
    # finds no traceback in its log) and unmounts its view
    sh(ctrd, "box", "dd if=/dev/zero of=/data/big bs=1M count=16 2>/dev/null")
    with subprocess.Popen(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "cp", "box:/data/big", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as reader:  # fmt: skip
        assert reader.stdout is not None
        assert len(reader.stdout.read(4096)) == 4096
        reader.stdout.close()
        assert reader.wait(timeout=30) != 0
    # and one that reads it all: a file larger than a message is sent in many
    whole = ctrctl(ctrd, "cp", "box:/data/big", "-").stdout
    assert len(whole) == 512 + 16 * 1024 * 1024 + 1024  # header, data, end of archive
    assert sh(ctrd, "box", "cat /data/d/one") == "one\n"  # the daemon still answers


def test_cp_with_stopped_containers_sees_their_snapshot_and_bind_mounts(
    ctrd, busybox_image, short_tmp
):
    ref = pull(ctrd, busybox_image)
    shared = short_tmp / "shared"
    shared.mkdir()
    (shared / "on-host").write_text("through the bind\n")
    ctrctl(ctrd, "run", "--name", "done", "-v", f"{shared}:/mnt", "-v", f"{shared}:/ro:ro",
           "-v", "kept:/vol", ref, "sh", "-c",
           "echo made > /made && echo in-volume > /vol/v && ln -s / /escape")  # fmt: skip
    out = short_tmp / "out"
    out.mkdir()
    ctrctl(ctrd, "cp", "done:/made", str(out))
    ctrctl(ctrd, "cp", "done:/mnt/on-host", str(out))
    ctrctl(ctrd, "cp", "done:/vol/v", str(out))  # a named volume (label ctrd.io/volumes)
    assert (out / "v").read_text() == "in-volume\n"
    assert (out / "made").read_text() == "made\n"
    assert (out / "on-host").read_text() == "through the bind\n"
    (out / "back").write_text("back\n")
    ctrctl(ctrd, "cp", str(out / "back"), "done:/mnt/")  # into the bind: the host sees it
    assert (shared / "back").read_text() == "back\n"
    read_only = ctrctl(ctrd, "cp", str(out / "made"), "done:/ro/", check=False)
    assert read_only.stderr == b"Error response from daemon: mounted volume is marked read-only\n"
    assert not (shared / "made").exists()
    escaped = ctrctl(ctrd, "cp", f"done:/escape{shared}/on-host", str(out / "x"), check=False)
    assert (
        escaped.stderr.decode() == f"Error: No such container:path: done:/escape{shared}/on-host\n"
    )
    # a container never started: what cp writes into its snapshot is what it starts with
    ctrctl(ctrd, "create", "--name", "fresh", ref, "sleep", "1000")
    ctrctl(ctrd, "cp", str(out / "back"), "fresh:/etc/")
    ctrctl(ctrd, "start", "fresh")
    assert sh(ctrd, "fresh", "cat /etc/back") == "back\n"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "/archive-" not in mounts  # every view was unmounted
    assert not list((Path(ctrd.root) / "tmpmounts").glob("archive-*"))


def test_cp_a_gives_the_containers_user_and_L_follows_links(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    started(ctrd, ref, "owned", "-u", "1234:1235")
    local = short_tmp / "local"
    local.mkdir()
    (local / "f").write_text("f\n")
    os.chown(local / "f", 4321, 4322)
    os.symlink("f", local / "link")
    ctrctl(ctrd, "cp", str(local / "f"), "owned:/tmp/plain")
    ctrctl(ctrd, "cp", "-a", str(local / "f"), "owned:/tmp/archived")
    ctrctl(ctrd, "cp", str(local / "link"), "owned:/tmp/")
    ctrctl(ctrd, "cp", str(local / "f"), "owned:/tmp/")  # the link's target
    ctrctl(ctrd, "cp", "-L", str(local / "link"), "owned:/tmp/followed")
    seen = sh(ctrd, "owned", "cd /tmp && stat -c '%n %u:%g %F' plain archived link followed")
    assert seen.splitlines() == [
        "plain 4321:4322 regular file",  # docker: the tar's owner, without -a
        "archived 1234:1235 regular file",
        f"link {os.getuid()}:{os.getgid()} symbolic link",  # as the local link is owned
        "followed 4321:4322 regular file",
    ]
    out = short_tmp / "out"
    out.mkdir()
    ctrctl(ctrd, "cp", "owned:/tmp/link", str(out / "as-link"))
    ctrctl(ctrd, "cp", "-L", "owned:/tmp/link", str(out / "as-file"))
    assert os.readlink(out / "as-link") == "f"
    assert (out / "as-file").read_text() == "f\n"
    assert not (out / "as-file").is_symlink()
    assert (out / "as-file").stat().st_uid == os.getuid()  # docker's CLI never chowns locally


def test_cp_never_reads_or_writes_the_host_through_container_symlinks(
    ctrd, busybox_image, short_tmp
):
    ref = pull(ctrd, busybox_image)
    started(ctrd, ref, "esc")
    sh(ctrd, "esc", "ln -s / /escape && mkdir -p /a/b && ln -s ../../.. /a/b/up")
    victim = short_tmp / "victim"
    victim.mkdir()
    (victim / "secret").write_text("host secret\n")
    probe = short_tmp / f"probe-{os.getpid()}"
    probe.write_text("probe\n")
    for source in (f"esc:/escape{victim}/secret", f"esc:/a/b/up/..{victim}/secret"):
        read = ctrctl(ctrd, "cp", source, str(short_tmp / "stolen"), check=False)
        assert read.returncode == 1
        assert read.stderr.decode().startswith("Error: No such container:path: esc:")
        assert not (short_tmp / "stolen").exists()
    for destination in (f"esc:/escape{victim}/", f"esc:/a/b/up{victim}/"):
        wrote = ctrctl(ctrd, "cp", str(probe), destination, check=False)
        assert wrote.returncode == 1, wrote.stderr
    # through the links, inside the container: its own / and /tmp
    ctrctl(ctrd, "cp", str(probe), "esc:/escape")
    ctrctl(ctrd, "cp", str(probe), "esc:/a/b/up/tmp/")
    assert sh(ctrd, "esc", f"cat /{probe.name} /tmp/{probe.name}") == "probe\nprobe\n"
    assert not Path("/tmp", probe.name).exists()
    # tar streams: `../` names refused; a symlink entry to / is followed inside the container
    climbing = _tar(("../../x", b"x\n"))
    refused = ctrctl(ctrd, "cp", "-", "esc:/tmp", input=climbing, check=False)
    assert (refused.returncode, refused.stderr) == (
        1,
        b"Error response from daemon: Error processing tar file(exit status 1):"
        b' "../../x" is outside of "/tmp"\n',
    )
    linked = _tar(("evil", "/"), (f"evil{victim}/pwned", b"pwned\n"))
    ctrctl(ctrd, "cp", "-", "esc:/tmp", input=linked)
    assert sh(ctrd, "esc", f"cat {victim}/pwned") == "pwned\n"
    assert sorted(os.listdir(victim)) == ["secret"]
    assert (victim / "secret").read_text() == "host secret\n"


def _tar(*entries: tuple[str, bytes | str]) -> bytes:
    """A tar of files (bytes) and symlinks (str: the target), in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_cp_says_what_docker_says(ctrd, busybox_image, short_tmp):
    """The same refusals through docker 20.10's CLI and dockerd (on this ctrd) and through
    ctrctl: the same words on stderr and the same exit status."""
    from tests.support.dockerd import running

    ref = pull(ctrd, busybox_image)
    local = short_tmp / "local"
    (local / "dir").mkdir(parents=True)
    (local / "file").write_text("f\n")
    climbing = _tar(("../../x", b"x\n"))
    cases: list[tuple[tuple[str, ...], bytes | None]] = [
        (("cc:/nope", str(local)), None),
        (("ghost:/etc/passwd", str(local)), None),
        ((str(local / "dir"), "cc:/tmp/file"), None),
        ((str(local / "file"), "cc:/tmp/none/"), None),
        ((str(local / "nope"), "cc:/tmp/"), None),
        (("cc:/tmp/file", str(local / "x" / "y")), None),
        (("-", "cc:/tmp/file"), b""),
        (("cc:/a", "cc:/b"), None),
        (("a", "b"), None),
        (("-", "cc:/tmp"), climbing),
        (("-", "ro:/"), _tar(("x", b"x"))),
    ]
    (local / "tree" / "sub").mkdir(parents=True)
    (local / "tree" / "sub" / "a").write_text("a\n")
    os.chmod(local / "tree" / "sub" / "a", 0o640)
    (local / "owned").write_text("o\n")
    os.chown(local / "owned", 4321, 4322)
    os.symlink("owned", local / "link")
    ctrctl(ctrd, "run", "-d", "--name", "cc", ref, "sh", "-c", "echo > /tmp/file; sleep 1000")
    ctrctl(ctrd, "run", "-d", "--name", "ro", "--read-only", ref, "sleep", "1000")
    ours = [ctrctl(ctrd, "cp", *args, input=data, check=False) for args, data in cases]

    def ctrctl_cp(*args: str) -> None:
        ctrctl(ctrd, "cp", *args)

    def ctrctl_sh(script: str) -> str:
        return sh(ctrd, "cc", script)

    our_trees = _copies(ctrctl_cp, ctrctl_sh, local, short_tmp / "ours")
    with running(short_tmp / "docker", ctrd.address) as engine:
        engine.docker("run", "-d", "--network", "none", "--name", "cc", "busybox", "sh", "-c",
                      "echo > /tmp/file; sleep 1000")  # fmt: skip
        engine.docker("run", "-d", "--network", "none", "--name", "ro", "--read-only", "busybox",
                      "sleep", "1000")  # fmt: skip
        theirs = []
        for args, data in cases:
            done = subprocess.run(
                ["/usr/bin/docker", "cp", *args], env=engine.cli_env(), capture_output=True,
                input=data, stdin=None if data is not None else subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
            theirs.append(done)

        def docker_cp(*args: str) -> None:
            engine.docker("cp", *args)

        def docker_sh(script: str) -> str:
            return engine.docker("exec", "cc", "sh", "-c", script).stdout

        their_trees = _copies(docker_cp, docker_sh, local, short_tmp / "theirs")
        engine.remove_all()
    assert our_trees == their_trees
    for (args, _), mine, docker in zip(cases, ours, theirs, strict=True):
        assert (mine.returncode, mine.stderr.decode()) == (
            docker.returncode,
            docker.stderr.decode(),
        ), args


def _copies(
    cp: Callable[..., None], run: Callable[[str], str], local: Path, out: Path
) -> tuple[list[str], list[str]]:
    """docker's forms of `cp` both ways; what they made in the container and locally."""
    run("mkdir -p /tmp/t1 /tmp/t4")
    cp(str(local / "owned"), "cc:/tmp/t1/")
    cp(str(local / "owned"), "cc:/tmp/t1/renamed")
    cp(str(local / "tree"), "cc:/tmp/t2")
    cp(str(local / "tree"), "cc:/tmp/t1")
    cp(str(local / "tree") + "/.", "cc:/tmp/t3")
    cp(str(local / "tree") + "/.", "cc:/tmp/t1")
    cp(str(local / "link"), "cc:/tmp/t1/")
    cp("-L", str(local / "link"), "cc:/tmp/t4")
    cp("-a", str(local / "owned"), "cc:/tmp/t4/archived")
    inside = run("find /tmp/t1 /tmp/t2 /tmp/t3 /tmp/t4 -exec stat -c '%n %u:%g %F %s %a' {} +")
    out.mkdir()
    (out / "c").mkdir()
    cp("cc:/tmp/t1", str(out / "a"))
    cp("cc:/tmp/t1/.", str(out / "b"))
    cp("cc:/tmp/t1", str(out / "c"))
    cp("cc:/tmp/t1/renamed", str(out / "d"))
    cp("-L", "cc:/tmp/t1/link", str(out / "e"))
    cp("cc:/tmp/t1/link", str(out / "f"))
    cp("cc:/tmp/t1/tree/.", str(out / "c"))
    outside = []
    for path in sorted(out.rglob("*")):
        st = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        outside.append(f"{path.relative_to(out)} {st.st_mode:o} {st.st_size} {target}")
    return sorted(inside.splitlines()), outside
