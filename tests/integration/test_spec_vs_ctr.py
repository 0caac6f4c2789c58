"""The proof that ctrctl's containers look like ctr's: for the same image and options, the spec
`ctl.spec.generate` builds equals the one the real ctr (containerd 1.6's client) sends.

Each case creates a container with ctr, reads its spec back through the Containers service,
and builds ours from what the daemon's content store holds: the image config (manifest ->
config blob) and the image's /etc/passwd and /etc/group (unpacked from its layer blobs).

Normalized, and why (nothing else is):
- `linux.resources.cpu.shares` == 1024 in specs made by `ctr run`: its --cpu-shares flag
  defaults to 1024 (the kernel's default weight) and is always applied; `ctr containers
  create` has no such flag and leaves it unset, as ctrctl does. (`--cpus` exists only on
  `ctr run`, hence that one case runs.)
- `process.env` is compared in sorted order and `process.user.additionalGids` not at all, in
  both specs: ctrctl merges the image config by dockerd's rules (ctl.spec's docstring), which
  give the same variables in another order, and other additional gids; those are checked
  against the real dockerd in test_run_config.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ctl.spec import RunOptions, generate
from supervisor.api.containerd.services.containers.v1 import containers_pb2 as pb
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from tests.conftest import Ctrd
from tests.support import images
from tests.support.registry import PushedImage, Registry

pytestmark = pytest.mark.integration

# Not `sh -c ...`: `ctr containers create` reorders flags (urfave/cli) and takes that -c for
# its --config, and a `--` would end up in the args.
COMMAND = ("sleep", "10")
MEMORY = 64 << 20
# The users image: www-data (33) in a group of its own and in `staff`; root in `wheel`.
PASSWD = images.PASSWD + b"www-data:x:33:33:www-data:/var/www:/bin/false\n"
GROUP = images.GROUP + b"www-data:x:33:\nstaff:x:50:www-data\nwheel:x:10:root\n"


@dataclass(frozen=True)
class Case:
    name: str
    flags: Sequence[str]  # ctr's options
    options: RunOptions  # ours, for the same container
    args: Sequence[str] = COMMAND
    mode: str = "create"  # "run" for what only `ctr run` takes (--cpus)


def plain(**kwargs: Any) -> RunOptions:
    return RunOptions(args=COMMAND, **kwargs)


_BLOBS: dict[str, bytes] = {}  # content-addressed: the same digest is the same bytes


def content(ctrd: Ctrd, digest: str) -> bytes:
    if digest not in _BLOBS:
        _BLOBS[digest] = ctrd.ctr("content", "get", digest).stdout.encode("latin-1")
    return _BLOBS[digest]


def pull(ctrd: Ctrd, image: PushedImage, rootfs: Path) -> dict[str, Any]:
    """Pull; then the image's config object from the content store, and its /etc/passwd and
    /etc/group unpacked from its layers into `rootfs` (an upper layer's copy wins)."""
    ctrd.ctr("images", "pull", "--plain-http", image.ref)
    manifest = json.loads(content(ctrd, image.digest))
    config = json.loads(content(ctrd, manifest["config"]["digest"]))
    (rootfs / "etc").mkdir(parents=True)
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(content(ctrd, layer["digest"]))) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if name in ("etc/passwd", "etc/group") and member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    (rootfs / name).write_bytes(data.read())
    settings: dict[str, Any] = config["config"]
    return settings


def ctr_spec(ctrd: Ctrd, cid: str) -> dict[str, Any]:
    stub = ctrd.stub(pb_grpc.ContainersStub)
    got = stub.Get(pb.GetContainerRequest(id=cid), metadata=(("containerd-namespace", "default"),))
    assert got.container.spec.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    spec: dict[str, Any] = json.loads(got.container.spec.value)
    return spec


def normalize(spec: dict[str, Any], case: Case) -> dict[str, Any]:
    cpu = spec.get("linux", {}).get("resources", {}).get("cpu", {})
    if case.mode == "run" and cpu.get("shares") == 1024:
        del cpu["shares"]
    return docker_merged(spec)


