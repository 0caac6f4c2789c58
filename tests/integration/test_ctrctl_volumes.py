"""ctrctl's volumes end to end (issue #16 points 2 and 7): named volumes shared and outliving
their containers, anonymous ones (`-v /path`, the image's VOLUME) removed by `run --rm` and
`rm -v` and not by `rm`, `--volumes-from`, `--tmpfs`, inspect's `Mounts`, the `volume`
commands, and bad flags refused with docker's words and nothing made.

One ctrd and one dockerd 20.10 on it for the module (tests.support.dockerd), with the same
images loaded in both: where docker's output is cheap to get, the test asks docker too and
compares (dockerd's volumes live in its own data root, ctrctl's in ctrd; docker's containers
in ctrd's `moby` namespace, ctrctl's in `default`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctl.main import main
from tests.conftest import Ctrd
from tests.support import images
from tests.support.dockerd import Dockerd

pytestmark = pytest.mark.integration

BUSYBOX = "busybox:latest"
VOLIMAGE = "volimage:latest"  # VOLUME /vol, with /vol/seed in the image
SEED = b"seeded by the image\n"
NONE = ("--network", "none")


@dataclass(frozen=True)
class Engines:
    ctrd: Ctrd
    docker: Dockerd

    def ctrctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ctl", "--address", self.ctrd.address, *args],
            capture_output=True, text=True, timeout=60, input=input,
        )  # fmt: skip

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        """ctrctl's main in this process (no interpreter to start: ~0.3 s a call), for the
        commands that print through sys.stdout and sys.stderr and read no stdin."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["--address", self.ctrd.address, *args])
        return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        done = self.call(*args) if args[0] != "run" else self.ctrctl(*args)
        assert done.returncode == 0, f"{args}: {done.stderr}\n{self.ctrd.log()[-3000:]}"
        return done.stdout

    def volumes(self) -> list[str]:
        return self.ok("volume", "ls", "-q").split()


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    daemon = Ctrd(base)
    (base / "docker").mkdir()
    docker = Dockerd(base / "docker", daemon.address)
    try:
        daemon.start()
        docker.start()
        busybox = images.busybox_layer("docker")
        seeded = [images.Dir("vol"), images.File("vol/seed", SEED)]
        built = {
            BUSYBOX: images.build_image([busybox], schema="docker"),
            VOLIMAGE: images.build_image(
                [busybox, seeded], schema="docker", config={"Volumes": {"/vol": {}}}
            ),
        }
        archive = images.docker_archive_of(built, base / "images.tar")
        docker.docker("load", "-i", str(archive))
        engines = Engines(daemon, docker)
        engines.ok("load", "-i", str(archive))
        yield engines
    finally:
        docker.remove_all()
        docker.stop()
        docker.cleanup()
        status = daemon.stop()
        daemon.cleanup()
        log = daemon.log()
        shutil.rmtree(base, ignore_errors=True)
    assert status == 0, log[-4000:]
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def e(engines: Engines) -> Iterator[Engines]:
    """The module's engines, with ctrctl's containers and volumes removed after each test."""
    yield engines
    left = engines.call("ps", "-aq", "--no-trunc").stdout.split()
    if left:
        engines.call("rm", "-f", *left)
    names = engines.volumes()
    if names:
        engines.call("volume", "rm", "-f", *names)


@pytest.fixture
def d(e: Engines) -> Iterator[Engines]:
    """`e`, and dockerd's containers and volumes removed after the test too."""
    yield e
    e.docker.remove_all()
    names = e.docker.docker("volume", "ls", "-q").stdout.split()
    if names:
        e.docker.docker("volume", "rm", "-f", *names)


