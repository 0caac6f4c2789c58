"""A hostile image pulled with the real ctr: refused with a message naming the entry, nothing
written outside the snapshot, and what the failed unpack left behind can be removed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.support import images

pytestmark = pytest.mark.integration

PROBE = "ctrd-hostile-pull-probe"


def hostile_layer() -> images.Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("ok.txt", f"../../../../../../tmp/{PROBE}"):
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"owned"))
    raw = buf.getvalue()
    data = images.compress(raw)
    descriptor = images.Descriptor.of(images.LAYER_TYPES["oci", "gzip"], data)
    return images.Layer(descriptor, data, raw, images.sha256(raw))


def test_a_layer_that_climbs_out_is_refused_and_nothing_escapes(ctrd, registry):
    image = images.build_image([images.busybox_layer(), hostile_layer()])
    pushed = registry.push("library/hostile", "1", image)
    result = ctrd.ctr("images", "pull", "--plain-http", pushed.ref, check=False)
    assert result.returncode != 0
    assert f'entry "../../../../../../tmp/{PROBE}"' in result.stderr
    assert not Path("/tmp", PROBE).exists()
    assert not any(p.name == PROBE for p in ctrd.base.rglob(PROBE))
    # Whatever the failed unpack left (ctr removes its extract snapshot) can be removed.
    _, *rows = ctrd.ctr("snapshots", "ls").stdout.splitlines()
    for key in [r.split()[0] for r in rows if r.rstrip().endswith("Active")]:
        ctrd.ctr("snapshots", "rm", key)
    _, *rows = ctrd.ctr("snapshots", "ls").stdout.splitlines()
    assert not [r for r in rows if r.rstrip().endswith("Active")]
