"""The collector's pure core (marking, label references) and its sweep over a real database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from supervisor.content.local import LocalStore
from supervisor.metadata.content import ContentStore
from supervisor.metadata.db import Database
from supervisor.metadata.gc import Collector, label_references, mark
from supervisor.metadata.images import Descriptor, Image, ImageStore
from supervisor.metadata.leases import LeaseStore, parse_time

NODES = st.integers(min_value=0, max_value=30)


@given(
    edges=st.dictionaries(NODES, st.lists(NODES, max_size=4), max_size=30),
    roots=st.lists(NODES, max_size=5),
)
def test_mark_is_exactly_what_a_naive_closure_reaches(edges, roots):
    def node(i: int):
        return ("content", "ns", str(i))

    marked = mark([node(r) for r in roots], lambda n: [node(j) for j in edges.get(int(n[2]), [])])
    reached = set(roots)
    changed = True
    while changed:
        changed = False
        for src in list(reached):
            for dst in edges.get(src, []):
                if dst not in reached:
                    reached.add(dst)
                    changed = True
    assert marked == {node(i) for i in reached}


def test_label_references_follow_containerds_spellings():
    labels = {
        "containerd.io/gc.ref.content": "sha256:a",
        "containerd.io/gc.ref.content.config": "sha256:b",
        "containerd.io/gc.ref.content.l.0": "sha256:c",
        "containerd.io/gc.ref.content/child": "sha256:d",
        "containerd.io/gc.ref.snapshot.overlayfs": "chain",
        "containerd.io/gc.ref.snapshot.native/1": "other",
        "containerd.io/gc.ref.contentx": "sha256:no",
        "containerd.io/gc.root": "yes",
        "unrelated": "sha256:no",
    }
    assert sorted(label_references(labels)) == [
        ("content", "sha256:a"), ("content", "sha256:b"), ("content", "sha256:c"),
        ("content", "sha256:d"), ("snapshots/native", "other"), ("snapshots/overlayfs", "chain"),
    ]  # fmt: skip


def test_parse_time_reads_go_rfc3339():
    assert parse_time("1970-01-01T00:00:01Z") == 1_000_000_000
    assert parse_time("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_time("1970-01-01T01:00:01.123456789+01:00") == 1_123_456_789
    assert parse_time("tomorrow") is None


async def put(store: ContentStore, data: bytes, labels: dict[str, str] | None = None) -> str:
    writer = await store.writer(f"ref-{hash(data)}")
    await writer.write(data)
    return await writer.commit(len(data), "", labels or {})


def test_sweep_keeps_what_images_leases_and_roots_reach(tmp_path: Path):
    async def scenario() -> None:
        db = await Database.open(tmp_path / "meta.db")
        blobs = LocalStore(tmp_path / "content")
        gc = Collector(db, blobs)
        store = ContentStore(db, blobs, "ns")
        layer = await put(store, b"layer")
        config = await put(store, b"config")
        manifest = await put(
            store,
            b"manifest",
            {
                "containerd.io/gc.ref.content.config": config,
                "containerd.io/gc.ref.content.l.0": layer,
            },
        )
        orphan = await put(store, b"orphan")
        rooted = await put(store, b"rooted", {"containerd.io/gc.root": "1"})
        await LeaseStore(db, "ns").create("l1", {})
        leased = await put(ContentStore(db, blobs, "ns", lease="l1"), b"leased")
        expired_lease = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 10))
        await LeaseStore(db, "ns").create("old", {"containerd.io/gc.expire": expired_lease})
        stale = await put(ContentStore(db, blobs, "ns", lease="old"), b"stale")
        await ImageStore(db, "ns").create(
            Image("img", Descriptor("application/json", manifest, len(b"manifest")))
        )
        result = await gc.collect()
        assert (result.blobs, result.leases, result.files) == (2, 1, 2)
        kept = {i.digest for i in await store.list()}
        assert kept == {layer, config, manifest, rooted, leased}
        assert not blobs.blob_path(orphan).exists()
        assert not blobs.blob_path(stale).exists()
        assert blobs.blob_path(layer).exists()
        # Another namespace's record keeps shared bytes on disk after this one lets go.
        other = ContentStore(db, blobs, "other")
        w = await other.writer("share", expected=layer)
        await w.commit(0, layer, {"containerd.io/gc.root": "1"})
        await ImageStore(db, "ns").delete("img")
        await gc.collect()
        assert {i.digest for i in await store.list()} == {rooted, leased}
        assert blobs.blob_path(layer).exists()
        assert not blobs.blob_path(config).exists()
        rows = await db.read(lambda c: c.execute("SELECT labels FROM leases").fetchall())
        assert [json.loads(r[0]) for r in rows] == [{}]
        await db.close()

    asyncio.run(scenario())


def test_sweep_spares_an_ingest_being_created(tmp_path: Path):
    """A writer's ingest directory exists as `<hash>.tmp` before the file naming its ref does;
    a collection running in that instant must not take it (seen as a flaky ctr import)."""

    async def scenario() -> None:
        db = await Database.open(tmp_path / "meta.db")
        blobs = LocalStore(tmp_path / "content")
        gc = Collector(db, blobs)
        creating = blobs.ingest_dir("being-created").with_name("x.tmp")
        creating.mkdir()
        abandoned = blobs.ingest_dir("abandoned")
        abandoned.mkdir()
        (abandoned / "ref").write_text("abandoned")
        result = await gc.collect()
        assert creating.exists()
        assert not abandoned.exists()
        assert result.files == 1
        await db.close()

    asyncio.run(scenario())