def test_a_named_volume_is_shared_outlives_its_containers_and_is_not_removed_in_use(e):
    e.ok("run", "-d", "--name", "writer", *NONE, "-v", "shared:/data", BUSYBOX,
         "sh", "-c", "echo from-writer > /data/f; sleep 1000")  # fmt: skip
    wait = "while [ ! -s /d/f ]; do sleep 0.05; done"
    seen = e.ctrctl("run", "--rm", *NONE, "-v", "shared:/d:ro", BUSYBOX, "sh", "-c",
                    f"{wait}; cat /d/f; touch /d/x || echo ro")  # fmt: skip
    assert (seen.returncode, seen.stdout) == (0, "from-writer\nro\n"), seen.stderr
    assert e.volumes() == ["shared"]  # made by the first run, as docker makes it

    refused = e.call("volume", "rm", "shared")
    assert refused.returncode == 1
    assert refused.stderr == "Error response from daemon: remove shared: volume is in use -" \
                             " [writer]\n"  # fmt: skip
    assert e.ok("rm", "-f", "-v", "writer") == "writer\n"  # -v never takes a named volume
    again = e.ctrctl("run", "--rm", *NONE, "--mount", "source=shared,target=/d", BUSYBOX,
                     "cat", "/d/f")  # fmt: skip
    assert again.stdout == "from-writer\n", again.stderr
    assert e.ok("volume", "rm", "shared") == "shared\n"
    assert e.volumes() == []

    opts = "volume-opt=type=tmpfs,volume-opt=device=tmpfs,volume-opt=o=size=1m"
    on_tmpfs = e.ctrctl("run", "--rm", *NONE, "--mount", f"src=tv,dst=/t,{opts},volume-label=k=v",
                        BUSYBOX, "grep", " /t ", "/proc/mounts")  # fmt: skip
    assert on_tmpfs.stdout.startswith("tmpfs /t tmpfs rw,"), on_tmpfs.stderr
    assert "size=1024k" in on_tmpfs.stdout
    [made] = json.loads(e.ok("volume", "inspect", "tv"))  # made by the run, with its options
    assert (made["Labels"], made["Options"]) == (
        {"k": "v"}, {"device": "tmpfs", "o": "size=1m", "type": "tmpfs"},
    )  # fmt: skip


def test_anonymous_volumes_go_with_run_rm_and_rm_v_but_not_with_rm(e):
    ran = e.ctrctl("run", "--rm", *NONE, "-v", "/scratch", "-v", "kept:/k", VOLIMAGE, "sh",
                   "-c", "cat /vol/seed; echo x > /scratch/f; echo y > /k/f")  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, SEED.decode()), ran.stderr  # the image's copied in
    assert e.volumes() == ["kept"]  # /scratch and the image's /vol went with --rm

    e.ok("create", "--name", "plain", *NONE, "-v", "/a", BUSYBOX, "true")
    [anonymous] = set(e.volumes()) - {"kept"}
    assert len(anonymous) == 64
    [shown] = json.loads(e.ok("volume", "inspect", anonymous))
    assert shown["Labels"] == {"ctrd.io/anonymous": "true"}
    e.ok("rm", "plain")
    assert anonymous in e.volumes()  # plain rm leaves it, as docker's

    e.ok("create", "--name", "withv", *NONE, VOLIMAGE)  # the image's VOLUME /vol
    [image_volume] = set(e.volumes()) - {"kept", anonymous}
    e.ok("rm", "-v", "withv")
    assert sorted(e.volumes()) == sorted(["kept", anonymous])
    e.ok("create", "--name", "covered", *NONE, "-v", "kept:/vol", VOLIMAGE)
    assert sorted(e.volumes()) == sorted(["kept", anonymous])  # no volume where one is mounted
    assert image_volume not in e.volumes()

    pruned = e.call("volume", "prune", "-f")  # the unused anonymous one only
    assert pruned.stdout == f"Deleted Volumes:\n{anonymous}\n\nTotal reclaimed space: 0B\n"
    asked = e.ctrctl("volume", "prune", "-a", input="n\n")
    assert asked.stdout.startswith("WARNING! This will remove all local volumes not used by")
    assert asked.stdout.endswith("Total reclaimed space: 0B\n")
    assert e.volumes() == ["kept"]  # used by `covered`
    e.ok("rm", "covered")
    assert e.call("volume", "prune", "-f", "-a").stdout.startswith("Deleted Volumes:\nkept\n")


