"""`ctrctl push`: ctrd pushes what a namespace holds to a real docker-registry on loopback.

Images get into ctrd by pulling them (ctrctl pull, or ctr pull for all platforms) from the
session's registry; pushes go to other repositories of it, to fresh registries, to the
htpasswd registry, or through a `Proxy` that records what was asked and can demand tokens.
Repository names carry a random suffix: the session's registry outlives each test.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from supervisor.api.ctrd.services.images.v1 import push_pb2, push_pb2_grpc
from tests.conftest import Ctrd
from tests.support import images
from tests.support import registry as test_registry
from tests.support.registry import PushedImage
from tests.support.registry_proxy import (
    PASSWORD,
    TOKEN,
    USERNAME,
    HtpasswdRegistry,
    Proxy,
    ProxySettings,
)

pytestmark = pytest.mark.integration


def ctrctl(ctrd: Ctrd, *args: str, ns: str = "default") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "--namespace", ns, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str], ctrd: Ctrd) -> str:
    assert result.returncode == 0, result.stdout + result.stderr + ctrd.log()[-3000:]
    return result.stdout


def unique(repo: str) -> str:
    return f"{repo}-{secrets.token_hex(3)}"


def pushed_line(stdout: str) -> tuple[str, str, int]:
    """docker's last line, `TAG: digest: DIGEST size: N`, as (tag, digest, size)."""
    tag, _, rest = stdout.splitlines()[-1].partition(": digest: ")
    digest, _, size = rest.partition(" size: ")
    return tag, digest, int(size)


def manifest_digest(registry: test_registry.Registry, repo: str, tag: str) -> str:
    accept = ", ".join([images.OCI_MANIFEST, images.OCI_INDEX, images.DOCKER_MANIFEST])
    resp = registry.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    assert resp.status == 200, resp
    return resp.headers["docker-content-digest"]


@pytest.fixture
def configured(ctrd: Ctrd, short_tmp: Path) -> tuple[Ctrd, Path]:
    """The ctrd, restarted with a `[registry]` config naming a docker config.json (not there
    yet: each test writes its credentials; ctrd reads the file at every push)."""
    docker_config = short_tmp / "docker-config.json"
    config = short_tmp / "config.toml"
    config.write_text(f"[registry]\nconfig_path = {json.dumps(str(docker_config))}\n")
    ctrd.stop()
    ctrd.extra_args = ("--config", str(config))
    ctrd.start()
    return ctrd, docker_config


def write_credentials(path: Path, host: str, username: str, password: str) -> None:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"http://{host}": {"auth": auth}}}))


# -- push and pull back ------------------------------------------------------------------------


def test_a_pulled_image_pushed_elsewhere_pulls_back_with_the_same_digest(
    ctrd: Ctrd, busybox2_image: PushedImage
):
    ok(ctrctl(ctrd, "pull", busybox2_image.ref), ctrd)
    with test_registry.Registry() as other:
        target = f"{other.host}/copies/busybox2:v1"
        out = ok(ctrctl(ctrd, "push", busybox2_image.ref, target), ctrd)
        assert (
            out.splitlines()[0] == f"The push refers to repository [{other.host}/copies/busybox2]"
        )
        image = busybox2_image.image
        assert isinstance(image, images.Image)
        for layer in image.layers:
            short = layer.descriptor.digest.removeprefix("sha256:")[:12]
            assert f"{short}: Pushed" in out.splitlines(), out
        assert pushed_line(out) == ("v1", busybox2_image.digest, len(image.manifest))
        assert manifest_digest(other, "copies/busybox2", "v1") == busybox2_image.digest

        pulled = ok(ctrctl(ctrd, "pull", target, ns="fresh"), ctrd)
        assert f"Digest: {busybox2_image.digest}" in pulled
        assert ctrd.ctr("images", "ls", "-q", ns="fresh").stdout.split() == [target]
        fresh = set(ctrd.ctr("content", "ls", "-q", ns="fresh").stdout.split())
        assert fresh == {busybox2_image.digest, *image.blobs}


