"""docker's rules for volumes, as pure functions: names, local driver options, the
`ctrd.io/volumes` label, and the list and prune filters (words as dockerd 20.10 says them)."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidArgument
from supervisor.volumes import labels, local
from supervisor.volumes.manager import (
    LIST_FILTERS,
    PRUNE_FILTERS,
    list_matcher,
    parse_filters,
    prune_matcher,
)
from supervisor.volumes.store import Volume


@pytest.mark.parametrize("name", ["ab", "a1", "my-vol_2.x", "0" * 64, "a..b"])
def test_docker_volume_names_are_taken(name):
    local.validate_name(name)


def test_a_one_character_name_is_too_short_in_dockers_words():
    with pytest.raises(InvalidArgument) as e:
        local.validate_name("a")
    assert str(e.value) == (
        "volume name is too short, names should be at least two alphanumeric characters"
    )


@pytest.mark.parametrize("name", ["a/b", "..", "../x", ".hidden", "-x", "a b", "x:y"])
def test_names_that_could_leave_the_directory_are_refused_in_dockers_words(name):
    with pytest.raises(InvalidArgument) as e:
        local.validate_name(name)
    assert str(e.value) == (
        f'"{name}" includes invalid characters for a local volume name, only '
        '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
        "use absolute path"
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"foo": "1"}, 'invalid option: "foo"'),
        ({"type": "tmpfs"}, 'missing required option: "device"'),
        ({"device": "tmpfs"}, 'missing required option: "type"'),
        ({"o": "size=1m"}, 'missing required option: "device"'),
        ({"size": "10m"}, "quota size requested but no quota support"),
        ({"type": "tmpfs", "device": "tmpfs", "o": "size=big"}, "invalid size: 'big'"),
        ({"type": "tmpfs", "device": "tmpfs", "o": "size=-1"}, "invalid size: '-1'"),
    ],
)
def test_bad_local_options_are_refused_in_dockers_words(options, words):
    with pytest.raises(InvalidArgument) as e:
        local.validate_options(options)
    assert str(e.value) == words


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"type": "tmpfs", "device": "tmpfs", "o": "size=64m,uid=1000"},
        {"type": "tmpfs", "device": "tmpfs", "o": "size=50%"},
        {"type": "none", "device": "/srv/x", "o": "bind"},
        {"type": "nfs", "device": ":/export", "o": "addr=10.0.0.1,rw"},
    ],
)
def test_dockers_local_options_are_taken(options):
    local.validate_options(options)
    assert local.needs_mount(options) == bool(options)


def test_the_label_reads_every_field_and_defaults():
    parsed = labels.parse(
        '[{"name": "a", "target": "/data/"}, '
        '{"name": "b", "target": "/ro", "readonly": true, "nocopy": true}]'
    )
    assert parsed == (
        labels.VolumeMount("a", "/data"),
        labels.VolumeMount("b", "/ro", readonly=True, nocopy=True),
    )
    assert labels.named({labels.VOLUMES_LABEL: '[{"name":"a","target":"/x"}]'}) == ("a",)
    assert labels.named({labels.VOLUMES_LABEL: "not json"}) == ()
    assert not labels.wants_volumes({})


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{", "label ctrd.io/volumes is not JSON"),
        ('{"name": "a"}', "label ctrd.io/volumes must be a JSON array"),
        ('[{"target": "/x"}]', "an entry has no volume name"),
        ('[{"name": "a"}]', "volume 'a' has no target"),
        ('[{"name": "a", "target": "/x", "readonly": "yes"}]', "readonly must be a bool"),
        (
            '[{"name": "a", "target": "rel"}]',
            "invalid mount config for type \"volume\": invalid mount path: 'rel' mount path "
            "must be absolute",
        ),
        (
            '[{"name": "a", "target": "/x"}, {"name": "b", "target": "/x/"}]',
            "Duplicate mount point: /x",
        ),
    ],
)
def test_a_malformed_label_is_refused_clearly(value, words):
    with pytest.raises(InvalidArgument) as e:
        labels.parse(value)
    assert words in str(e.value)


VOLUMES = [
    Volume("anon1", labels={labels.ANONYMOUS_LABEL: "true"}),
    Volume("web-data", labels={"app": "web", "tier": "front"}),
    Volume("db-data", labels={"app": "db"}),
    Volume("tmp", options={"type": "tmpfs", "device": "tmpfs"}),
]


def shown(filters, used=frozenset()):
    matches = list_matcher(parse_filters(filters, LIST_FILTERS))
    return [v.name for v in VOLUMES if matches(v, v.name in used)]


def test_list_filters_are_dockers():
    assert shown(["dangling=true"], used={"db-data"}) == ["anon1", "web-data", "tmp"]
    assert shown(["dangling=0"], used={"db-data"}) == ["db-data"]
    assert shown(["name=data"]) == ["web-data", "db-data"]
    assert shown(["name=^db", "name=tmp"]) == ["db-data", "tmp"]
    assert shown(["label=app"]) == ["web-data", "db-data"]
    assert shown(["label=app", "label=tier=front"]) == ["web-data"]
    assert shown(["driver=local"]) == [v.name for v in VOLUMES]
    assert shown(["driver=nfs"]) == []


@pytest.mark.parametrize(
    ("filters", "words"),
    [
        (["dangling=maybe"], "Invalid filter 'dangling=[maybe]'"),
        (["until=1h"], "Invalid filter 'until'"),
        (["dangling"], "bad format of filter (expected name=value): dangling"),
    ],
)
def test_bad_list_filters_in_dockers_words(filters, words):
    with pytest.raises(InvalidArgument) as e:
        shown(filters)
    assert str(e.value) == words


def pruned(filters):
    matches = prune_matcher(parse_filters(filters, PRUNE_FILTERS))
    return [v.name for v in VOLUMES if matches(v)]


def test_prune_takes_anonymous_volumes_unless_all_and_follows_label_filters():
    assert pruned([]) == ["anon1"]
    assert pruned(["all=true"]) == [v.name for v in VOLUMES]
    assert pruned(["all=1", "label=app"]) == ["web-data", "db-data"]
    assert pruned(["all=true", "label!=app=web"]) == ["anon1", "db-data", "tmp"]
    assert pruned(["all=false", "label=app"]) == []
    with pytest.raises(InvalidArgument) as e:
        pruned(["all=true", "all=false"])
    assert str(e.value) == "invalid filter 'all=[true false]': only one value is expected"
    with pytest.raises(InvalidArgument) as e:
        pruned(["dangling=true"])
    assert str(e.value) == "Invalid filter 'dangling'"
