"""Platform parsing and matching (containerd's `platforms.Only`), and choosing from an index."""

from __future__ import annotations

import json

import pytest

from supervisor.distribution import manifest, platforms
from supervisor.distribution.manifest import Descriptor
from supervisor.distribution.platforms import Platform
from supervisor.errors import InvalidArgument, NotFound


def P(text: str) -> Platform:
    return platforms.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("Linux/AMD64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm64/v9.2", Platform("linux", "arm64", "v9.2")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("windows(10.0.17763)/amd64", Platform("windows", "amd64", "", "10.0.17763")),
        ("arm64", Platform("linux", "arm64")),
    ],
)
def test_parse_normalizes(text: str, expected: Platform):
    assert P(text) == expected


@pytest.mark.parametrize("text", ["", "linux/*", "a/b/c/d", "linux/am d64", "linux//v7"])
def test_parse_refuses_what_is_not_a_platform(text: str):
    with pytest.raises(InvalidArgument, match="platform"):
        platforms.parse(text)


@pytest.mark.parametrize(
    ("wanted", "ordered"),
    [
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
        ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm64", ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6"]),
        (
            "linux/arm64/v8.2",
            ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64", "linux/arm/v7"],
        ),
    ],
)
def test_only_matches_what_a_platform_can_run_best_first(wanted: str, ordered: list[str]):
    matcher = platforms.only(P(wanted))
    ranks = [matcher.rank(P(text)) for text in ordered]
    assert None not in ranks
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)


@pytest.mark.parametrize(
    ("wanted", "refused"),
    [
        ("linux/amd64", ["linux/arm64", "windows/amd64", "linux/amd64/v2", "linux/s390x"]),
        ("linux/arm/v6", ["linux/arm/v7", "linux/arm64"]),
        ("linux/arm64", ["linux/amd64", "linux/arm64/v8.1"]),
        ("linux/386", ["linux/amd64"]),
    ],
)
def test_only_refuses_what_a_platform_cannot_run(wanted: str, refused: list[str]):
    matcher = platforms.only(P(wanted))
    assert [text for text in refused if matcher.match(P(text))] == []


def test_unnormalized_candidates_match():
    matcher = platforms.only(Platform("linux", "amd64"))
    assert matcher.match(Platform("linux", "x86_64"))
    assert matcher.match(Platform("", "amd64"))  # no os means linux
    assert platforms.only(P("linux/arm64")).match(Platform("linux", "aarch64", "v8"))


def test_only_strict_matches_the_platform_alone():
    strict = platforms.only_strict(P("linux/amd64"))
    assert strict.match(P("linux/x86_64"))
    assert not strict.match(P("linux/386"))


def test_os_features_must_be_a_subset_of_the_wanted_ones():
    matcher = platforms.only(Platform("windows", "amd64", os_features=("win32k",)))
    assert matcher.match(Platform("windows", "amd64", os_features=("win32k",)))
    assert matcher.match(Platform("windows", "amd64"))
    assert not platforms.only(Platform("windows", "amd64")).match(
        Platform("windows", "amd64", os_features=("win32k",))
    )


def test_default_is_this_machine():
    host = platforms.host()
    assert host.os == "linux"
    assert platforms.default().match(host)


# -- choosing from an index -------------------------------------------------------------------

DIGESTS = {name: "sha256:" + f"{i:x}" * 64 for i, name in enumerate("abcdefgh", start=1)}


def entry(name: str, platform: str | None, media_type: str = manifest.OCI_MANIFEST) -> Descriptor:
    return Descriptor(media_type, DIGESTS[name], 100, P(platform) if platform else None)


def test_select_picks_the_best_platform_of_an_index():
    entries = [
        entry("a", "linux/386"),
        entry("b", "linux/arm64"),
        entry("c", "linux/amd64"),
        entry("d", "linux/arm/v7"),
    ]

    assert manifest.select(entries, platforms.only(P("linux/amd64"))).digest == DIGESTS["c"]
    assert manifest.select(entries, platforms.only(P("linux/arm64"))).digest == DIGESTS["b"]
    assert manifest.select(entries, platforms.only(P("linux/arm/v8"))).digest == DIGESTS["d"]
    assert manifest.select(entries[:2], platforms.only(P("linux/amd64"))).digest == DIGESTS["a"]


def test_select_keeps_the_first_of_equals_and_puts_platformless_entries_last():
    entries = [entry("a", None), entry("b", "linux/amd64"), entry("c", "linux/amd64")]
    assert manifest.select(entries, platforms.only(P("linux/amd64"))).digest == DIGESTS["b"]
    assert manifest.select(entries[:1], platforms.only(P("linux/amd64"))).digest == DIGESTS["a"]


def test_select_skips_attestations_and_other_blobs():
    entries = [
        Descriptor("application/vnd.in-toto+json", DIGESTS["a"], 1, P("linux/amd64")),
        entry("b", "unknown/unknown"),  # buildkit's attestation manifests
        entry("c", "linux/amd64"),
    ]
    assert manifest.select(entries, platforms.only(P("linux/amd64"))).digest == DIGESTS["c"]


def test_select_with_no_match_names_what_the_index_offers():
    entries = [entry("a", "linux/arm64"), entry("b", "linux/s390x")]

    with pytest.raises(NotFound, match=r"linux/riscv64 .*it has linux/arm64, linux/s390x"):
        manifest.select(entries, platforms.only(P("linux/riscv64")))


def test_platform_of_an_image_config():
    config = json.loads('{"architecture": "arm", "os": "linux", "variant": "v7", "rootfs": {}}')
    assert Platform.from_json(config) == Platform("linux", "arm", "v7")
    assert str(Platform.from_json(config)) == "linux/arm/v7"