def test_layers_beyond_the_uploads_at_once_wait_their_turn(
    ctrd: Ctrd, registry: test_registry.Registry
):
    image = images.many_layers(5)
    source = registry.push(unique("test/layers"), "v1", image)
    ok(ctrctl(ctrd, "pull", source.ref), ctrd)
    with test_registry.Registry() as other:
        out = ok(ctrctl(ctrd, "push", source.ref, f"{other.host}/layers:v1"), ctrd)
        lines = out.splitlines()
        for layer in image.layers:
            short = layer.descriptor.digest.removeprefix("sha256:")[:12]
            assert f"{short}: Pushed" in lines, out
        assert sum(line.endswith(": Waiting") for line in lines) >= 2, out  # 3 at a time
        assert pushed_line(out)[1] == image.digest
        assert manifest_digest(other, "layers", "v1") == image.digest


def test_a_second_push_sends_only_the_blobs_the_registry_lacks(
    ctrd: Ctrd, busybox_image: PushedImage, busybox2_image: PushedImage
):
    ok(ctrctl(ctrd, "pull", busybox_image.ref), ctrd)
    ok(ctrctl(ctrd, "pull", busybox2_image.ref), ctrd)
    first, second = busybox_image.image, busybox2_image.image
    assert isinstance(first, images.Image)
    assert isinstance(second, images.Image)
    with test_registry.Registry() as other:
        # Relative upload Locations, as some registries send them.
        with Proxy(other.url, settings=ProxySettings(relative_locations=True)) as proxy:
            ok(ctrctl(ctrd, "push", busybox_image.ref, f"{proxy.host}/app/busybox:v1"), ctrd)
            assert {query_digest(s.query) for s in proxy.uploads()} == set(first.blobs)
            proxy.settings.seen.clear()

            out = ok(ctrctl(ctrd, "push", busybox2_image.ref, f"{proxy.host}/app/busybox:v2"), ctrd)
            shared = second.layers[0].descriptor.digest
            assert shared == first.layers[0].descriptor.digest
            assert {query_digest(s.query) for s in proxy.uploads()} == set(second.blobs) - {shared}
            sizes = {query_digest(s.query): s.body_size for s in proxy.uploads()}
            assert sizes == {d: len(data) for d, data in second.blobs.items() if d != shared}
            assert f"{shared.removeprefix('sha256:')[:12]}: Layer already exists" in out
        assert manifest_digest(other, "app/busybox", "v2") == busybox2_image.digest


def query_digest(query: str) -> str:
    from urllib.parse import parse_qs

    return parse_qs(query)["digest"][0]


def test_blobs_of_another_repository_of_the_registry_are_mounted_not_uploaded(
    ctrd: Ctrd, registry: test_registry.Registry, busybox2_image: PushedImage
):
    image = busybox2_image.image
    assert isinstance(image, images.Image)
    with Proxy(registry.url) as proxy:
        source = f"{proxy.host}/library/busybox2:latest"
        ok(ctrctl(ctrd, "pull", source), ctrd)
        labels = ctrd.ctr("content", "ls").stdout
        assert "containerd.io/distribution.source.127.0.0.1=library/busybox2" in labels
        proxy.settings.seen.clear()

        repo = unique("mounted/busybox2")
        out = ok(ctrctl(ctrd, "push", source, f"{proxy.host}/{repo}:v1"), ctrd)
        mounts = proxy.mounts()
        assert {query_digest_of(m.query, "mount") for m in mounts} == set(image.blobs)
        assert {query_digest_of(m.query, "from") for m in mounts} == {"library/busybox2"}
        assert proxy.uploads() == []
        for layer in image.layers:
            short = layer.descriptor.digest.removeprefix("sha256:")[:12]
            assert f"{short}: Mounted from library/busybox2" in out.splitlines(), out
    assert manifest_digest(registry, repo, "v1") == busybox2_image.digest
    # What was pushed now names the new repository too, for the next push's mounts.
    assert f"library/busybox2,{repo}" in ctrd.ctr("content", "ls").stdout


def query_digest_of(query: str, name: str) -> str:
    from urllib.parse import parse_qs

    return parse_qs(query)[name][0]


