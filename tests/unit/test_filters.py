"""containerd's filter language: parsing and matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import filters
from supervisor.errors import InvalidArgument

OBJ = filters.label_adaptor(
    {"name": "docker.io/library/busybox:latest", "topic": "/tasks/exit"},
    {"foo": "bar", "a.b/c": "x y", "empty": ""},
)


def match(*texts: str) -> bool:
    return filters.parse_all(texts).matches(OBJ)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name==docker.io/library/busybox:latest", True),
        ('name=="docker.io/library/busybox:latest"', True),
        ("name!=docker.io/library/busybox:latest", False),
        ("name!=other", True),
        ("name~=busybox", True),
        ("name~=^busybox", False),
        ("topic~=/tasks/", True),  # `/…/` quotes a regular expression: "tasks"
        ("name~=/^busybox/", False),
        ('topic~="/tasks/"', True),
        ("topic~=|^/tasks/|", True),
        ("labels.foo", True),
        ("labels.empty", False),
        ("labels.missing", False),
        ("labels.foo==bar", True),
        ('labels."a.b/c"=="x y"', True),
        ("labels.foo==bar ", True),
        ("labels.missing!=bar", True),
        ("name==docker.io/library/busybox:latest,labels.foo==bar", True),
        ("name==docker.io/library/busybox:latest,labels.foo==nope", False),
        (" name == docker.io/library/busybox:latest , labels.foo ", True),
        ("unknown==x", False),
    ],
)
def test_selectors(text, expected):
    assert match(text) is expected


def test_several_filters_are_ored():
    assert match("labels.foo==nope", "labels.foo==bar")
    assert not match("labels.foo==nope", "name==x")


def test_no_filter_matches_everything():
    assert match()
    assert match("", "  ")


@pytest.mark.parametrize(
    "text",
    [
        "==x",
        "name==",
        "name===x",
        "name=!x",
        'name=="open',
        "name~=/(/",
        "labels.",
        ",",
        "a b",
        "name==a b",
        "name==/x/",
        "/x/==y",
        "labels.|k|==v",
    ],
)
def test_malformed_filters_are_invalid_argument(text):
    with pytest.raises(InvalidArgument) as e:
        filters.parse(text)
    assert repr(text) in str(e.value)  # fmt: skip


def test_escapes_in_double_quotes():
    parsed = filters.parse(r'labels.x=="a\"b\\c\n"')
    assert parsed.selectors[0].value == 'a"b\\c\n'


def test_regex_quotes_keep_backslashes():
    assert filters.parse(r"name~=/a\.b\/c/").selectors[0].value == r"a\.b/c"


@given(st.text(max_size=60))
def test_the_parser_raises_nothing_but_invalid_argument(text):
    try:
        parsed = filters.parse(text)
    except InvalidArgument:
        return
    parsed.matches(OBJ)
