"""`ctrctl pull`: ctrd pulls and unpacks as ctr would, so ctr and ctrctl run what it pulled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import Ctrd
from tests.integration.test_tasks import pull as ctr_pull
from tests.integration.test_tasks import run as ctr_run
from tests.support.images import EXTRA
from tests.support.registry import PushedImage

pytestmark = pytest.mark.integration


def ctrctl(ctrd: Ctrd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def rpc_methods(log: str) -> list[str]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line["method"] for line in lines if line.get("event") == "rpc" and "method" in line]


def pulled_digests(image: PushedImage) -> set[str]:
    return {image.digest, *image.image.blobs}  # type: ignore[union-attr]


def test_pull_unpacks_as_ctr_does_so_run_applies_nothing(ctrd: Ctrd, busybox2_image):
    ref = busybox2_image.ref
    pulled = ctrctl(ctrd, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr + ctrd.log()[-3000:]
    assert f"Digest: {busybox2_image.digest}" in pulled.stdout
    assert f"Status: Downloaded newer image for {ref}" in pulled.stdout
    assert ref in ctrd.ctr("images", "ls", "-q").stdout.split()
    assert ctrd.ctr("leases", "ls", "-q").stdout.split() == []

    before = len(ctrd.log())
    ran = ctr_run(ctrd, "--rm", ref, "after-pull", "cat", "/etc/extra")
    assert ran.stdout.encode("latin-1") == EXTRA
    methods = rpc_methods(ctrd.log()[before:])
    assert any(m.endswith("Tasks/Create") for m in methods), methods
    assert not any(m.endswith("Diff/Apply") for m in methods), methods

    mine = ctrctl(ctrd, "run", "--rm", ref, "cat", "/etc/extra")
    assert (mine.returncode, mine.stdout.encode()) == (0, EXTRA), mine.stderr

    again = ctrctl(ctrd, "pull", ref)
    assert again.returncode == 0, again.stderr
    assert f"Status: Image is up to date for {ref}" in again.stdout


def test_pull_of_a_missing_tag_exits_125_saying_not_found(ctrd: Ctrd, registry):
    missing = ctrctl(ctrd, "pull", f"127.0.0.1:{registry.port}/library/busybox2:no-such-tag")
    assert missing.returncode == 125
    assert "not found" in missing.stderr.lower(), missing.stderr
    assert missing.stderr.count("\n") == 1


def test_gc_keeps_pulled_content_until_the_image_goes(ctrd: Ctrd, busybox_image, busybox2_image):
    other = ctr_pull(ctrd, busybox_image)
    assert ctrctl(ctrd, "pull", busybox2_image.ref).returncode == 0
    wanted = pulled_digests(busybox2_image)
    assert wanted <= set(ctrd.ctr("content", "ls", "-q").stdout.split())

    ctrd.ctr("images", "rm", "--sync", other)
    assert wanted <= set(ctrd.ctr("content", "ls", "-q").stdout.split())

    ctrd.ctr("images", "rm", "--sync", busybox2_image.ref)
    left = set(ctrd.ctr("content", "ls", "-q").stdout.split())
    # busybox's layer is busybox2's first one: with both images gone, nothing of either stays
    assert not (wanted & left), left


def test_pull_from_an_unreachable_registry_names_the_host(ctrd: Ctrd):
    down = ctrctl(ctrd, "pull", "127.0.0.1:1/library/busybox:latest")
    assert down.returncode == 125
    assert "registry 127.0.0.1:1 cannot be reached" in down.stderr, down.stderr
    assert "cannot reach ctrd" not in down.stderr


def test_a_registry_breaking_off_mid_layer_is_one_clear_error_and_the_next_pull_resumes(
    ctrd: Ctrd, registry, busybox_image: PushedImage
):
    from tests.support.registry_proxy import Proxy, ProxySettings

    cut = 500_000
    proxy = Proxy(registry.url, settings=ProxySettings(cut_after=cut))
    ref = f"{proxy.host}/library/busybox:latest"
    try:
        broken = ctrctl(ctrd, "pull", ref)
    finally:
        proxy.stop()
    assert broken.returncode == 125
    (line,) = broken.stderr.strip().splitlines()
    assert f"{proxy.host} broke off after {cut} of" in line, line
    assert "ExceptionGroup" not in line
    assert "sub-exception" not in line
    assert ctrd.ctr("images", "ls", "-q").stdout.split() == []

    with Proxy(registry.url, port=proxy.port) as back:
        again = ctrctl(ctrd, "pull", ref)
        assert again.returncode == 0, again.stderr
        ranges = [get.headers.get("Range") for get in back.blob_gets()]
    assert f"bytes={cut}-" in ranges  # what arrived the first time was kept


def test_pulls_of_one_image_at_once_all_succeed(ctrd: Ctrd, busybox2_image):
    """Pulls of one image side by side (compose starting services of one image, several
    `ctrctl pull`): each waits for the blob another is fetching instead of failing on its
    lock, as containerd's client does; the image is whole afterwards."""
    argv = [sys.executable, "-m", "ctl", "--address", ctrd.address, "pull", busybox2_image.ref]
    pulls = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in pulls]
    assert [p.returncode for p in pulls] == [0, 0, 0, 0], errors
    assert pulled_digests(busybox2_image) <= set(ctrd.ctr("content", "ls", "-q").stdout.split())
    ran = ctr_run(ctrd, "--rm", busybox2_image.ref, "whole", "cat", "/etc/extra")
    assert ran.stdout == EXTRA.decode()
