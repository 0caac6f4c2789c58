"""`ctrctl run` merges an image's config with the command line as Docker Engine 20.10 does.

Each rule has an image built for it (tests.support.images, from busybox-static) and runs the
same image and arguments through the real dockerd 20.10 (`docker run --rm --network none`) and
through `ctrctl run --rm`, both on one ctrd for the module: the exit codes and outputs must be
equal, and equal to what the case expects, so the expectation is proven on docker itself.
The rules: Entrypoint and Cmd (an Entrypoint of `[""]` included), `--entrypoint` with and
without a command and empty, an image with neither (docker's "No command specified", 125),
WorkingDir (made when missing, cleaned, relative ones refused), User (name, uid, uid:gid,
name:group, names missing from /etc/passwd and /etc/group), Env (given first, the image's
after, default PATH, bare keys unset), the hostname, and stopping (StopSignal,
`--stop-signal`, `--stop-timeout`; `kill` sends SIGKILL).

The dockerd and the ctrd are started once for the module (tests.support.dockerd); dockerd's
containers live in ctrd's `moby` namespace, ctrctl's in `default`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Ctrd
from tests.support import images
from tests.support.dockerd import Dockerd

pytestmark = pytest.mark.integration

NONE = ("--network", "none")
MOTD = images.MOTD.decode()
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNSET = "RUNCFG_FOO"  # an image variable that neither client has in its own environment
# The users image: app (1000) is in `staff` too, root in `wheel`.
PASSWD = images.PASSWD + b"www:x:33:33:www:/var/www:/bin/false\n"
GROUP = images.GROUP + b"www:x:33:\nstaff:x:50:www,app\nwheel:x:10:root\n"
USERS_LAYER = [
    images.Dir("etc"),
    images.File("etc/passwd", PASSWD),
    images.File("etc/group", GROUP),
]
LOOP = "echo ready; while true; do sleep 0.1; done"
# Says which signal stopped it: USR1 exits 7, TERM exits 8.
TELLER = f'trap "echo got USR1; exit 7" USR1; trap "echo got TERM; exit 8" TERM; {LOOP}'
STUBBORN = f'trap "" TERM USR1; {LOOP}'  # ignores its stop signals

# name -> (config over build_image's {"Env": [PATH], "Cmd": ["sh"]}, extra layer)
IMAGES: dict[str, tuple[dict[str, Any], list[images.Entry]]] = {
    "ep-empty": ({"Entrypoint": [""], "Cmd": ["echo", "from-cmd"]}, []),
    "ep-empty-alone": ({"Entrypoint": [""], "Cmd": None}, []),
    "ep-cmd": ({"Entrypoint": ["echo", "ep"], "Cmd": ["cmd"]}, []),
    "neither": ({"Cmd": None}, []),
    "workdir": ({"WorkingDir": "/srv/app", "Cmd": ["sh", "-c", "pwd; stat -c '%a %u %g' ."]}, []),
    "workdir-relative": ({"WorkingDir": "srv", "Cmd": ["sh", "-c", "pwd"]}, []),
    "users": ({"Cmd": ["id"]}, USERS_LAYER),
    "user-app": ({"Cmd": ["id"], "User": "app"}, USERS_LAYER),
    "user-missing": ({"Cmd": ["id"], "User": "xyz"}, USERS_LAYER),
    "env": ({"Env": [f"{UNSET}=image", "BAR=image", "PATH=/bin:/usr/bin"], "Cmd": ["env"]}, []),
    "env-no-path": ({"Env": [f"{UNSET}=image"], "Cmd": ["env"]}, []),
    "stop-usr1": ({"StopSignal": "SIGUSR1", "Cmd": ["sh", "-c", TELLER]}, []),
    "stubborn": ({"StopSignal": "SIGUSR1", "Cmd": ["sh", "-c", STUBBORN]}, []),
}  # fmt: skip


@dataclass(frozen=True)
class Engines:
    ctrd: Ctrd
    docker: Dockerd

    def ctrctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != UNSET}
        return subprocess.run(
            [sys.executable, "-m", "ctl", "--address", self.ctrd.address, *args],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    """One ctrd and one dockerd on it for the module, with every test image loaded in both."""
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    daemon = Ctrd(base)
    (base / "docker").mkdir()
    docker = Dockerd(base / "docker", daemon.address)
    try:
        daemon.start()
        docker.start()
        built = {
            f"{name}:latest": images.build_image(
                [images.busybox_layer("docker"), *([extra] if extra else [])],
                schema="docker", config=config,
            )
            for name, (config, extra) in IMAGES.items()
        }  # fmt: skip
        archive = images.docker_archive_of(built, base / "images.tar")
        docker.docker("load", "-i", str(archive))
        engines = Engines(daemon, docker)
        loaded = engines.ctrctl("load", "-i", str(archive), timeout=120)
        assert loaded.returncode == 0, loaded.stderr
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


def normalized(output: str) -> str:
    """Output with the container's own hostname (12 hex digits of its id) made constant."""
    return re.sub(r"HOSTNAME=[0-9a-f]{12}\n", "HOSTNAME=<id>\n", output.replace("\r\n", "\n"))