def test_volumes_from_tmpfs_and_inspect_mounts(e, tmp_path):
    e.ok("run", "-d", "--name", "src", *NONE, "-v", "data1:/data", "-v", "/anon", "-v",
         f"{tmp_path}:/host:ro", "--mount", "type=tmpfs,dst=/t,tmpfs-size=1m", BUSYBOX,
         "sleep", "1000")  # fmt: skip
    both = e.ctrctl("run", "--rm", *NONE, "--volumes-from", "src", BUSYBOX, "sh", "-c",
                    "touch /data/w /anon/w && echo rw; touch /host/w || echo host-ro;"
                    " grep ' /t ' /proc/mounts")  # fmt: skip
    assert both.stdout.splitlines()[:2] == ["rw", "host-ro"], both.stderr
    assert "size=1024k" in both.stdout
    read_only = e.ctrctl("run", "--rm", *NONE, "--volumes-from", "src:ro", BUSYBOX, "sh", "-c",
                         "touch /data/w || echo ro")  # fmt: skip
    assert read_only.stdout == "ro\n", read_only.stderr
    assert len(e.volumes()) == 2  # nothing new: src's volumes, still used by src

    sized = e.ctrctl("run", "--rm", *NONE, "--tmpfs", "/scratch:size=64k,mode=1770",
                     "-v", f"{tmp_path}/made/here:/m", BUSYBOX,
                     "sh", "-c", "grep ' /scratch ' /proc/mounts; stat -c %a /scratch")  # fmt: skip
    assert "size=64k" in sized.stdout, sized.stderr
    assert "noexec" in sized.stdout
    assert sized.stdout.splitlines()[-1] == "1770"
    assert (tmp_path / "made" / "here").is_dir()  # -v makes a missing host directory
    (tmp_path / "c").write_text("conf\n")
    layered = e.ctrctl("run", "--rm", *NONE, "-v", "layered:/srv", "-v", f"{tmp_path}:/srv/conf",
                       BUSYBOX, "cat", "/srv/conf/c")  # fmt: skip
    assert layered.stdout == "conf\n", layered.stderr  # the bind over the volume, as docker's

    [info] = json.loads(e.ok("inspect", "src"))
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    anon = mounts["/anon"]["Name"]
    root = e.ctrd.root / "volumes" / "default"
    assert mounts == {
        "/data": {"Type": "volume", "Name": "data1", "Source": f"{root}/data1/_data",
                  "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True,
                  "Propagation": ""},
        "/anon": {"Type": "volume", "Name": anon, "Source": f"{root}/{anon}/_data",
                  "Destination": "/anon", "Driver": "local", "Mode": "", "RW": True,
                  "Propagation": ""},
        "/host": {"Type": "bind", "Source": str(tmp_path), "Destination": "/host", "Mode": "ro",
                  "RW": False, "Propagation": "rprivate"},
        "/t": {"Type": "tmpfs", "Source": "", "Destination": "/t", "Mode": "", "RW": True,
               "Propagation": ""},
    }  # fmt: skip
    assert info["HostConfig"]["Binds"] == ["data1:/data", f"{tmp_path}:/host:ro"]
    assert info["HostConfig"]["Mounts"] == [
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1 << 20}}
    ]
    df = json.loads(e.ok("system", "df", "--format", "json"))
    [row] = [r for r in df if r["type"] == "Local Volumes"]
    assert (row["total"], row["active"]) == (3, 2)  # `layered` is no longer used


BAD_RUNS = [
    ("-v", "a/b:/x"),
    ("-v", "../x:/y"),
    ("-v", "vol:rel"),
    ("-v", "vol:/"),
    ("-v", "/data:ro"),
    ("-v", "vol:/x:bogus"),
    ("-v", "v1:/x", "-v", "v2:/x"),
    ("-v", "v1:/x", "--tmpfs", "/x"),
    ("--tmpfs", "rel"),
    ("--tmpfs", "/t:foo=bar"),
    ("--mount", "type=tmpfs,dst=/t,tmpfs-size=abc"),
    ("--mount", "type=bind,src=/nonexistent-h2,dst=/x"),
    ("--mount", "type=volume,dst=/x,ro"),
    ("--volumes-from", "nope"),
]