def test_an_index_is_pushed_whole_when_every_platform_is_here_else_one_platform(
    ctrd: Ctrd, registry: test_registry.Registry
):
    index = images.build_index(
        [
            images.busybox_image(platform=images.Platform("amd64")),
            images.busybox_image(platform=images.Platform("arm64")),
        ]
    )
    pushed = registry.push(unique("test/multi-push"), "v1", index)
    with test_registry.Registry() as other:
        # ctrctl pull fetches one platform: the index cannot go whole.
        ok(ctrctl(ctrd, "pull", "--platform", "linux/amd64", pushed.ref), ctrd)
        refused = ctrctl(ctrd, "push", pushed.ref, f"{other.host}/multi:v1")
        assert refused.returncode == 125
        assert "not present locally (linux/arm64)" in refused.stderr, refused.stderr
        assert "--platform" in refused.stderr
        assert refused.stderr.count("\n") == 1

        one = ok(ctrctl(ctrd, "push", "--platform", "linux/amd64", pushed.ref,
                        f"{other.host}/multi:amd64"), ctrd)  # fmt: skip
        assert pushed_line(one)[1] == index.images[0].digest

        # ctr pulls every platform (and labels them as containerd does): the whole index goes.
        ctrd.ctr("images", "pull", "--plain-http", "--all-platforms", pushed.ref, ns="all")
        whole = ok(ctrctl(ctrd, "push", pushed.ref, f"{other.host}/multi:v1", ns="all"), ctrd)
        assert pushed_line(whole) == ("v1", index.digest, len(index.index))
        assert manifest_digest(other, "multi", "v1") == index.digest
        for image in index.images:
            assert manifest_digest(other, "multi", image.digest) == image.digest


# -- authentication ----------------------------------------------------------------------------


def test_basic_auth_with_credentials_from_the_docker_config(
    configured: tuple[Ctrd, Path], busybox_image: PushedImage
):
    ctrd, docker_config = configured
    ok(ctrctl(ctrd, "pull", busybox_image.ref), ctrd)
    with HtpasswdRegistry() as private:
        target = f"{private.host}/private/busybox:v1"
        write_credentials(docker_config, private.host, USERNAME, PASSWORD)
        out = ok(ctrctl(ctrd, "push", busybox_image.ref, target), ctrd)
        assert pushed_line(out)[1] == busybox_image.digest
        assert manifest_digest(private, "private/busybox", "v1") == busybox_image.digest

        write_credentials(docker_config, private.host, USERNAME, "not-the-password")
        denied = ctrctl(ctrd, "push", busybox_image.ref, f"{private.host}/private/other:v1")
        assert denied.returncode == 125
        assert denied.stderr.startswith("ctrctl: "), denied.stderr
        assert "push access denied" in denied.stderr, denied.stderr
        assert denied.stderr.count("\n") == 1

        stub = ctrd.stub(push_pb2_grpc.PushStub)
        request = push_pb2.PushRequest(image=busybox_image.ref, ref=target)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.Push(request, metadata=(("containerd-namespace", "default"),)))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_bearer_tokens_are_asked_with_the_push_scope(
    ctrd: Ctrd, registry: test_registry.Registry, busybox_image: PushedImage
):
    ok(ctrctl(ctrd, "pull", busybox_image.ref), ctrd)
    with Proxy(registry.url, settings=ProxySettings(require_token=True)) as proxy:
        repo = unique("tokens/busybox")
        out = ok(ctrctl(ctrd, "push", busybox_image.ref, f"{proxy.host}/{repo}:v1"), ctrd)
        assert pushed_line(out)[1] == busybox_image.digest
        scopes = [set(q.get("scope", [])) for q in proxy.settings.token_requests]
        assert any(f"repository:{repo}:pull,push" in s for s in scopes), scopes
        # The mount from library/busybox (the pull's source label) asked to read that too.
        assert {f"repository:{repo}:pull,push", "repository:library/busybox:pull"} in scopes
        writes = [s for s in proxy.settings.seen if s.method in ("POST", "PUT")]
        assert writes
        assert {s.headers.get("Authorization") for s in writes} == {f"Bearer {TOKEN}"}
    assert manifest_digest(registry, repo, "v1") == busybox_image.digest


# -- failures ----------------------------------------------------------------------------------


def test_pushing_an_image_that_is_not_here_says_not_found(ctrd: Ctrd, registry):
    missing = ctrctl(ctrd, "push", f"{registry.host}/library/nothing:here")
    assert missing.returncode == 125
    assert "no such image" in missing.stderr, missing.stderr
    assert missing.stderr.rstrip().endswith("not found")
    assert missing.stderr.count("\n") == 1


def test_pushing_to_an_unreachable_registry_names_the_host(ctrd: Ctrd, busybox_image):
    ok(ctrctl(ctrd, "pull", busybox_image.ref), ctrd)
    down = ctrctl(ctrd, "push", busybox_image.ref, "127.0.0.1:1/library/busybox:latest")
    assert down.returncode == 125
    assert "registry 127.0.0.1:1 cannot be reached" in down.stderr, down.stderr
    assert "cannot reach ctrd" not in down.stderr