@dataclass(frozen=True)
class Case:
    id: str
    image: str
    flags: Sequence[str] = ()
    args: Sequence[str] = ()
    status: int = 0
    stdout: str = ""
    error: str = ""  # words both clients print on stderr


def refused(id: str, image: str, flags: Sequence[str], args: Sequence[str], error: str) -> Case:
    return Case(id, image, flags, args, 125, "", error)


NO_COMMAND = "No command specified"
ROOT = "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n"
APP = "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
CASES = [
    # Entrypoint and Cmd
    Case("image-empty-entrypoint-with-args", "ep-empty", (), ("cat", "/etc/motd"), 0, MOTD),
    Case("image-empty-entrypoint-runs-cmd", "ep-empty", stdout="from-cmd\n"),
    Case("entrypoint-over-an-empty-one", "ep-empty", ("--entrypoint", "echo"), stdout="\n"),
    Case("entrypoint-and-args-over-an-empty-one", "ep-empty", ("--entrypoint", "echo"), ("a",),
         stdout="a\n"),
    refused("image-empty-entrypoint-alone", "ep-empty-alone", (), (), NO_COMMAND),
    Case("entrypoint-then-cmd", "ep-cmd", stdout="ep cmd\n"),
    Case("args-replace-cmd", "ep-cmd", (), ("x", "y"), stdout="ep x y\n"),
    Case("entrypoint-flag-drops-the-cmd", "ep-cmd", ("--entrypoint", "echo"), stdout="\n"),
    Case("entrypoint-flag-with-args", "ep-cmd", ("--entrypoint", "echo"), ("z",), stdout="z\n"),
    refused("empty-entrypoint-flag-alone", "ep-cmd", ("--entrypoint", ""), (), NO_COMMAND),
    Case("empty-entrypoint-flag-with-args", "ep-cmd", ("--entrypoint", ""), ("echo", "q"),
         stdout="q\n"),
    refused("neither", "neither", (), (), NO_COMMAND),
    Case("neither-with-args", "neither", (), ("echo", "ok"), stdout="ok\n"),
    # WorkingDir: made when missing (root's, 755), cleaned; relative ones refused
    Case("image-workdir-made", "workdir", stdout="/srv/app\n755 0 0\n"),
    Case("workdir-flag-made", "workdir", ("-w", "/tmp/new/dir"), stdout="/tmp/new/dir\n755 0 0\n"),
    Case("workdir-made-by-root-for-a-user", "workdir", ("-u", "1000", "-w", "/x/y"),
         stdout="/x/y\n755 0 0\n"),
    Case("workdir-cleaned", "workdir", ("-w", "//a/./b/../c/"), stdout="/a/c\n755 0 0\n"),
    refused("relative-workdir-flag", "workdir", ("-w", "rel"), (),
            "the working directory 'rel' is invalid, it needs to be an absolute path"),
    refused("relative-image-workdir", "workdir-relative", (), (), "Cwd must be an absolute path"),
    # User
    Case("root-with-its-groups", "users", stdout=ROOT),
    Case("user-name", "users", ("-u", "app"), stdout=APP),
    Case("user-uid-with-an-entry", "users", ("-u", "1000"), stdout=APP),
    Case("user-uid-without-an-entry", "users", ("-u", "4242"),
         stdout="uid=4242 gid=0(root) groups=0(root)\n"),
    Case("uid-gid-no-supplementary-groups", "users", ("-u", "1000:1000"),
         stdout="uid=1000(app) gid=1000(app) groups=1000(app)\n"),
    Case("name-group", "users", ("-u", "app:staff"),
         stdout="uid=1000(app) gid=50(staff) groups=50(staff)\n"),
    Case("uid-gid-without-entries", "users", ("-u", "4242:4343"),
         stdout="uid=4242 gid=4343 groups=4343\n"),
    Case("user-home", "users", ("-u", "app"), ("sh", "-c", "echo $HOME"), stdout="/home/app\n"),
    refused("user-missing", "users", ("-u", "xyz"), (),
            "unable to find user xyz: no matching entries in passwd file"),
    refused("group-missing", "users", ("-u", "app:nogroup"), (),
            "unable to find group nogroup: no matching entries in group file"),
    Case("image-user", "user-app", stdout=APP),
    Case("user-flag-over-the-images", "user-app", ("-u", "root"), stdout=ROOT),
    refused("image-user-missing", "user-missing", (), (),
            "unable to find user xyz: no matching entries in passwd file"),
    # Env
    Case("image-env-after-the-defaults", "env",
         stdout=f"PATH=/bin:/usr/bin\nHOSTNAME=<id>\n{UNSET}=image\nBAR=image\nHOME=/root\n"),
    Case("given-env-first-then-the-images", "env", ("-e", "BAR=user", "-e", "NEW=1"),
         stdout=f"PATH=/bin:/usr/bin\nHOSTNAME=<id>\nBAR=user\nNEW=1\n{UNSET}=image\nHOME=/root\n"),
    Case("bare-unset-key-unsets-the-images", "env", ("-e", UNSET),
         stdout="PATH=/bin:/usr/bin\nHOSTNAME=<id>\nBAR=image\nHOME=/root\n"),
    Case("repeated-key-last-wins", "env", ("-e", "A=1", "-e", "A=2"),
         stdout=f"PATH=/bin:/usr/bin\nHOSTNAME=<id>\nA=2\n{UNSET}=image\nBAR=image\nHOME=/root\n"),
    Case("image-env-without-path-gets-the-default", "env-no-path",
         stdout=f"{DEFAULT_PATH}\nHOSTNAME=<id>\n{UNSET}=image\nHOME=/root\n"),
    Case("tty-term-among-the-defaults", "env-no-path", ("-t",),
         stdout=f"{DEFAULT_PATH}\nHOSTNAME=<id>\nTERM=xterm\n{UNSET}=image\nHOME=/root\n"),
]  # fmt: skip


