"""`ctrctl load` and `ctrctl save` against ctrd, checked with the real ctr; the quick start."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, Ctrd
from tests.support import images

pytestmark = pytest.mark.integration

NAME = "example.com/team/bb2:1"


def ctrctl(
    ctrd: Ctrd, *args: str, ns: str = "default", input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "--namespace", ns, *args],
        capture_output=True, input=input, timeout=120, cwd=REPO,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def digests_of(ctrd: Ctrd, ns: str = "default") -> dict[str, str]:
    """name -> target digest, as ctr lists the images."""
    rows = ctrd.ctr("images", "ls", ns=ns).stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[2] for row in rows}


def leftovers(ctrd: Ctrd, ns: str = "default") -> list[str]:
    """Images, leases and ingests: what a failed load must not leave behind."""
    return [
        *ctrd.ctr("images", "ls", "-q", ns=ns).stdout.split(),
        *ctrd.ctr("leases", "ls", "-q", ns=ns).stdout.split(),
        *ctrd.ctr("content", "active", ns=ns).stdout.splitlines()[1:],
    ]


def test_an_oci_archive_loads_unpacked_under_its_name_and_runs(ctrd, short_tmp):
    image = images.busybox2_image()
    archive = images.oci_archive(image, short_tmp / "bb2.tar", NAME)
    assert ok(ctrctl(ctrd, "load", "-i", str(archive))) == f"Loaded image: {NAME}\n"
    assert digests_of(ctrd) == {NAME: image.digest}
    [check] = ctrd.ctr("images", "check").stdout.splitlines()[1:]
    assert "complete (3/3)" in check
    assert check.split()[-1] == "true"  # unpacked
    assert ctrd.ctr("leases", "ls", "-q").stdout.split() == []
    snapshots = ctrd.ctr("snapshots", "ls").stdout
    assert all(chain in snapshots for chain in images_chain_ids(image))
    script = "cat /etc/extra; test -e /etc/motd || echo whited out"
    out = ok(ctrctl(ctrd, "run", "--rm", NAME, "sh", "-c", script))
    assert out == images.EXTRA.decode() + "whited out\n"
    # Loading again moves nothing and says the same.
    assert ok(ctrctl(ctrd, "load", "-i", str(archive))) == f"Loaded image: {NAME}\n"
    assert digests_of(ctrd) == {NAME: image.digest}


def images_chain_ids(image: images.Image) -> list[str]:
    from supervisor import digests

    return digests.chain_ids(image.diff_ids)


def test_a_docker_save_archive_gets_the_manifest_ctr_import_makes(ctrd, short_tmp):
    image = images.busybox2_image(schema="docker")
    files = images.docker_archive_files(image, "bb:1")
    legacy = image.diff_ids[0].removeprefix("sha256:")
    files.update({f"{legacy}/json": b"{}", f"{legacy}/VERSION": b"1.0", "repositories": b"{}"})
    archive = short_tmp / "docker.tar"
    archive.write_bytes(images.archive_tar(files))
    assert ok(ctrctl(ctrd, "load", "-i", str(archive))) == "Loaded image: bb:1\n"
    ctrd.ctr("images", "import", str(archive), ns="ctr")
    loaded = digests_of(ctrd)
    assert loaded == digests_of(ctrd, ns="ctr")
    assert list(loaded) == ["docker.io/library/bb:1"]
    manifest = json.loads(ctrd.ctr("content", "get", loaded["docker.io/library/bb:1"]).stdout)
    assert manifest["mediaType"] == images.DOCKER_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == image.diff_ids
    assert ok(ctrctl(ctrd, "run", "--rm", "bb:1", "cat", "/etc/extra")) == images.EXTRA.decode()


def test_a_gzipped_archive_loads_from_stdin(ctrd, short_tmp):
    image = images.busybox_image()
    data = images.archive_tar(images.oci_layout_files(image, "docker.io/library/busybox:gz"))
    loaded = ctrctl(ctrd, "load", input=gzip.compress(data))
    assert ok(loaded) == "Loaded image: busybox:gz\n"
    assert digests_of(ctrd) == {"docker.io/library/busybox:gz": image.digest}
    assert ok(ctrctl(ctrd, "run", "--rm", "busybox:gz", "echo", "hello")) == "hello\n"


def test_an_unnamed_image_is_named_by_its_id(ctrd, short_tmp):
    image = images.busybox_image(schema="docker")
    files = images.docker_archive_files(image, "unused")
    [entry] = json.loads(files["manifest.json"])
    files["manifest.json"] = images.canonical_json([{**entry, "RepoTags": []}])
    archive = short_tmp / "unnamed.tar"
    archive.write_bytes(images.archive_tar(files))
    image_id = image.config_descriptor.digest
    assert ok(ctrctl(ctrd, "load", "-i", str(archive))) == f"Loaded image ID: {image_id}\n"
    assert ok(ctrctl(ctrd, "run", "--rm", image_id, "echo", "hello")) == "hello\n"


def test_ctr_export_output_loads_in_another_namespace(ctrd, short_tmp):
    amd = images.busybox_image()
    arm = images.busybox_image(platform=images.Platform("arm64", "linux", "v8"))
    index = images.build_index([amd, arm])
    built = images.oci_archive(index, short_tmp / "multi.tar", "127.0.0.1/lib/multi:1")
    ctrd.ctr("images", "import", "--no-unpack", str(built), ns="src")
    exported = short_tmp / "export.tar"
    ctrd.ctr("images", "export", str(exported), "127.0.0.1/lib/multi:1", ns="src")
    loaded = ctrctl(ctrd, "load", "-i", str(exported), ns="dst")
    assert ok(loaded) == "Loaded image: 127.0.0.1/lib/multi:1\n"
    assert digests_of(ctrd, ns="dst") == {"127.0.0.1/lib/multi:1": index.digest}
    run = ctrctl(ctrd, "run", "--rm", "127.0.0.1/lib/multi:1", "echo", "hello", ns="dst")
    assert ok(run) == "hello\n"
    # A platform the index does not offer: one line, exit 125, nothing named.
    refused = ctrctl(ctrd, "load", "--platform", "linux/s390x", "-i", str(exported), ns="s390x")
    assert refused.returncode == 125
    assert re.fullmatch(
        r"ctrctl: .*no manifest for platform linux/s390x.*\n", refused.stderr.decode()
    )
    assert leftovers(ctrd, ns="s390x") == []


def test_save_writes_what_ctr_import_and_load_take_back(ctrd, short_tmp):
    image = images.busybox2_image()
    archive = images.oci_archive(image, short_tmp / "in.tar", NAME)
    ok(ctrctl(ctrd, "load", "-i", str(archive)))
    saved = short_tmp / "saved.tar"
    assert ok(ctrctl(ctrd, "save", "-o", str(saved), NAME)) == ""
    to_stdout = ctrctl(ctrd, "save", NAME)
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == saved.read_bytes()  # the same bytes
    with tarfile.open(saved) as tar:
        names = tar.getnames()
        [entry] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"index.json", "oci-layout", "manifest.json"} <= set(names)
    assert entry["RepoTags"] == [NAME]
    assert entry["Config"] == "blobs/sha256/" + image.config_descriptor.digest.split(":")[1]
    assert set(entry["Layers"]) <= set(names)

    ctrd.ctr("images", "import", str(saved), ns="second")
    assert digests_of(ctrd, ns="second") == {NAME: image.digest}
    assert ok(ctrctl(ctrd, "load", "-i", str(saved), ns="third")) == f"Loaded image: {NAME}\n"
    assert digests_of(ctrd, ns="third") == {NAME: image.digest}
    assert ok(ctrctl(ctrd, "run", "--rm", NAME, "echo", "hello", ns="third")) == "hello\n"

    # The docker half alone (what an older `docker load` reads) is a whole archive too.
    docker_only = short_tmp / "docker-only.tar"
    with tarfile.open(saved) as src, tarfile.open(docker_only, "w") as dst:
        for member in src:
            if member.name not in ("index.json", "oci-layout"):
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    assert ok(ctrctl(ctrd, "load", "-i", str(docker_only), ns="fourth")) == (
        f"Loaded image: {NAME}\n"
    )
    ctrd.ctr("images", "import", str(docker_only), ns="fifth")
    assert digests_of(ctrd, ns="fourth") == digests_of(ctrd, ns="fifth")
    assert ok(ctrctl(ctrd, "run", "--rm", NAME, "cat", "/etc/extra", ns="fourth")) == (
        images.EXTRA.decode()
    )


def test_two_names_of_one_image_are_saved_once(ctrd, short_tmp):
    image = images.busybox_image()
    ok(ctrctl(ctrd, "load", "-i", str(images.oci_archive(image, short_tmp / "in.tar", "bb:1"))))
    ctrd.ctr("images", "tag", "docker.io/library/bb:1", "docker.io/library/bb:2")
    saved = short_tmp / "saved.tar"
    ok(ctrctl(ctrd, "save", "-o", str(saved), "bb:1", "bb:2"))
    with tarfile.open(saved) as tar:
        blobs = [m.name for m in tar if m.isreg() and m.name.startswith("blobs/")]
        [entry] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert sorted(blobs) == sorted(f"blobs/{d.replace(':', '/')}" for d in image.content)
    assert entry["RepoTags"] == ["bb:1", "bb:2"]
    assert [m["annotations"][images.ANNOTATION_IMAGE_NAME] for m in index["manifests"]] == [
        "docker.io/library/bb:1",
        "docker.io/library/bb:2",
    ]
    loaded = ok(ctrctl(ctrd, "load", "-i", str(saved), ns="other"))
    assert loaded == "Loaded image: bb:1\nLoaded image: bb:2\n"


def test_save_refuses_unknown_images_and_a_terminal(ctrd, short_tmp):
    missing = ctrctl(ctrd, "save", "-o", str(short_tmp / "x.tar"), "nothing:here")
    assert missing.returncode == 125
    assert missing.stderr.decode().count("\n") == 1
    assert "nothing:here" in missing.stderr.decode()
    assert not (short_tmp / "x.tar").exists()
    terminal = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m ctl --address {ctrd.address} save busybox",
         "/dev/null"],
        capture_output=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert terminal.returncode == 125
    assert b"refusing to save to a terminal" in terminal.stdout


def _bad_archives() -> dict[str, bytes]:
    image = images.busybox2_image()
    files = images.oci_layout_files(image, NAME)
    whole = images.archive_tar(files)
    layer = "blobs/" + image.layers[0].descriptor.digest.replace(":", "/")
    tampered = dict(files)
    tampered[layer] = images.busybox2_image(compression="none").layers[0].data
    missing = {k: v for k, v in files.items() if k != layer}
    junk = gzip.compress(b"not a tar" * 100, mtime=0)
    junk_layer = images.Layer(
        images.Descriptor.of(images.LAYER_TYPES["oci", "gzip"], junk),
        junk,
        b"not a tar" * 100,
        images.sha256(b"not a tar" * 100),
    )
    undecodable = images.build_image([images.busybox_layer(), junk_layer])
    return {
        "garbage": b"this is not a tar archive\n" * 100,
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
        "truncated gzip": gzip.compress(whole)[:200_000],
        "tampered": images.archive_tar(tampered),
        "missing layer": images.archive_tar(missing),
        "no metadata": images.archive_tar({"hello.txt": b"hi\n"}),
        "undecodable layer": images.archive_tar(images.oci_layout_files(undecodable, NAME)),
    }


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("garbage", "not a valid image archive"),
        ("empty", "not a valid image archive"),
        ("truncated", "truncated"),
        ("truncated gzip", "not a valid image archive"),
        ("tampered", "not the one its name says"),
        ("missing layer", "is not in the archive"),
        ("no metadata", "neither an OCI image layout"),
        ("undecodable layer", "not a tar stream"),
    ],
)
def test_a_bad_archive_fails_in_one_line_and_leaves_nothing(ctrd, short_tmp, kind, says):
    path = short_tmp / "bad.tar"
    path.write_bytes(_bad_archives()[kind])
    result = ctrctl(ctrd, "load", "-i", str(path))
    stderr = result.stderr.decode()
    assert result.returncode == 125, stderr
    assert stderr.startswith("ctrctl: "), stderr
    assert stderr.count("\n") == 1, stderr
    assert says in stderr
    assert result.stdout == b""
    assert leftovers(ctrd) == []


def test_load_of_a_missing_file_says_so(ctrd, short_tmp):
    result = ctrctl(ctrd, "load", "-i", str(short_tmp / "nope.tar"))
    assert result.returncode == 125
    assert (
        result.stderr.decode() == f"ctrctl: open {short_tmp}/nope.tar: No such file or directory\n"
    )


def test_the_quick_start(ctrd, short_tmp):
    """The README's steps: the set-up builds the archive, ctrctl loads it and runs echo."""
    readme = (REPO / "README.md").read_text()
    setup = (REPO / "deploy" / "setup.sh").read_text()
    script = REPO / "deploy" / "busybox-image.py"
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    steps = block.splitlines()
    [archive] = re.findall(r"ctrctl load -i (\S+)", block)
    assert f"deploy/busybox-image.py {archive}" in setup
    assert "./deploy/setup.sh && ctrd" in readme
    built = short_tmp / "images" / "busybox.tar"
    made = subprocess.run(
        [sys.executable, str(script), str(built)], capture_output=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert steps == [f"ctrctl load -i {archive}", "ctrctl run --rm busybox echo hello"]
    assert ok(ctrctl(ctrd, "load", "-i", str(built))) == "Loaded image: busybox:latest\n"
    assert ok(ctrctl(ctrd, "run", "--rm", "busybox", "echo", "hello")) == "hello\n"
    # Deterministic: built again, the same bytes.
    again = short_tmp / "again.tar"
    subprocess.run([sys.executable, str(script), str(again)], check=True, capture_output=True)
    assert again.read_bytes() == built.read_bytes()


def test_ctrctl_and_ctrd_default_to_the_same_socket():
    from ctl.main import DEFAULT_ADDRESS
    from supervisor.config import Config

    assert Config().grpc.address == DEFAULT_ADDRESS == "/run/ctrd/ctrd.sock"


def test_load_streams_a_large_layer_without_holding_it(ctrd, short_tmp):
    size = 96 << 20
    big = images.build_image(
        [images.busybox_layer(), [images.File("big", bytes(size))]], compression="none"
    )
    large = images.oci_archive(big, short_tmp / "large.tar", "large:1")
    del big
    small = images.oci_archive(images.busybox_image(), short_tmp / "small.tar", "small:1")

    def peak_kib(archive: Path) -> int:
        """The peak RSS of a `ctrctl load` of the archive (a child's, measured by its parent)."""
        measure = (
            "import resource, subprocess, sys;"
            "subprocess.run(sys.argv[1:], check=True, capture_output=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        load = [sys.executable, "-m", "ctl", "--address", ctrd.address, "load", "-i", str(archive)]
        out = subprocess.run(
            [sys.executable, "-c", measure, *load], capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert peak_kib(large) - peak_kib(small) < 24 << 10  # far below the layer's 96 MiB
    assert ok(ctrctl(ctrd, "run", "--rm", "large:1", "wc", "-c", "/big")) == f"{size} /big\n"