def test_bad_storage_flags_get_dockers_words_and_125_and_make_nothing(d):
    e = d
    e.ok("create", "--name", "src", *NONE, BUSYBOX)
    for flags in [*BAD_RUNS, ("--volumes-from", "src:bogus"), ("-v", "/ok", "-v", "x:/y")]:
        ours = e.call("run", "--rm", *NONE, "-v", "/made-first", *flags, BUSYBOX, "true")
        assert ours.returncode == 125, (flags, ours.stderr)
        assert ours.stderr.startswith("ctrctl: "), ours.stderr
        words = ours.stderr.removeprefix("ctrctl: ").strip()
        if flags[-1] != "x:/y":  # docker's CLI reads `x:` as a Windows drive
            theirs = e.docker.docker("run", "--rm", *NONE, *flags, BUSYBOX, "true", check=False)
            assert theirs.returncode == 125, theirs.stderr
            assert words in theirs.stderr, (flags, theirs.stderr)
    assert e.volumes() == []
    # a failure once the anonymous volumes are made (the daemon refuses the container:
    # its labels are too big) leaves none behind either
    many = [f for i in range(40) for f in ("-v", f"/anon{i}")]
    refused = e.call("create", *NONE, *many, BUSYBOX)
    assert refused.returncode == 125
    assert "label key and value greater than maximum size" in refused.stderr
    assert e.volumes() == []
    assert e.call("ps", "-aq").stdout.split() == ["src"]


def test_volume_commands_print_what_docker_prints(d):
    e, docker = d, d.docker

    def both(*args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
        ours = e.call("volume", *args)
        theirs = docker.docker("volume", *args, check=False)
        return ours, theirs

    for args in (("create", "--label", "a=1", "vol10"),
                 ("create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=1m",
                  "vol9"),
                 ("create", "--name", "vol-x"),
                 ("create", "--name", "a1", "b1"),
                 ("create", "a/b"),
                 ("create", "x"),
                 ("ls",),
                 ("ls", "-q", "-f", "label=a=1"),
                 ("ls", "-f", "name=vol1"),
                 ("ls", "-f", "dangling=true", "-q"),
                 ("inspect", "nope"),
                 ("rm", "vol-x", "nope")):  # fmt: skip
        ours, theirs = both(*args)
        assert (ours.returncode, ours.stdout, ours.stderr) == (
            theirs.returncode, theirs.stdout, theirs.stderr
        ), args  # fmt: skip

    ours, theirs = both("inspect", "vol10", "vol9")
    assert ours.returncode == theirs.returncode == 0
    mine, dockers = json.loads(ours.stdout), json.loads(theirs.stdout)
    for shown in (*mine, *dockers):
        shown["CreatedAt"] = shown["Mountpoint"] = "..."
    assert mine == dockers
    listed = e.ok("volume", "ls", "--format", "json").splitlines()
    rows = docker.docker("volume", "ls", "--format", "{{json .}}").stdout.splitlines()
    assert [{**json.loads(r), "Mountpoint": ""} for r in listed] == [
        {**json.loads(r), "Mountpoint": ""} for r in rows
    ]
    assert listed[1].startswith('{"Driver":"local","Labels":"a=1","Links":"N/A",')


def test_inspect_mounts_and_host_config_match_dockers(d, tmp_path):
    e = d
    flags = ("-v", "/anon", "-v", "auto1:/auto:ro,nocopy", "-v", f"{tmp_path}:/host:ro",
             "--mount", "type=tmpfs,dst=/tt,tmpfs-size=1m,tmpfs-mode=1777",
             "--mount", "src=m1,dst=/m1,volume-nocopy", "--tmpfs", "/t2:size=64k")  # fmt: skip
    e.ok("create", "--name", "shape", *NONE, *flags, BUSYBOX)
    e.docker.docker("create", "--name", "shape", *NONE, *flags, BUSYBOX)
    try:
        [ours] = json.loads(e.ok("inspect", "shape"))
        theirs = e.docker.inspect("shape")

        def masked(mounts: object) -> list[dict[str, object]]:
            assert isinstance(mounts, list)
            out = []
            for m in sorted(mounts, key=lambda m: m["Destination"]):
                if m["Type"] == "volume":
                    m = {**m, "Source": os.path.basename(os.path.dirname(m["Source"]))}
                    if len(m["Name"]) == 64:
                        m["Name"] = m["Source"] = "<anonymous>"
                out.append(m)
            return out

        assert masked(ours["Mounts"]) == masked(theirs["Mounts"])
        host = theirs["HostConfig"]
        assert isinstance(host, dict)
        assert sorted(ours["HostConfig"]["Binds"]) == sorted(host["Binds"])  # docker's: any order
        for key in ("Mounts", "Tmpfs", "VolumesFrom"):
            assert ours["HostConfig"].get(key) == host.get(key), key
    finally:
        e.docker.docker("rm", "-v", "shape", check=False)


def test_completion_lists_the_volumes(e):
    e.ok("volume", "create", "done1")
    assert e.ok("__names", "volumes") == "done1\n"