def _same_lines_reordered(got: str, wanted: str) -> bool:
    return got != wanted and sorted(got.splitlines()) == sorted(wanted.splitlines())


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_ctrctl_run_merges_as_docker_run(engines, case):
    def docker_run() -> subprocess.CompletedProcess[str]:
        return engines.docker.docker(
            "run", "--rm", *NONE, *case.flags, case.image, *case.args, check=False
        )

    # Docker itself sometimes swaps two `-e` variables: 2 to 5 runs in 30 here, already in
    # the container's Config.Env (docker inspect), so before any spec reaches ctrd. The order
    # it gives most of the time, which its merge code documents, is the rule, and docker is
    # asked again until it gives it (a few swaps in a row happen once in 10^4 or so).
    docker = docker_run()
    for _ in range(5):
        if not _same_lines_reordered(normalized(docker.stdout), case.stdout):
            break
        docker = docker_run()
    ours = engines.ctrctl("run", "--rm", *case.flags, case.image, *case.args)
    theirs = (docker.returncode, normalized(docker.stdout))
    assert theirs == (case.status, case.stdout), f"docker: {docker.stderr}"
    assert (ours.returncode, normalized(ours.stdout)) == theirs, ours.stderr
    assert case.error in docker.stderr
    assert case.error in ours.stderr
    # Nothing is left behind in either, refused or not (--rm).
    assert engines.ctrctl("ps", "-aq").stdout == ""
    assert engines.docker.docker("ps", "-aq").stdout == ""


# --- detached: hostname, stop signal, stop timeout, kill ----------------------------------


