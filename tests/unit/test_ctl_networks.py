"""ctrctl network's translation of docker's --filter words into containerd's filters."""

from __future__ import annotations

import pytest

from ctl.networks import to_filters
from supervisor import filters

KEYS = ("name", "id", "driver", "label", "scope", "type")


def matching(words, fields, labels=None):
    translated = to_filters(words, KEYS)
    if translated is None:
        return False
    parsed = filters.parse_all(translated)
    return parsed.matches(filters.label_adaptor(fields, labels or {}))


NET = {"name": "front.end", "id": "abc123", "driver": "bridge"}


def test_name_is_a_literal_substring_and_id_a_prefix():
    assert matching(["name=t.e"], NET)
    assert not matching(["name=t*e"], NET)
    assert matching(["id=abc"], NET)
    assert not matching(["id=123"], NET)


def test_one_key_repeated_is_any_and_different_keys_are_all():
    assert matching(["name=zzz", "name=front"], NET)
    assert not matching(["name=front", "driver=macvlan"], NET)
    assert matching(["name=front", "name=x", "driver=bridge"], NET)


def test_labels_with_dots_in_their_keys_with_and_without_a_value():
    labels = {"com.example.team": "a=b"}
    assert matching(["label=com.example.team"], NET, labels)
    assert matching(["label=com.example.team=a=b"], NET, labels)
    assert not matching(["label=com.example.team=a"], NET, labels)
    assert not matching(["label=other"], NET, labels)


def test_scope_and_type_match_everything_or_nothing():
    assert to_filters(["scope=local", "type=custom"], KEYS) == [""]
    assert to_filters(["scope=swarm"], KEYS) is None
    assert to_filters(["type=builtin"], KEYS) is None
    assert to_filters([], KEYS) == []


def test_unknown_keys_and_words_without_a_value_are_refused():
    with pytest.raises(ValueError, match="invalid filter 'colour'"):
        to_filters(["colour=red"], KEYS)
    with pytest.raises(ValueError, match="invalid filter 'name'"):
        to_filters(["name=x"], ("label",))
    with pytest.raises(ValueError, match="expected name=value"):
        to_filters(["name"], KEYS)
