from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import identifiers
from supervisor.errors import InvalidArgument, Unknown


@pytest.mark.parametrize("name", ["a", "default", "k8s.io", "moby", "a-b_c.d", "A1" * 38])
def test_valid(name):
    assert identifiers.validate(name) == name


@pytest.mark.parametrize("name", ["", "a" * 77, "-a", "a-", "a--b", "a b", "a/b", "é", "a._b"])
def test_invalid(name):
    with pytest.raises(InvalidArgument):
        identifiers.validate(name)


@given(st.text(max_size=100))
def test_valid_names_are_safe_as_one_path_component(name):
    try:
        identifiers.validate(name)
    except InvalidArgument:
        return
    assert "/" not in name
    assert name not in (".", "..")
    assert 0 < len(name) <= 76


def test_labels_are_limited_to_4096_bytes_per_pair():
    identifiers.validate_label("k", "v" * 4095)
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        identifiers.validate_label("k", "v" * 4096)


def test_an_empty_label_key_is_refused_as_containerd_s_database_refuses_it():
    identifiers.validate_label("", "v")  # containerd's size check lets it through
    with pytest.raises(Unknown) as e:
        identifiers.require_label_keys({"": "v"}, "writing labels for image x")
    assert str(e.value) == 'writing labels for image x: failed to set label ""="v": key required'