class Detached:
    """A client's detached containers: run, logs, stop, kill, wait (the exit code), remove."""

    def __init__(self, engines: Engines, name: str) -> None:
        self.engines, self.name = engines, name

    def __call__(self, *args: str) -> str:
        if self.name == "docker":
            return self.engines.docker.docker(*args).stdout
        done = self.engines.ctrctl(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def run(self, flags: Sequence[str], image: str, args: Sequence[str] = ()) -> str:
        network = NONE if self.name == "docker" else ()
        return self("run", "-d", *network, *flags, image, *args).strip()

    def logs(self, cid: str) -> str:
        return self("logs", cid)

    def stop(self, cid: str, *flags: str) -> None:
        self("stop", *flags, cid)

    def kill(self, cid: str) -> None:
        self("kill", cid)

    def wait(self, cid: str) -> int:
        return int(self("wait", cid))

    def remove(self, cid: str) -> None:
        self("rm", "-f", cid)


@pytest.fixture(params=["docker", "ctrctl"])
def client(request: pytest.FixtureRequest, engines: Engines) -> Detached:
    return Detached(engines, request.param)


def _ready(client: Detached, cid: str) -> None:
    deadline = time.monotonic() + 20
    while "ready" not in client.logs(cid):
        assert time.monotonic() < deadline, "the container did not start"
        time.sleep(0.05)


def _stopped(client: Detached, cid: str, *flags: str) -> tuple[str, int, float]:
    """Stop `cid` once it is ready: (its output, its exit code, the seconds stop took)."""
    _ready(client, cid)
    started = time.monotonic()
    client.stop(cid, *flags)
    took = time.monotonic() - started
    result = client.logs(cid), client.wait(cid), took
    client.remove(cid)
    return result


def test_the_hostname_is_the_ids_first_12_digits(client):
    cid = client.run([], "users", ["sh", "-c", "hostname; echo $HOSTNAME; echo ready"])
    _ready(client, cid)
    assert client.logs(cid) == f"{cid[:12]}\n{cid[:12]}\nready\n"
    client.remove(cid)


def test_stop_sends_the_images_stop_signal(client):
    assert _stopped(client, client.run([], "stop-usr1"))[:2] == ("ready\ngot USR1\n", 7)


def test_stop_signal_flag_overrides_the_images(client):
    cid = client.run(["--stop-signal", "TERM"], "stop-usr1")
    assert _stopped(client, cid)[:2] == ("ready\ngot TERM\n", 8)


def test_stop_timeout_flag_sets_the_wait_before_sigkill(client):
    output, status, took = _stopped(client, client.run(["--stop-timeout", "1"], "stubborn"))
    assert (output, status) == ("ready\n", 137)
    assert 0.9 < took < 5


def test_stop_time_flag_overrides_the_containers_timeout(client):
    cid = client.run(["--stop-timeout", "30"], "stubborn")
    output, status, took = _stopped(client, cid, "-t", "1")
    assert (output, status) == ("ready\n", 137)
    assert 0.9 < took < 5


def test_kill_sends_sigkill_not_the_stop_signal(client):
    cid = client.run([], "stop-usr1")
    _ready(client, cid)
    client.kill(cid)
    status = client.wait(cid)
    assert (client.logs(cid), status) == ("ready\n", 137)
    client.remove(cid)


def test_a_bad_stop_signal_is_refused_before_anything_runs(engines):
    flags = ("--stop-signal", "BOGUS", "users", "echo", "ran")
    docker = engines.docker.docker("run", "--rm", *NONE, *flags, check=False)
    ours = engines.ctrctl("run", "--rm", *flags)
    assert (docker.returncode, docker.stdout) == (125, "")
    assert (ours.returncode, ours.stdout) == (125, "")
    assert "Invalid signal: BOGUS" in docker.stderr
    assert "Invalid signal: BOGUS" in ours.stderr
    assert engines.ctrctl("ps", "-aq").stdout == ""


def test_a_ctrctl_that_may_not_mount_still_reads_the_images_users_from_its_layers(engines):
    """Without CAP_SYS_ADMIN ctrctl cannot mount the image, and needs not: it reads /etc/passwd
    and /etc/group from the snapshot's layer directories as overlayfs would merge them, so
    users and groups come out as docker's."""
    unprivileged = ("setpriv", "--bounding-set=-sys_admin", "--", sys.executable, "-m", "ctl")

    def ctrctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*unprivileged, "--address", engines.ctrd.address, "run", "--rm", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    plain = ctrctl("users")
    assert (plain.returncode, plain.stdout) == (0, ROOT), plain.stderr
    as_app = ctrctl("-u", "app", "users")
    assert (as_app.returncode, as_app.stdout) == (0, APP), as_app.stderr
    assert engines.ctrctl("ps", "-aq").stdout == ""


HOST_CONFIG_NETWORK = ("NetworkMode", "PortBindings", "PublishAllPorts", "Dns", "DnsOptions",
                       "DnsSearch", "ExtraHosts")  # fmt: skip
PORTS = ("-p", "8080:80", "-p", "127.0.0.1::81/udp", "-p", "0.0.0.0:9000-9001:90-91",
         "-p", "7000-7010:70", "-p", "82")  # fmt: skip


DNS_FLAGS = ("--dns", "1.1.1.1", "--dns-search", "ex.com", "--dns-option", "ndots:2",
             "--add-host", "a:1.2.3.4")  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        pytest.param((), "default", id="no-network-flag"),
        pytest.param(("--net", "default"), "default", id="default"),
        pytest.param(("--network", "bridge"), "bridge", id="bridge"),
        pytest.param(("--network", "none", *PORTS), "none", id="ports-kept-under-none"),
        pytest.param(("--network", "host", "-P", "-p", "8081:80"), "host", id="host-P"),
        pytest.param(("--network", "none", *DNS_FLAGS), "none", id="dns-and-hosts"),
        pytest.param(("--network", "container:hc-first"), "container:<first>", id="container"),
    ],
)
def test_inspect_shows_host_configs_networking_as_docker_does(engines, flags, mode):
    """`inspect`'s HostConfig keeps the networking flags as given, as docker's does (checked on
    the real dockerd with the same flags): the mode (`default` when none is given, the
    container's id for `container:`), every -p (also under none and host, which publish
    nothing), -P, DNS and extra hosts."""

    def host_config(tool: str) -> dict[str, Any]:
        run = engines.docker.docker if tool == "docker" else engines.ctrctl
        first = run("create", "--name", "hc-first", "--network", "none", "env:latest", "true")
        made = run("create", *flags, "env:latest", "true")
        try:
            assert made.returncode == 0, made.stderr
            [info] = json.loads(run("inspect", made.stdout.strip()).stdout)
            found = {key: info["HostConfig"].get(key) for key in HOST_CONFIG_NETWORK}
            first_id = first.stdout.strip()
            if found["NetworkMode"] == f"container:{first_id}":
                found["NetworkMode"] = "container:<first>"
            return found
        finally:
            run("rm", "-f", made.stdout.strip(), first.stdout.strip())

    docker = host_config("docker")
    assert docker["NetworkMode"] == mode
    assert host_config("ctrctl") == docker


