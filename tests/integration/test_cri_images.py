"""Kubernetes' CRI on ctrd (runtime.v1): runtime info and the whole ImageService.

Driven with the real crictl (cri-tools 1.26.1, from `../shared/tools/cri/bin/crictl` beside
the checkout, or `$CTRD_CRICTL`) and with a Python gRPC client of the CRI, against a test
ctrd whose `[cri] mirrors` send `registry.k8s.io` to the tests' loopback registry and `gcr.io`
to a recording proxy in front of it (so no name ever leaves 127.0.0.1).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.api.runtime.v1 import api_pb2_grpc as cri_grpc
from tests.conftest import REPO, Ctrd
from tests.support import images
from tests.support.registry import PushedImage, Registry
from tests.support.registry_proxy import PASSWORD, USERNAME, HtpasswdRegistry, Proxy

pytestmark = pytest.mark.integration

# The project's CRI tools (cri-tools 1.26.1, prebuilt) live beside the checkout in `shared/`;
# a clone made elsewhere (CI's) finds them at the machine's copy, or on the PATH.
_CRICTL_PLACES = (
    REPO.parent / "shared" / "tools" / "cri" / "bin" / "crictl",
    Path("/work/shared/tools/cri/bin/crictl"),
)
CRICTL = os.environ.get("CTRD_CRICTL") or next(
    (str(p) for p in _CRICTL_PLACES if os.access(p, os.X_OK)),
    shutil.which("crictl") or str(_CRICTL_PLACES[0]),
)


@dataclass
class Cri:
    ctrd: Ctrd
    proxy: Proxy

    @property
    def endpoint(self) -> str:
        return f"unix://{self.ctrd.address}"

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if not os.access(CRICTL, os.X_OK):
            pytest.fail(f"crictl is not at {CRICTL} (../shared/tools/cri, or set CTRD_CRICTL)")
        result = subprocess.run(
            [
                CRICTL, "--config", str(self.ctrd.base / "crictl.yaml"),
                "--runtime-endpoint", self.endpoint, "--image-endpoint", self.endpoint,
                "--timeout", "30s", *args,
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(
                f"crictl {' '.join(args)} exited {result.returncode}\n{result.stdout}"
                f"{result.stderr}\n--- ctrd log ---\n{self.ctrd.log()[-4000:]}"
            )
        return result

    def json(self, command: str, *args: str) -> Any:
        """`crictl COMMAND -o json ARGS...` (its flags go before the arguments)."""
        return json.loads(self.crictl(command, "-o", "json", *args).stdout)

    @property
    def images(self) -> Any:
        return cri_grpc.ImageServiceStub(self.ctrd.channel)

    @property
    def runtime(self) -> Any:
        return cri_grpc.RuntimeServiceStub(self.ctrd.channel)

    def names(self) -> list[str]:
        """What `ctr -n k8s.io images ls -q` lists."""
        return self.ctrd.ctr("images", "ls", "-q", ns="k8s.io").stdout.split()


@pytest.fixture
def cri_ctrd(short_tmp: Path, registry: Registry) -> Iterator[Cri]:
    with Proxy(registry.url) as proxy:
        daemon = Ctrd(short_tmp)
        config = short_tmp / "ctrd-test.toml"
        config.write_text(
            config.read_text() + "[cri.mirrors]\n"
            f'"registry.k8s.io" = ["http://{registry.host}"]\n'
            f'"gcr.io" = ["http://{proxy.host}"]\n'
        )
        (short_tmp / "crictl.yaml").write_text("")  # crictl's own config: empty, not the host's
        daemon.start()
        try:
            yield Cri(daemon, proxy)
        finally:
            status = daemon.stop()
            daemon.cleanup()
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]


def config_digest(pushed: PushedImage) -> str:
    assert isinstance(pushed.image, images.Image)
    return pushed.image.config_descriptor.digest


def test_crictl_version_and_info_show_ctrd_ready_without_a_network(cri_ctrd: Cri):
    out = cri_ctrd.crictl("version").stdout
    assert "RuntimeName:  ctrd" in out
    assert "RuntimeApiVersion:  v1" in out
    info = cri_ctrd.json("info")
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is False
    assert conditions["NetworkReady"]["reason"] == "NetworkPluginNotReady"
    assert conditions["NetworkReady"]["message"].startswith(  # and why: the conf dir is empty
        "Network plugin returns error: cni plugin not initialized"
    )
    assert info["config"]["namespace"] == "k8s.io"


def test_runtime_calls_not_written_yet_answer_unimplemented(cri_ctrd: Cri):
    request = cri.CheckpointContainerRequest(container_id="x", location="/tmp/x.tar")
    with pytest.raises(grpc.RpcError) as failed:
        cri_ctrd.runtime.CheckpointContainer(request, timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED  # as containerd 1.6's
    assert "CheckpointContainer is not implemented by ctrd" in (failed.value.details() or "")


def test_pull_by_tag_through_a_mirror_lists_inspects_and_removes(
    cri_ctrd: Cri, busybox_image: PushedImage
):
    name = "registry.k8s.io/library/busybox:latest"
    image_id = config_digest(busybox_image)
    before = cri_ctrd.json("imagefsinfo")["status"]  # measured, and kept for 10 s...
    assert f"Image is up to date for {image_id}" in cri_ctrd.crictl("pull", name).stdout
    repo_digest = f"registry.k8s.io/library/busybox@{busybox_image.digest}"
    assert sorted(cri_ctrd.names()) == sorted([name, repo_digest, image_id])

    [listed] = cri_ctrd.json("images")["images"]
    assert listed["id"] == image_id
    assert listed["repoTags"] == [name]
    assert listed["repoDigests"] == [repo_digest]
    assert int(listed["size"]) > 0

    for ref in (name, "registry.k8s.io/library/busybox", image_id, image_id[7:19], repo_digest):
        inspected = cri_ctrd.json("inspecti", ref)
        assert inspected["status"]["id"] == image_id, ref
    spec = inspected["info"]["imageSpec"]
    assert spec["rootfs"]["diff_ids"] == [layer.diff_id for layer in busybox_image.image.layers]  # type: ignore[union-attr]
    assert inspected["info"]["chainID"].startswith("sha256:")

    fs = cri_ctrd.json("imagefsinfo")["status"]
    assert fs["fsId"]["mountpoint"] == str(cri_ctrd.ctrd.root / "snapshots" / "overlayfs")
    # ... unless a CRI pull or removal changes the images: measured anew after the pull
    assert int(fs["timestamp"]) > int(before["timestamp"])
    assert int(fs["usedBytes"]["value"]) > 0
    assert int(fs["inodesUsed"]["value"]) > 0
    # measured at most every 10 s, as containerd's snapshot sync: the timestamp is the walk's
    assert 0 < time.time_ns() - int(fs["timestamp"]) < 60 * 10**9
    assert cri_ctrd.json("imagefsinfo")["status"] == fs

    cri_ctrd.crictl("rmi", name)
    assert cri_ctrd.names() == []
    assert cri_ctrd.json("images")["images"] == []
    # Removing what is not there is success; its status is an empty answer.
    cri_ctrd.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=name)))
    status = cri_ctrd.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=name)))
    assert not status.HasField("image")


def test_pull_by_digest_has_no_tag_and_that_repo_digest(cri_ctrd: Cri, busybox_image: PushedImage):
    ref = f"registry.k8s.io/library/busybox@{busybox_image.digest}"
    cri_ctrd.crictl("pull", ref)
    [listed] = cri_ctrd.json("images")["images"]
    assert (listed["repoTags"], listed["repoDigests"]) == ([], [ref])
    assert sorted(cri_ctrd.names()) == sorted([ref, config_digest(busybox_image)])


def test_a_short_name_is_normalised_and_filtered_by(cri_ctrd: Cri, busybox_image: PushedImage):
    cri_ctrd.crictl("pull", busybox_image.ref)
    cri_ctrd.crictl("pull", "registry.k8s.io/library/busybox:latest")
    [image] = cri_ctrd.json("images")["images"]  # one image, two tags
    assert sorted(image["repoTags"]) == sorted(
        [busybox_image.ref, "registry.k8s.io/library/busybox:latest"]
    )
    listed = cri_ctrd.images.ListImages(
        cri.ListImagesRequest(filter=cri.ImageFilter(image=cri.ImageSpec(image=busybox_image.ref)))
    ).images
    assert [i.id for i in listed] == [config_digest(busybox_image)]
    none = cri_ctrd.images.ListImages(
        cri.ListImagesRequest(filter=cri.ImageFilter(image=cri.ImageSpec(image="nginx")))
    ).images
    assert list(none) == []
    # Removing by one tag removes the image: every tag, digest and the ID.
    cri_ctrd.crictl("rmi", busybox_image.ref)
    assert cri_ctrd.names() == []


def test_concurrent_pulls_of_one_image_are_done_once(cri_ctrd: Cri, busybox_image: PushedImage):
    request = cri.PullImageRequest(image=cri.ImageSpec(image="gcr.io/library/busybox:latest"))
    # Sent at once (futures), long before the first pull's HTTP round trips and unpack end.
    calls = [cri_ctrd.images.PullImage.future(request, timeout=60) for _ in range(6)]
    answers = [call.result().image_ref for call in calls]
    assert answers == [config_digest(busybox_image)] * 6
    assert cri_ctrd.ctrd.log().count('"cri_image_pulled"') == 1
    blobs = [s.path.rsplit("/", 1)[1] for s in cri_ctrd.proxy.blob_gets()]
    assert sorted(blobs) == sorted(set(blobs)), "a blob was fetched twice"
    assert all(s.query == "ns=gcr.io" for s in cri_ctrd.proxy.settings.seen)


def test_bad_references_fail_with_clear_errors_and_codes(cri_ctrd: Cri, registry: Registry):
    def pull(ref: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as failed:
            cri_ctrd.images.PullImage(
                cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60
            )
        return failed.value

    bad = pull("Upper/Case:tag")
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'failed to parse image reference "Upper/Case:tag"' in (bad.details() or "")
    assert pull("").code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = pull(f"{registry.host}/library/nope:latest")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert f'failed to pull and unpack image "{registry.host}/library/nope:latest"' in (
        missing.details() or ""
    )
    crictl = cri_ctrd.crictl("pull", "Upper/Case:tag", check=False)
    assert crictl.returncode != 0
    assert "failed to parse image reference" in crictl.stderr
    assert cri_ctrd.names() == []


def test_credentials_from_the_request_reach_a_registry_that_demands_them(cri_ctrd: Cri):
    with HtpasswdRegistry() as private:
        private.push("private/busybox", "latest", images.busybox_image())
        ref = f"{private.host}/private/busybox:latest"
        denied = cri_ctrd.crictl("pull", ref, check=False)
        assert denied.returncode != 0
        assert "failed to pull and unpack image" in denied.stderr
        cri_ctrd.crictl("pull", "--creds", f"{USERNAME}:{PASSWORD}", ref)
        auth = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        cri_ctrd.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))
        cri_ctrd.crictl("pull", "--auth", auth, ref)
    assert ref in cri_ctrd.names()


def test_a_disabled_cri_serves_no_runtime_v1(short_tmp: Path):
    daemon = Ctrd(short_tmp)
    config = short_tmp / "ctrd-test.toml"
    config.write_text(config.read_text() + "[cri]\nenabled = false\n")
    daemon.start()
    try:
        with pytest.raises(grpc.RpcError) as failed:
            cri_grpc.RuntimeServiceStub(daemon.channel).Version(cri.VersionRequest(), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert daemon.stop() == 0, daemon.log()
        daemon.cleanup()
