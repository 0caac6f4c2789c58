"""The real ctr prints the same words, exits the same way and makes the same RPCs against ctrd
as against a real containerd (started by the test; see tests/support/compat.py), for the
command groups snapshots, namespaces, containers, content, leases, images (but import),
version and plugins: their success paths and every error path ctr can reach in them.

Table-driven: each case sets up its state through ctr itself on both daemons, in a namespace
of its own (`{ns}` in its arguments), then runs one ctr command line on both and compares
exit code, masked output and the RPC sequence (method and status code). `{archive}` names a
small OCI archive (one image, `IMAGE`) both daemons import.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import compat, images
from tests.support.registry import PushedImage

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/compat:1"
CONFIG_DIGEST = images.busybox_image().config_descriptor.digest
MISSING_IMAGE = "docker.io/library/nope:1"
LAYER_DIGEST = images.busybox_image().layers[0].descriptor.digest
MANIFEST_DIGEST = images.busybox_image().digest
MISSING_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def both() -> Iterator[compat.Both]:
    with compat.Both.started() as pair:
        yield pair


@pytest.fixture(scope="module")
def archive() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ctrd-compat-image-"))
    try:
        yield images.oci_archive(images.busybox_image(), directory / "image.tar", IMAGE)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Step:
    args: tuple[str, ...]
    input: bytes | None = None
    ns: str = ""  # when not the case's own


@dataclass(frozen=True)
class Case:
    name: str
    command: tuple[str, ...]
    setup: tuple[Step, ...] = ()
    masks: tuple[compat.Mask, ...] = ()
    calls: compat.CallOrder = "ordered"
    ns: str | None = None  # the namespace ctr names in `command`, when not the case's own
    input: bytes | None = None


def step(*args: str, input: bytes | None = None, ns: str = "") -> Step:
    return Step(args, input, ns)


IMPORT = step("images", "import", "{archive}")
# Blobs that stay: `ctr content ingest` writes under a lease of its own that it drops as it
# exits, after which either daemon collects the blob whenever it gets to it.
IMPORT_PLAIN = step("images", "import", "--no-unpack", "{archive}")
CONFIG_ONLY = (  # the image's config blob alone, kept by its gc.root label
    IMPORT_PLAIN,
    step("content", "label", CONFIG_DIGEST, "containerd.io/gc.root=kept"),
    step("images", "rm", "--sync", IMAGE),
)
PREPARE_COMMIT = (step("snapshots", "prepare", "a"), step("snapshots", "commit", "c", "a"))
LEASE = step("leases", "create", "--id", "l1")
CONTAINER = (IMPORT, step("containers", "create", IMAGE, "c1"))

LONG_LABEL = "k=" + "v" * 4100  # past containerd's 4096 bytes for a label

# ctr version prints the server's version and revision, and warns when they are not its own:
# ctrd is not containerd 1.6.20, and says so.
VERSION_MASKS = (
    (r"(?m)^(  (Version|Revision):).*\n(?=  (Revision|UUID))", r"\1 <server>\n"),
    (r"(?m)^WARNING: (version|revision) mismatch\n", ""),
)
# Where each daemon keeps a snapshot's directories is its own (the numbers in them, and ctrd
# keeps a native snapshot in an fs/ of its directory as it does an overlay one); the shapes
# of the mounts (types, options, which parts are fs/ and work/) are compared.
SNAPSHOT_DIR_MASKS = ((r"<base>/root/\S*?snapshots/\d+(/fs)?\b", "<snapshot>"),)
# ctr prints a label command's result in Go's map order, which is random: the gc.root label
# ctr or the case set goes, so that one label is left.
LABELLED_MASKS = ((r"(?m)^(.*?),?containerd\.io/gc\.root=[^,\n]*,?", r"\1"),)
# The content store and metadata store answer to the same IDs, and ctrd's plugins are fewer:
# the list itself is ctrd's own (the columns and the call are what ctr does either way).
PLUGIN_MASKS = ((r"(?s)TYPE +ID +PLATFORMS +STATUS *\n.*", "<plugins>\n"),)

CASES = (
    # --- version, plugins
    Case("version", ("version",), masks=VERSION_MASKS),
    Case("plugins-ls", ("plugins", "ls"), masks=PLUGIN_MASKS),
    Case("plugins-ls-filter-none", ("plugins", "ls", "type==nope")),
    # --- namespaces
    Case("namespaces-create-existing", ("namespaces", "create", "{ns}"),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("namespaces-rm-missing", ("namespaces", "rm", "{ns}-nope")),
    Case("namespaces-create-bad-name", ("namespaces", "create", "Bad/Name")),
    Case("namespaces-rm-with-two-snapshotters", ("namespaces", "rm", "{ns}"),
         setup=(step("snapshots", "prepare", "a"),
                step("snapshots", "--snapshotter", "native", "prepare", "a"))),
    Case("namespaces-label-missing", ("namespaces", "label", "{ns}-nope", "a=b")),
    Case("namespaces-rm-empty", ("namespaces", "rm", "{ns}"),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("namespaces-rm-with-content", ("namespaces", "rm", "{ns}"), setup=CONFIG_ONLY),
    Case("namespaces-rm-with-content-and-snapshots", ("namespaces", "rm", "{ns}"),
         setup=(IMPORT, step("content", "label", CONFIG_DIGEST, "containerd.io/gc.root=kept"),
                step("images", "rm", "--sync", IMAGE))),
    Case("namespaces-rm-with-image", ("namespaces", "rm", "{ns}"), setup=(IMPORT,)),
    Case("namespaces-rm-with-snapshot", ("namespaces", "rm", "{ns}"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("namespaces-rm-with-lease", ("namespaces", "rm", "{ns}"), setup=(LEASE,)),
    Case("namespaces-rm-with-container", ("namespaces", "rm", "{ns}"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    # --- snapshots
    Case("snapshots-rm-missing", ("snapshots", "rm", "does-not-exist")),
    Case("snapshots-rm-with-child", ("snapshots", "rm", "c"),
         setup=(*PREPARE_COMMIT, step("snapshots", "prepare", "b", "c"))),
    Case("snapshots-rm-active", ("snapshots", "rm", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-info-missing", ("snapshots", "info", "nope")),
    Case("snapshots-info", ("snapshots", "info", "c"), setup=PREPARE_COMMIT),
    Case("snapshots-mounts-missing", ("snapshots", "mounts", "/mnt", "nope")),
    Case("snapshots-mounts-of-committed", ("snapshots", "mounts", "/mnt", "c"),
         setup=PREPARE_COMMIT),
    Case("snapshots-commit-missing", ("snapshots", "commit", "c", "nope")),
    Case("snapshots-commit-missing-beside-others", ("snapshots", "commit", "c", "nope"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-commit-of-view", ("snapshots", "commit", "d", "v"),
         setup=(*PREPARE_COMMIT, step("snapshots", "view", "v", "c"))),
    Case("snapshots-mounts-of-view", ("snapshots", "mounts", "/mnt", "v"),
         setup=(*PREPARE_COMMIT, step("snapshots", "view", "v", "c")),
         masks=SNAPSHOT_DIR_MASKS),
    Case("snapshots-prepare-after-refused-one", ("snapshots", "prepare", "--mounts", "c", "a"),
         setup=(step("snapshots", "prepare", "a"),), masks=SNAPSHOT_DIR_MASKS),
    Case("snapshots-commit-existing-name", ("snapshots", "commit", "c", "b"),
         setup=(*PREPARE_COMMIT, step("snapshots", "prepare", "b"))),
    Case("snapshots-commit-of-committed", ("snapshots", "commit", "d", "c"), setup=PREPARE_COMMIT),
    Case("snapshots-prepare-existing", ("snapshots", "prepare", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-prepare-missing-parent", ("snapshots", "prepare", "a", "nope")),
    Case("snapshots-prepare-active-parent", ("snapshots", "prepare", "b", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-view-existing", ("snapshots", "view", "c", "c"), setup=PREPARE_COMMIT),
    Case("snapshots-view-missing-parent", ("snapshots", "view", "v", "nope")),
    Case("snapshots-label-missing", ("snapshots", "label", "nope", "a=b")),
    Case("snapshots-usage-missing", ("snapshots", "usage", "nope")),
    Case("snapshots-tree", ("snapshots", "tree"),
         setup=(*PREPARE_COMMIT, step("snapshots", "prepare", "b", "c"))),
    Case("snapshots-ls", ("snapshots", "ls"),
         setup=(*PREPARE_COMMIT, step("snapshots", "prepare", "b", "c"))),
    Case("snapshots-diff-missing", ("snapshots", "diff", "nope")),
    Case("snapshots-unknown-snapshotter", ("snapshots", "--snapshotter", "nope", "ls")),
    # --- containers
    Case("containers-info-missing", ("containers", "info", "nope")),
    Case("containers-rm-missing", ("containers", "rm", "nope")),
    Case("containers-label-missing", ("containers", "label", "nope", "a=b")),
    Case("containers-create-existing", ("containers", "create", IMAGE, "c1"), setup=CONTAINER),
    Case("containers-create-missing-image", ("containers", "create", MISSING_IMAGE, "c1")),
    Case("containers-create-bad-id", ("containers", "create", "--rootfs", "/", "Bad/Id")),
    Case("containers-ls", ("containers", "ls"), setup=CONTAINER),
    Case("tasks-kill-missing-container", ("tasks", "kill", "nope")),
    # --- content
    Case("content-get-missing", ("content", "get", MISSING_DIGEST)),
    Case("content-rm-missing", ("content", "rm", MISSING_DIGEST)),
    Case("content-label-missing", ("content", "label", MISSING_DIGEST, "a=b")),
    Case("content-get-bad-digest", ("content", "get", "nope")),
    Case("content-get-bad-hex", ("content", "get", "sha256:abc")),
    Case("content-get-unknown-algorithm", ("content", "get", "md5:" + "0" * 32)),
    Case("content-rm-bad-digest", ("content", "rm", "nope")),
    Case("content-label-bad-digest", ("content", "label", "nope", "a=b")),
    Case("content-get", ("content", "get", CONFIG_DIGEST), setup=CONFIG_ONLY),
    Case("content-ls", ("content", "ls"), setup=CONFIG_ONLY),
    Case("content-ingest-existing", ("content", "ingest", "again"), setup=CONFIG_ONLY,
         input=images.busybox_image().config),
    Case("content-active", ("content", "active")),
    # --- leases
    Case("leases-rm-missing", ("leases", "rm", "nope")),
    Case("leases-create-existing", ("leases", "create", "--id", "l1"), setup=(LEASE,)),
    Case("leases-ls", ("leases", "ls"), setup=(LEASE,)),
    # --- images
    Case("images-rm-missing", ("images", "rm", MISSING_IMAGE)),
    Case("images-tag-missing", ("images", "tag", MISSING_IMAGE, "x:1")),
    Case("images-tag-existing", ("images", "tag", IMAGE, IMAGE), setup=(IMPORT,)),
    Case("images-tag-existing-target", ("images", "tag", IMAGE, "docker.io/library/other:1"),
         setup=(IMPORT, step("images", "tag", IMAGE, "docker.io/library/other:1"))),
    Case("images-check-missing", ("images", "check", "name==docker.io/library/nope:1")),
    Case("images-check", ("images", "check"), setup=(IMPORT,)),
    Case("images-ls", ("images", "ls"), setup=(IMPORT,)),
    Case("images-label-missing", ("images", "label", MISSING_IMAGE, "a=b")),
    Case("images-export-missing", ("images", "export", "{base}/out.tar", MISSING_IMAGE)),
    Case("images-mount-missing", ("images", "mount", MISSING_IMAGE, "/mnt")),
    # --- a namespace name ctr sends that no service takes
    *(Case(f"bad-namespace-{group}", (group, "ls"), ns="Bad/Name")
      for group in ("images", "containers", "content", "snapshots", "leases", "tasks")),
    Case("bad-namespace-snapshots-prepare", ("snapshots", "prepare", "a"), ns="Bad/Name"),
    Case("bad-namespace-content-ingest", ("content", "ingest", "x"), ns="Bad/Name"),
    Case("bad-namespace-leases-create", ("leases", "create"), ns="Bad/Name"),
    Case("bad-namespace-containers-create", ("containers", "create", "--rootfs", "/", "c1"),
         ns="Bad/Name"),
    # --- more of each group
    Case("plugins-ls-one", ("plugins", "ls", "id==content")),
    Case("plugins-ls-grpc", ("plugins", "ls", "type==io.containerd.grpc.v1")),
    Case("namespaces-label", ("namespaces", "label", "{ns}", "a=b"),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("namespaces-ls-quiet", ("namespaces", "ls", "-q")),
    Case("namespaces-rm-two-one-missing", ("namespaces", "rm", "{ns}-nope", "{ns}"),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("snapshots-label", ("snapshots", "label", "c", "a=b"), setup=PREPARE_COMMIT,
         masks=LABELLED_MASKS),
    Case("snapshots-label-gc-ref", ("snapshots", "info", "c"),
         setup=(*PREPARE_COMMIT, step("snapshots", "label", "c", "containerd.io/gc.ref.x=y"))),
    Case("snapshots-rm-two-one-missing", ("snapshots", "rm", "nope", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-prepare-target", ("snapshots", "prepare", "--target", "/mnt", "b", "c"),
         setup=PREPARE_COMMIT, masks=SNAPSHOT_DIR_MASKS),
    Case("snapshots-view-info", ("snapshots", "info", "v"),
         setup=(*PREPARE_COMMIT, step("snapshots", "view", "v", "c"))),
    Case("snapshots-usage-bytes", ("snapshots", "usage", "-b")),
    Case("containers-label", ("containers", "label", "c1", "a=b"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("containers-rm-two-one-missing", ("containers", "rm", "nope", "c1"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("containers-info-spec", ("containers", "info", "--spec", "c1"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("containers-ls-quiet-filter", ("containers", "ls", "-q", "id==c1"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("content-label", ("content", "label", CONFIG_DIGEST, "a=b"), setup=CONFIG_ONLY,
         masks=LABELLED_MASKS),
    Case("content-rm", ("content", "rm", CONFIG_DIGEST), setup=CONFIG_ONLY),
    Case("content-ingest-wrong-digest", ("content", "ingest", "--expected-digest",
                                         MISSING_DIGEST, "wrong"), ),
    Case("content-ingest-wrong-size", ("content", "ingest", "--expected-size", "3", "short")),
    Case("content-ls-quiet", ("content", "ls", "-q"), setup=CONFIG_ONLY),
    Case("content-ls-filter", ("content", "ls", "digest==" + CONFIG_DIGEST), setup=CONFIG_ONLY),
    Case("content-get-other-namespace", ("content", "get", CONFIG_DIGEST),
         setup=(step("images", "import", "--no-unpack", "{archive}", ns="{ns}-other"),)),
    Case("leases-create-expiring", ("leases", "create", "--id", "l2", "--expires", "1h")),
    Case("leases-create-labelled", ("leases", "create", "--id", "l3", "a=b")),
    Case("leases-rm", ("leases", "rm", "l1"), setup=(LEASE,)),
    Case("leases-rm-sync", ("leases", "rm", "--sync", "l1"), setup=(LEASE,)),
    Case("leases-rm-two-one-missing", ("leases", "rm", "nope", "l1"), setup=(LEASE,)),
    Case("leases-ls-quiet", ("leases", "ls", "-q"), setup=(LEASE,)),
    Case("images-rm", ("images", "rm", IMAGE), setup=(IMPORT,)),
    Case("images-rm-sync", ("images", "rm", "--sync", IMAGE), setup=(IMPORT,)),
    Case("images-rm-two-one-missing", ("images", "rm", MISSING_IMAGE, IMAGE), setup=(IMPORT,)),
    Case("images-tag-force", ("images", "tag", "--force", IMAGE, "docker.io/library/other:1"),
         setup=(IMPORT, step("images", "tag", IMAGE, "docker.io/library/other:1"))),
    Case("images-tag-bad-name", ("images", "tag", IMAGE, "Bad Name"), setup=(IMPORT,)),
    Case("images-label", ("images", "label", IMAGE, "a=b"), setup=(IMPORT,)),
    Case("images-ls-quiet", ("images", "ls", "-q"), setup=(IMPORT,)),
    # --- identifiers and labels each store checks
    Case("leases-create-bad-id", ("leases", "create", "--id", "Bad/Id")),
    Case("leases-create-long-label", ("leases", "create", "--id", "l1", LONG_LABEL)),
    Case("namespaces-label-long", ("namespaces", "label", "{ns}", LONG_LABEL),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("namespaces-create-long-label", ("namespaces", "create", "{ns}-new", LONG_LABEL)),
    Case("content-label-long", ("content", "label", CONFIG_DIGEST, LONG_LABEL),
         setup=CONFIG_ONLY),
    Case("images-label-long", ("images", "label", IMAGE, LONG_LABEL), setup=(IMPORT_PLAIN,)),
    Case("containers-label-long", ("containers", "label", "c1", LONG_LABEL),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("containers-create-long-label", ("containers", "create", "--label", LONG_LABEL,
                                          "--rootfs", "/", "c1")),
    Case("snapshots-label-long", ("snapshots", "label", "a", LONG_LABEL),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-label-empty-key", ("snapshots", "label", "a", "=x"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("containers-create-unknown-snapshotter", ("containers", "create", "--snapshotter",
                                                   "nope", IMAGE, "c1"), setup=(IMPORT,)),
    Case("images-unmount-missing", ("images", "unmount", "{base}/not-mounted")),
    Case("snapshots-unpack-missing", ("snapshots", "unpack", MISSING_DIGEST)),
    # ctr writes the diff's gzip stream out: compressors differ byte for byte (Go's and zlib)
    Case("snapshots-diff-empty", ("snapshots", "diff", "b"),
         setup=(*PREPARE_COMMIT, step("snapshots", "prepare", "b", "c")),
         masks=((r"(?s)(--- output\n)?.+", "<gzip stream>"),)),
    Case("content-label-empty-key", ("content", "label", CONFIG_DIGEST, "=x"),
         setup=CONFIG_ONLY),
    Case("images-label-empty-key", ("images", "label", IMAGE, "=x"), setup=(IMPORT_PLAIN,)),
    Case("containers-label-empty-key", ("containers", "label", "c1", "=x"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("namespaces-label-empty-key", ("namespaces", "label", "{ns}", "=x"),
         setup=(step("namespaces", "create", "{ns}"),)),
    Case("namespaces-create-empty-key", ("namespaces", "create", "{ns}-new", "=x")),
    Case("leases-create-empty-key", ("leases", "create", "--id", "l1", "=x")),
    # --- and more
    Case("content-rm-two-one-missing", ("content", "rm", MISSING_DIGEST, CONFIG_DIGEST),
         setup=CONFIG_ONLY),
    Case("content-label-remove", ("content", "label", CONFIG_DIGEST, "containerd.io/gc.root="),
         setup=CONFIG_ONLY),
    Case("content-fetch-missing", ("content", "fetch", "--plain-http", "127.0.0.1:9/x/y:1")),
    Case("images-check-missing-manifest", ("images", "check"),
         setup=(IMPORT_PLAIN, step("content", "rm", MANIFEST_DIGEST))),
    Case("images-label-remove", ("images", "label", IMAGE, "a="),
         setup=(IMPORT_PLAIN, step("images", "label", IMAGE, "a=b"))),
    Case("containers-label-remove", ("containers", "label", "c1", "a="),
         setup=(step("containers", "create", "--label", "a=b", "--rootfs", "/", "c1"),)),
    Case("containers-create-native", ("containers", "create", "--snapshotter", "native",
                                      IMAGE, "c1"), setup=(IMPORT,)),
    Case("containers-create-existing-rootfs", ("containers", "create", "--rootfs", "/", "c1"),
         setup=(step("containers", "create", "--rootfs", "/", "c1"),)),
    Case("snapshots-commit-existing-name-missing-key", ("snapshots", "commit", "c", "nope"),
         setup=PREPARE_COMMIT),
    Case("snapshots-view-active-parent", ("snapshots", "view", "v", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-native-prepare", ("snapshots", "--snapshotter", "native", "prepare",
                                      "--mounts", "b", "c"),
         setup=(step("snapshots", "--snapshotter", "native", "prepare", "a"),
                step("snapshots", "--snapshotter", "native", "commit", "c", "a")),
         masks=SNAPSHOT_DIR_MASKS),
    Case("snapshots-native-rm-with-child", ("snapshots", "--snapshotter", "native", "rm", "c"),
         setup=(step("snapshots", "--snapshotter", "native", "prepare", "a"),
                step("snapshots", "--snapshotter", "native", "commit", "c", "a"),
                step("snapshots", "--snapshotter", "native", "view", "v", "c"))),
    Case("namespaces-label-remove", ("namespaces", "label", "{ns}", "a="),
         setup=(step("namespaces", "create", "{ns}", "a=b"),)),
    Case("namespaces-rm-two", ("namespaces", "rm", "{ns}-x", "{ns}-y"),
         setup=(step("namespaces", "create", "{ns}-x"), step("namespaces", "create", "{ns}-y"))),
    Case("leases-rm-with-resources", ("leases", "rm", "l1"),
         setup=(LEASE,)),
    # --- no namespace at all
    *(Case(f"no-namespace-{group}", (group, "ls"), ns="")
      for group in ("images", "containers", "content", "snapshots", "leases")),
    Case("no-namespace-namespaces-ls", ("namespaces", "ls"), ns=""),
    # --- ctr content edit: the editor leaves the blob as it was, or there is no blob
    Case("content-edit-unchanged", ("content", "edit", "--editor", "true", CONFIG_DIGEST),
         setup=CONFIG_ONLY),
    Case("content-edit-missing", ("content", "edit", "--editor", "true", MISSING_DIGEST)),
    Case("leases-create-random-id", ("leases", "create"),
         masks=((r"(?m)^\S+$", "<random id>"),)),
    # --- odd but allowed, or not
    Case("snapshots-prepare-own-parent", ("snapshots", "prepare", "a", "a")),
    Case("snapshots-commit-onto-itself", ("snapshots", "commit", "a", "a"),
         setup=(step("snapshots", "prepare", "a"),)),
    Case("snapshots-view-no-parent", ("snapshots", "view", "v"), masks=SNAPSHOT_DIR_MASKS),
    Case("snapshots-info-after-view", ("snapshots", "ls"),
         setup=(step("snapshots", "view", "v"),)),
    Case("namespaces-create-empty-value", ("namespaces", "ls"),
         setup=(step("namespaces", "create", "{ns}", "a="),)),
    Case("containers-create-empty-label-value", ("containers", "info", "c1"),
         setup=(step("containers", "create", "--label", "a=", "--rootfs", "/", "c1"),),
         masks=((r'(?s)"Spec": \{.*', "<spec>"),)),
    Case("leases-create-empty-label-value", ("leases", "ls"),
         setup=(step("leases", "create", "--id", "l1", "a="),)),
    Case("images-tag-onto-itself-force", ("images", "tag", "--force", IMAGE, IMAGE),
         setup=(IMPORT_PLAIN,)),
    # --- filters: containerd's parser and its words, wrapped as each call wraps them
    Case("images-ls-bad-filter", ("images", "ls", "name==")),
    Case("images-ls-empty-filter", ("images", "ls", "")),
    Case("images-ls-blank-filter", ("images", "ls", "  ")),
    Case("images-ls-trailing-space", ("images", "ls", "name==x ")),
    Case("images-ls-filter", ("images", "ls", f"name=={IMAGE}"), setup=(IMPORT,)),
    Case("images-ls-regex-filter", ("images", "ls", "name~=/compat:[0-9]/"), setup=(IMPORT,)),
    Case("images-ls-bad-escape", ("images", "ls", r"name~=/a\.b/")),
    Case("containers-ls-bad-filter", ("containers", "ls", "id==")),
    Case("content-ls-bad-filter", ("content", "ls", "labels.==")),
    Case("content-ls-bad-quote", ("content", "ls", "labels.x==/y/")),
    Case("leases-ls-bad-filter", ("leases", "ls", "id===x")),
    Case("plugins-ls-bad-filter", ("plugins", "ls", "type==a b")),
    Case("plugins-ls-unterminated", ("plugins", "ls", 'id=="x')),
    Case("images-check-incomplete", ("images", "check"),
         setup=(IMPORT, step("content", "rm", LAYER_DIGEST))),
    Case("images-export", ("images", "export", "{base}/out.tar", IMAGE), setup=(IMPORT,),
         calls="unordered"),
    Case("images-export-incomplete", ("images", "export", "{base}/out.tar", IMAGE),
         setup=(IMPORT, step("content", "rm", LAYER_DIGEST))),
)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_ctr_says_what_containerd_says(both: compat.Both, archive: Path, case: Case) -> None:
    ns = f"compat-{case.name}"

    def expand(args: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(arg.replace("{ns}", ns).replace("{archive}", str(archive)) for arg in args)

    for setup in case.setup:
        both.setup(*expand(setup.args), ns=expand((setup.ns,))[0] or ns, input=setup.input)
    pair = both.ctr(
        *expand(case.command),
        ns=ns if case.ns is None else case.ns,
        input=case.input,
        masks=case.masks,
    )
    compat.assert_same(pair, case.calls)


# ctr's progress display polls the content store every 100 ms while a pull runs (Info,
# ListStatuses) and prints sizes, rates and times: how many polls and what they saw depend on
# how long each step took, so they are left out, and so are its frames; the fetch, unpack and
# image calls are compared as a multiset, and what ctr prints from the unpacking on.
PULL_POLLS = ("Content/Info", "Content/ListStatuses")
PULL_MASKS = (
    # a poll the end of the pull cancels says so, or not, as the timing falls
    (r'(?m)^time="<time>" level=error msg=".*" error="context canceled"\n', ""),
    # the display's frames (how many, and what each caught in flight) up to the unpacking
    (r"(?sm)\A.*?(?=^unpacking )", "<progress>\n"),
    (r"(?m)^done: .*$", "done: <time>"),
)
# a push prints only such frames (each row with its bar, then the rates)
PUSH_MASKS = ((r"(?m)^(.*\|.*\|.*|elapsed: .*)\n", ""),)


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("pull", ("images", "pull", "--plain-http", "{registry}/library/busybox:latest")),
        ("pull-missing", ("images", "pull", "--plain-http", "{registry}/library/nope:1")),
        ("fetch", ("content", "fetch", "--plain-http", "{registry}/library/busybox:latest")),
        ("fetch-object", ("content", "fetch-object", "--plain-http",
                          "{registry}/library/busybox:latest")),
        ("fetch-object-missing", ("content", "fetch-object", "--plain-http",
                                  "{registry}/library/busybox@" + MISSING_DIGEST)),
    ],
)  # fmt: skip
def test_ctr_fetches_from_a_registry_saying_what_containerd_says(
    both: compat.Both, busybox_image: PushedImage, name: str, command: tuple[str, ...]
) -> None:
    registry = busybox_image.ref.split("/", 1)[0]
    args = [arg.replace("{registry}", registry) for arg in command]
    pair = both.ctr(*args, ns=f"compat-{name}", masks=(*PULL_MASKS, *PUSH_MASKS))
    compat.assert_same(pair, "unordered", ignoring=PULL_POLLS)


def test_ctr_push_to_a_registry_says_what_containerd_says(
    both: compat.Both, archive: Path, busybox_image: PushedImage
) -> None:
    ns = "compat-push"
    target = busybox_image.ref.split("/", 1)[0] + "/compat/pushed:1"
    both.setup("images", "import", "--no-unpack", str(archive), ns=ns)
    both.setup("images", "tag", IMAGE, target, ns=ns)
    # the first push of each uploads what the registry lacks, which depends on who was first
    both.setup("images", "push", "--plain-http", target, ns=ns)
    again = both.ctr("images", "push", "--plain-http", target, ns=ns, masks=PUSH_MASKS)
    compat.assert_same(again, "unordered", ignoring=PULL_POLLS)
    missing = both.ctr("images", "push", "--plain-http", target + "-nope", ns=ns, masks=PUSH_MASKS)
    compat.assert_same(missing)


def test_ctr_images_mount_and_unmount_say_what_containerd_says(
    both: compat.Both, archive: Path
) -> None:
    ns = "compat-mount"
    both.setup("images", "import", str(archive), ns=ns)
    for side in both.sides:
        (side.base / "mnt").mkdir(exist_ok=True)
    try:
        mounted = both.ctr("images", "mount", IMAGE, "{base}/mnt", ns=ns, masks=SNAPSHOT_DIR_MASKS)
        compat.assert_same(mounted)
        again = both.ctr("images", "mount", IMAGE, "{base}/mnt", ns=ns)
        compat.assert_same(again)
    finally:
        unmounted = both.ctr("images", "unmount", "{base}/mnt", ns=ns)
    compat.assert_same(unmounted)