def _restart_count(client: Detached, cid: str) -> int:
    if client.name == "docker":
        return int(client("inspect", "-f", "{{.RestartCount}}", cid))
    return int(json.loads(client("inspect", cid))[0]["RestartCount"])


@pytest.mark.parametrize(
    ("image", "flags", "restarted"),
    [
        pytest.param("env:latest", (), False, id="no-stop-signal-any-signal-stops"),
        pytest.param("stop-usr1:latest", (), True, id="the-images-stop-signal"),
        pytest.param("env:latest", ("--stop-signal", "USR2"), True, id="a-given-stop-signal"),
    ],
)
def test_kill_with_a_signal_is_a_users_stop_as_dockerd_decides(client, image, flags, restarted):
    """`kill -s HUP` of an `always` container: dockerd takes it for the user's stop (no restart)
    when the container has no stop signal of its own, and restarts it when it has one (USR1,
    USR2) that HUP is not. Run on the real dockerd and on ctrctl alike."""
    hup_exits = f'trap "exit 3" HUP; {LOOP}'  # pid 1 ignores what it does not handle
    cid = client.run(["--restart", "always", *flags], image, ["sh", "-c", hup_exits])
    try:
        _ready(client, cid)
        client("kill", "-s", "HUP", cid)
        deadline = time.monotonic() + (10 if restarted else 2)
        while _restart_count(client, cid) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (_restart_count(client, cid) > 0) == restarted
    finally:
        client.remove(cid)
