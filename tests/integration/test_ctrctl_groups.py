"""ctrctl's lower-level groups (content, snapshots, leases, namespaces) against what ctr shows."""

from __future__ import annotations

import json

from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_tasks import pull


def column(text: str, index: int = 0) -> list[str]:
    return sorted(line.split()[index] for line in text.splitlines()[1:] if line.strip())


def test_content_commands_match_ctr(ctrd, busybox_image):
    pull(ctrd, busybox_image)
    listed = ctrctl(ctrd, "content", "ls")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["DIGEST", "SIZE", "AGE", "LABELS"]
    ours = column(listed.stdout)
    assert ours == column(ctrd.ctr("content", "ls").stdout)
    assert sorted(ctrctl(ctrd, "content", "ls", "-q").stdout.split()) == ours
    as_json = json.loads(ctrctl(ctrd, "content", "ls", "--format", "json").stdout)
    sizes = {i["digest"]: i["size"] for i in as_json}
    manifest = busybox_image.digest
    got = ctrctl(ctrd, "content", "get", manifest)
    assert got.stdout == ctrd.ctr("content", "get", manifest).stdout
    assert len(got.stdout.encode()) == sizes[manifest]

    labelled = ctrctl(ctrd, "content", "label", manifest, "team=blue")
    assert labelled.returncode == 0, labelled.stderr
    assert "team=blue" in labelled.stdout
    assert "team=blue" in ctrd.ctr("content", "ls").stdout
    assert "team=blue" not in ctrctl(ctrd, "content", "label", manifest, "team=").stdout
    assert "team=blue" not in ctrd.ctr("content", "ls").stdout
    assert ctrctl(ctrd, "content", "active").stdout.split() == ["REF", "SIZE", "AGE"]

    # A blob of its own (not referenced by the image), removed by ctrctl, gone for ctr.
    ctrd.ctr("content", "ingest", "loose", input=b"loose blob\n")
    loose = set(ctrd.ctr("content", "ls", "-q").stdout.split()) - set(ours)
    [digest] = loose
    removed = ctrctl(ctrd, "content", "rm", digest)
    assert (removed.returncode, removed.stdout) == (0, f"{digest}\n"), removed.stderr
    assert digest not in ctrd.ctr("content", "ls", "-q").stdout


def test_snapshots_commands_match_ctr(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    ctrctl(ctrd, "create", "--name", "box", ref, "true")
    listed = ctrctl(ctrd, "snapshots", "ls")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["KEY", "PARENT", "KIND"]
    ctr_listed = ctrd.ctr("snapshots", "ls").stdout
    assert column(listed.stdout) == column(ctr_listed)
    assert sorted(ctrctl(ctrd, "snapshots", "ls", "-q").stdout.split()) == column(ctr_listed)
    info = json.loads(ctrctl(ctrd, "snapshots", "info", "box").stdout)
    assert info["kind"] == "Active"
    assert info["parent"] == json.loads(ctrd.ctr("snapshots", "info", "box").stdout)["Parent"]
    tree = ctrctl(ctrd, "snapshots", "tree").stdout.splitlines()
    assert tree == [info["parent"], "  \\_ box"]
    usage = {u["key"]: u for u in json.loads(ctrctl(ctrd, "--namespace", "default",
             "snapshots", "usage", "--format", "json").stdout)}  # fmt: skip
    ctr_usage = ctrd.ctr("snapshots", "usage", info["parent"]).stdout.splitlines()[1].split()
    assert usage[info["parent"]]["inodes"] == int(ctr_usage[-1])
    assert ctrctl(ctrd, "snapshots", "--snapshotter", "native", "ls", "-q").stdout == ""

    ctrd.ctr("snapshots", "prepare", "scratch", info["parent"])
    assert ctrctl(ctrd, "snapshot", "rm", "scratch").stdout == "scratch\n"
    assert "scratch" not in ctrd.ctr("snapshots", "ls").stdout
    assert ctrctl(ctrd, "rm", "box").returncode == 0


def test_leases_and_namespaces_match_ctr(ctrd):
    made = ctrctl(ctrd, "leases", "create", "--id", "hold", "--expires", "1h", "-l", "who=me")
    assert (made.returncode, made.stdout) == (0, "hold\n"), made.stderr
    ctr_leases = ctrd.ctr("leases", "ls").stdout
    assert "hold" in ctr_leases
    assert "who=me" in ctr_leases
    assert "containerd.io/gc.expire=" in ctr_leases
    random_id = ctrctl(ctrd, "leases", "create", "--expires", "0").stdout.strip()
    assert sorted(ctrctl(ctrd, "leases", "ls", "-q").stdout.split()) == sorted(["hold", random_id])
    [lease] = [
        x
        for x in json.loads(ctrctl(ctrd, "leases", "ls", "--format", "json").stdout)
        if x["id"] == random_id
    ]
    assert lease["labels"] == {}
    assert ctrctl(ctrd, "leases", "rm", "--sync", "hold", random_id).returncode == 0
    assert ctrd.ctr("leases", "ls", "-q").stdout.split() == []

    assert ctrctl(ctrd, "namespaces", "create", "team", "owner=ops").returncode == 0
    assert "owner=ops" in ctrd.ctr("namespaces", "ls").stdout
    assert "team" in ctrctl(ctrd, "ns", "ls", "-q").stdout.split()
    relabelled = ctrctl(ctrd, "namespaces", "label", "team", "owner=", "tier=1")
    assert relabelled.stdout.strip() == "tier=1", relabelled.stderr
    [team] = [
        n
        for n in json.loads(ctrctl(ctrd, "namespaces", "ls", "--format", "json").stdout)
        if n["name"] == "team"
    ]
    assert team["labels"] == {"tier": "1"}
    assert ctrctl(ctrd, "namespaces", "rm", "team").returncode == 0
    assert "team" not in ctrd.ctr("namespaces", "ls", "-q").stdout.split()
    bad = ctrctl(ctrd, "leases", "create", "--expires", "soon")
    assert (bad.returncode, bad.stderr.strip()) == (
        125,
        'ctrctl: "soon" is not a duration: use 30m, 24h, 1h30m',
    )
