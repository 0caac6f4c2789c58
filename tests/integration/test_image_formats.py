"""Image formats ctr handles against ctrd: OCI indexes, Docker schema2, imports and re-pulls."""

from __future__ import annotations

import json

import pytest

from tests.support import images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def multi(registry):
    amd = images.busybox_image()
    arm = images.busybox_image(platform=images.Platform("arm64", "linux", "v8"))
    return registry.push("library/multi", "1", images.build_index([amd, arm])), amd, arm


def test_pull_of_an_index_takes_this_platform_and_repull_updates(ctrd, multi):
    pushed, amd, arm = multi
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref)
    digests = set(ctrd.ctr("content", "ls", "-q").stdout.split())
    assert amd.digest in digests
    assert arm.digest not in digests
    assert arm.config_descriptor.digest not in digests  # the other platform is not fetched
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref)  # Create AlreadyExists -> Update
    check = ctrd.ctr("images", "check").stdout
    assert "complete (2/2)" in check


def test_fetch_all_platforms_stores_every_manifest(ctrd, multi):
    pushed, amd, arm = multi
    ctrd.ctr("content", "fetch", "--plain-http", "--all-platforms", pushed.ref)
    digests = set(ctrd.ctr("content", "ls", "-q").stdout.split())
    assert {amd.digest, arm.digest, amd.config_descriptor.digest} <= digests
    assert arm.config_descriptor.digest in digests


def test_docker_schema2_images_pull_and_unpack(ctrd, registry):
    image = images.busybox2_image(schema="docker")
    pushed = registry.push("library/docker2", "1", image)
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref)
    assert "application/vnd.docker.distribution.manifest.v2+json" in ctrd.ctr("images", "ls").stdout
    assert "complete" in ctrd.ctr("images", "check").stdout


def test_export_then_import_with_base_and_index_names(ctrd, multi, short_tmp):
    pushed, _, _ = multi
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref)
    archive = short_tmp / "multi.tar"
    ctrd.ctr("images", "export", str(archive), pushed.ref)
    ctrd.ctr("images", "import", "--base-name", "127.0.0.1/lib/imp", str(archive), ns="imp")
    assert ctrd.ctr("images", "ls", "-q", ns="imp").stdout.split() == [pushed.ref]
    ctrd.ctr(
        "images", "import", "--index-name", "127.0.0.1/lib/idx:1", "--no-unpack", str(archive),
        ns="imp2",
    )  # fmt: skip
    names = ctrd.ctr("images", "ls", "-q", ns="imp2").stdout.split()
    assert "127.0.0.1/lib/idx:1" in names


def test_a_reader_that_stops_early_is_logged_as_cancelled_not_unknown(ctrd, multi):
    pushed, _, _ = multi
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref)
    ctrd.ctr("images", "ls")  # ctr reads manifests and configs, closing streams early
    lines = [json.loads(line) for line in ctrd.log().splitlines() if line.startswith("{")]
    codes = {line["code"] for line in lines if line.get("event") == "rpc"}
    assert "UNKNOWN" not in codes