def docker_merged(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy without what ctrctl merges by dockerd's rules: env order, additional gids."""
    spec = json.loads(json.dumps(spec))
    process = spec["process"]
    process["env"] = sorted(process.get("env", []))
    process["user"].pop("additionalGids", None)
    return spec


def same_spec(
    ctrd: Ctrd, ref: str, config: dict[str, Any], rootfs: Path, case: Case, cid: str
) -> dict[str, Any]:
    """Create `cid` with ctr and with generate(); returns ctr's spec once both are equal."""
    if case.mode == "run":
        ctrd.ctr("run", "--fifo-dir", ctrd.fifo_dir(), *case.flags, ref, cid, *case.args)
    else:
        ctrd.ctr("containers", "create", *case.flags, ref, cid, *case.args)
    theirs = ctr_spec(ctrd, cid)
    ours = generate("default", cid, config, case.options, rootfs)
    assert json.loads(json.dumps(ours)) == ours  # JSON-ready as it is
    same = docker_merged(ours) == normalize(theirs, case)
    assert same, f"case {case.name!r}: ctr {' '.join(case.flags)}"
    return theirs


OPTION_CASES = [
    Case("image's Cmd", [], RunOptions(), args=()),
    Case("args", [], plain()),
    Case("env", ["--env", "GREETING=hello", "--env", "PATH=/bin"],
         plain(env=("GREETING=hello", "PATH=/bin"))),
    Case("cwd", ["--cwd", "/tmp"], plain(workdir="/tmp")),
    Case("tty", ["--tty"], plain(tty=True)),
    Case("read-only", ["--read-only"], plain(read_only=True)),
    Case("net-host", ["--net-host"], plain(network="host")),
    Case("privileged", ["--privileged"], plain(privileged=True)),
    Case("memory", ["--memory-limit", str(MEMORY)], plain(memory=MEMORY)),
    Case("mount", ["--mount", "type=bind,src=/tmp,dst=/mnt,options=rbind:ro"],
         plain(mounts=[{"destination": "/mnt", "type": "bind", "source": "/tmp",
                        "options": ["rbind", "ro"]}])),
    Case("annotation", ["--annotation", "org.example.a=b"],
         plain(annotations={"org.example.a": "b"})),
    Case("together", ["--tty", "--net-host", "--privileged", "--read-only", "--env", "A=1",
                      "--memory-limit", str(MEMORY), "--cwd", "/tmp"],
         plain(tty=True, network="host", privileged=True, read_only=True, env=("A=1",),
               memory=MEMORY, workdir="/tmp")),
    Case("cpus", ["--cpus", "0.5"], RunOptions(args=("true",), cpus=0.5), ("true",), "run"),
]  # fmt: skip


def test_ctr_and_generate_make_the_same_spec_for_each_option(ctrd, busybox_image, short_tmp):
    config = pull(ctrd, busybox_image, short_tmp / "rootfs")
    specs = {
        case.name: same_spec(ctrd, busybox_image.ref, config, short_tmp / "rootfs", case, f"o{n}")
        for n, case in enumerate(OPTION_CASES)
    }
    # Not equal by being empty: the options took effect on ctr's side too.
    privileged = specs["privileged"]["linux"]
    assert privileged["devices"]
    assert "maskedPaths" not in privileged
    assert {"type": "network"} not in specs["net-host"]["linux"]["namespaces"]
    assert specs["cpus"]["linux"]["resources"]["cpu"] == {"quota": 50_000, "period": 100_000}


# (image config User, uid, gid, additionalGids), as containerd's TestContainerUser* expect.
USERS = [
    ("", 0, 0, [0, 10]),
    ("www-data", 33, 33, [33, 50]),
    ("www-data:www-data", 33, 33, [33, 50]),
    ("1001:www-data", 1001, 33, [33]),
    ("www-data:1002", 33, 1002, [1002, 50]),
    ("1001:1002", 1001, 1002, [1002]),
    ("1001", 1001, 0, [0]),  # no passwd entry: gid 0 (WithUserID)
    ("33", 33, 33, [33, 50]),
    ("33:www-data", 33, 33, [33, 50]),
]


@pytest.fixture(scope="module")
def users_images(registry: Registry) -> list[PushedImage]:
    extra = [images.Dir("etc"), images.File("etc/passwd", PASSWD), images.File("etc/group", GROUP)]
    pushed = []
    for n, (user, *_) in enumerate(USERS):
        config = {"User": user} if user else {}
        image = images.build_image([images.busybox_layer(), extra], config=config)
        pushed.append(registry.push("library/specusers", f"u{n}", image))
    return pushed


def test_ctr_and_generate_resolve_image_users_alike(ctrd, users_images, short_tmp):
    pairs = zip(USERS, users_images, strict=True)
    for n, ((user, uid, gid, additional), image) in enumerate(pairs):
        rootfs = short_tmp / f"rootfs{n}"
        config = pull(ctrd, image, rootfs)
        assert config.get("User", "") == user
        case = Case(f"user {user!r}", [], plain())
        spec = same_spec(ctrd, image.ref, config, rootfs, case, f"u{n}")
        got = spec["process"]["user"]
        assert (got["uid"], got["gid"], got["additionalGids"]) == (uid, gid, additional), user
    # The same users given to ctrctl rather than by the image resolve the same way.
    config = pull(ctrd, users_images[0], short_tmp / "rootfs-given")
    for user, uid, gid, _ in USERS[1:]:
        spec = generate("default", "g", config, plain(user=user), short_tmp / "rootfs-given")
        assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (uid, gid)
