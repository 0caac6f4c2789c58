"""ctrctl and health checks: an image's HEALTHCHECK and the `--health-*` flags, the state in
`ps` and `inspect`, the changes in `ctrctl events`, docker's words for bad flags."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Ctrd
from tests.integration.test_ctrctl import ctrctl
from tests.support import images

MS = 1_000_000
IMAGE = "checked:latest"
# The image's check passes once /tmp/ok exists; failures in its first 60 s do not count.
HEALTHCHECK = {
    "Test": ["CMD-SHELL", "cat /tmp/ok"],
    "Interval": 150 * MS,
    "Timeout": 5000 * MS,
    "StartPeriod": 60_000 * MS,
    "Retries": 2,
}


@pytest.fixture
def loaded(ctrd: Ctrd, short_tmp: Path) -> Ctrd:
    image = images.build_image(
        [images.busybox_layer("docker")], schema="docker", config={"Healthcheck": HEALTHCHECK}
    )
    archive = images.docker_archive_of({IMAGE: image}, short_tmp / "checked.tar")
    result = ctrctl(ctrd, "load", "-i", str(archive))
    assert result.returncode == 0, result.stderr
    return ctrd


def eventually(what: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)
    return got


def ps_status(ctrd: Ctrd, name: str) -> str:
    rows = json.loads(ctrctl(ctrd, "ps", "--format", "json").stdout)
    return next(str(r["status"]) for r in rows if r["name"] == name)


def inspect(ctrd: Ctrd, name: str) -> dict[str, Any]:
    result = ctrctl(ctrd, "inspect", name)
    assert result.returncode == 0, result.stderr
    [info] = json.loads(result.stdout)
    return dict(info)


def test_an_images_healthcheck_turns_healthy_then_unhealthy_in_ps_inspect_and_events(loaded):
    since = f"{time.time():.3f}"
    run = ctrctl(
        loaded, "run", "-d", "--name", "web", IMAGE,
        "sh", "-c", "sleep 1.5; echo fine > /tmp/ok; sleep 1000",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    starting = ps_status(loaded, "web")
    assert starting.startswith("Up"), starting
    assert starting.endswith(" (health: starting)"), starting
    eventually(lambda: ps_status(loaded, "web").endswith(" (healthy)"))
    info = inspect(loaded, "web")
    assert info["Config"]["Healthcheck"] == HEALTHCHECK
    health = info["State"]["Health"]
    assert (health["Status"], health["FailingStreak"]) == ("healthy", 0)
    assert health["Log"][-1]["ExitCode"] == 0
    assert health["Log"][-1]["Output"] == "fine\n"
    assert health["Log"][-1]["Start"].endswith("Z")
    assert ctrctl(loaded, "exec", "web", "rm", "/tmp/ok").returncode == 0
    eventually(lambda: ps_status(loaded, "web").endswith(" (unhealthy)"))
    health = inspect(loaded, "web")["State"]["Health"]
    assert health["Status"] == "unhealthy"
    assert health["FailingStreak"] >= 2  # the probes go on, and so does the streak
    assert len(health["Log"]) == 5
    events = ctrctl(loaded, "events", "--since", since, "--until", f"{time.time():.3f}")
    changes = [line for line in events.stdout.splitlines() if "/containers/health" in line]
    assert len(changes) == 2, events.stdout
    assert '"action":"health_status: healthy"' in changes[0]
    assert '"action":"health_status: unhealthy"' in changes[1]
    assert '"containerId":"web"' in changes[1]
    for value, listed in (("unhealthy", "web\n"), ("healthy", ""), ("none", "")):
        assert ctrctl(loaded, "ps", "-q", "--filter", f"health={value}").stdout == listed
    bogus = ctrctl(loaded, "ps", "--filter", "health=sick")
    assert bogus.returncode == 125
    assert "Unrecognised filter value for health: sick" in bogus.stderr
    assert ctrctl(loaded, "rm", "-f", "web").returncode == 0


def test_health_flags_override_the_images_field_by_field(loaded):
    run = ctrctl(
        loaded, "run", "-d", "--name", "flagged", "--health-cmd", "exit 3",
        "--health-interval", "100ms", "--health-retries", "1", "--health-start-period", "0s",
        IMAGE, "sleep", "1000",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    info = eventually(lambda: (i := inspect(loaded, "flagged"))["State"]["Health"]["Log"][1:] and i)
    assert info["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "exit 3"],
        "Interval": 100 * MS,
        "Timeout": HEALTHCHECK["Timeout"],  # not given: the image's
        "StartPeriod": HEALTHCHECK["StartPeriod"],  # 0 is "not given", as docker reads it
        "Retries": 1,
    }
    health = info["State"]["Health"]
    assert {r["ExitCode"] for r in health["Log"]} == {3}
    # the image's start period (60 s) holds: the failures are not counted yet
    assert (health["Status"], health["FailingStreak"]) == ("starting", 0)
    assert ps_status(loaded, "flagged").endswith(" (health: starting)")
    created = ctrctl(loaded, "create", "--name", "off", "--no-healthcheck", IMAGE, "sleep", "9")
    assert created.returncode == 0, created.stderr
    assert ctrctl(loaded, "start", "off").returncode == 0
    time.sleep(0.5)
    info = inspect(loaded, "off")
    # dockerd's merge: the test is NONE, the timings not given are the image's
    assert info["Config"]["Healthcheck"] == {**HEALTHCHECK, "Test": ["NONE"]}
    assert "Health" not in info.get("State", {})
    assert ps_status(loaded, "off").startswith("Up")
    assert "health" not in ps_status(loaded, "off")
    assert ctrctl(loaded, "rm", "-f", "flagged", "off").returncode == 0


BAD_FLAGS = [
    (
        ["--health-interval", "1x"],
        'invalid argument "1x" for "--health-interval" flag: time: unknown unit "x" in'
        ' duration "1x"',
    ),
    (
        ["--health-retries", "x"],
        'invalid argument "x" for "--health-retries" flag: strconv.ParseInt: parsing "x":'
        " invalid syntax",
    ),
    (["--no-healthcheck", "--health-cmd", "true"], "--no-healthcheck conflicts with"),
    (["--health-timeout=-1s"], "--health-timeout cannot be negative"),
    (["--health-interval", "10us"], "Interval in Healthcheck cannot be less than 1ms"),
]


def test_bad_health_flags_are_refused_in_dockers_words(ctrd):
    for flags, words in BAD_FLAGS:
        result = ctrctl(ctrd, "run", "-d", *flags, "no-such-image", "true")
        assert result.returncode == 125, (flags, result.stderr)
        assert words in result.stderr, (flags, result.stderr)
    assert ctrctl(ctrd, "ps", "-a", "-q").stdout == ""
