"""ctrctl's health flags and display against Docker Engine 20.10's, on the same ctrd: the
merge of flags and image (`Config.Healthcheck`), dockerd's refusals, and what `ps` and
`inspect` show of a container that turned healthy."""

from __future__ import annotations

import json
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

MS = 1_000_000
IMAGE = "healthy:latest"
HEALTHCHECK = {
    "Test": ["CMD-SHELL", "test -e /etc/motd"],
    "Interval": 200 * MS,
    "Timeout": 3000 * MS,
    "Retries": 4,
}


@dataclass(frozen=True)
class Engines:
    ctrd: Ctrd
    docker: Dockerd

    def ctrctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ctl", "--address", self.ctrd.address, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def both_create(self, name: str, flags: Sequence[str]) -> tuple[Any, Any]:
        """`create` on both with the same flags; each one's Config.Healthcheck."""
        self.docker.docker("create", "--name", name, "--network", "none", *flags, IMAGE, "true")
        made = self.ctrctl("create", "--name", name, "--network", "none", *flags, IMAGE, "true")
        assert made.returncode == 0, made.stderr
        [ours] = json.loads(self.ctrctl("inspect", name).stdout)
        theirs = self.docker.inspect(name)["Config"]
        return theirs.get("Healthcheck"), ours.get("Config", {}).get("Healthcheck")  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    daemon = Ctrd(base)
    (base / "docker").mkdir()
    docker = Dockerd(base / "docker", daemon.address)
    try:
        daemon.start()
        docker.start()
        image = images.build_image(
            [images.busybox_layer("docker")], schema="docker", config={"Healthcheck": HEALTHCHECK}
        )
        archive = images.docker_archive_of({IMAGE: image}, base / "healthy.tar")
        docker.docker("load", "-i", str(archive))
        engines = Engines(daemon, docker)
        loaded = engines.ctrctl("load", "-i", str(archive))
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


CASES = {
    "image": [],
    "cmd": ["--health-cmd", "exit 3", "--health-interval", "1m30s"],
    "retries": ["--health-retries", "9"],
    "timings": ["--health-start-period", "2.5s", "--health-timeout", "700ms"],
    "none": ["--no-healthcheck"],
}


@pytest.mark.parametrize("case", CASES)
def test_flags_merge_with_the_image_as_dockers(engines, case):
    theirs, ours = engines.both_create(f"merge-{case}", CASES[case])
    assert ours == theirs


def test_a_duration_under_1ms_is_refused_as_dockerd_refuses_it(engines):
    flags = ("--health-interval", "10us")
    theirs = engines.docker.docker("run", "-d", *flags, IMAGE, check=False)
    ours = engines.ctrctl("run", "-d", *flags, IMAGE)
    assert theirs.returncode == ours.returncode == 125
    words = "Interval in Healthcheck cannot be less than 1ms"
    assert words in theirs.stderr
    assert words in ours.stderr


def status_of(rows: str, name: str) -> str:
    return next(r["Status"] for r in map(json.loads, rows.splitlines()) if r["Names"] == name)


def test_a_healthy_container_shows_as_dockers_in_ps_and_inspect(engines):
    engines.docker.docker("run", "-d", "--name", "up", "--network", "none", IMAGE, "sleep", "60")
    ran = engines.ctrctl("run", "-d", "--name", "up", "--network", "none", IMAGE, "sleep", "60")
    assert ran.returncode == 0, ran.stderr
    deadline = time.monotonic() + 15
    while True:
        theirs = status_of(engines.docker.docker("ps", "--format", "{{json .}}").stdout, "up")
        ours = next(
            r["status"] for r in json.loads(engines.ctrctl("ps", "--format", "json").stdout)
            if r["name"] == "up"
        )  # fmt: skip
        if theirs.endswith("(healthy)") and ours.endswith("(healthy)"):
            break
        assert time.monotonic() < deadline, (theirs, ours)
        time.sleep(0.1)
    assert ours.partition(" (")[2] == theirs.partition(" (")[2] == "healthy)"
    docker_health = engines.docker.inspect("up")["State"]["Health"]  # type: ignore[index]
    [info] = json.loads(engines.ctrctl("inspect", "up").stdout)
    our_health = info["State"]["Health"]
    assert our_health.keys() == docker_health.keys()
    assert our_health["Log"][-1].keys() == docker_health["Log"][-1].keys()
    for health in (our_health, docker_health):
        assert (health["Status"], health["FailingStreak"]) == ("healthy", 0)
        assert (health["Log"][-1]["ExitCode"], health["Log"][-1]["Output"]) == (0, "")
    engines.docker.docker("rm", "-f", "up")
    assert engines.ctrctl("rm", "-f", "up").returncode == 0
