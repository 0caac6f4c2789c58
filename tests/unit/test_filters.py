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
        ("labels.missing!=bar", True),
        ("name==docker.io/library/busybox:latest,labels.foo==bar", True),
        ("name==docker.io/library/busybox:latest,labels.foo==nope", False),
        (" name == docker.io/library/busybox:latest, labels.foo", True),
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
    assert match("labels.foo==nope", "")  # an empty one matches everything


@pytest.mark.parametrize("text", ["  ", "labels.foo==bar ", "name==x y"])
def test_white_space_alone_or_after_a_value_is_refused_as_by_containerd(text):
    with pytest.raises(InvalidArgument):
        filters.parse_all([text])


@pytest.mark.parametrize(
    "text",
    [
        "==x",
        "name==",
        "name===x",
        "name=!x",
        'name=="open',
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
    assert str(e.value).startswith("filters: parse error: [")
    assert str(e.value).endswith(": invalid argument")


@pytest.mark.parametrize(
    ("text", "words"),
    [  # containerd 1.6.20's, as `ctr` prints them
        ("name==", "[name==]: expected value or quoted"),
        ("labels.==", "[labels. >|=|< =]: expected field or quoted"),
        ("name===x", '[name >|=|< ==x]: unsupported operator "==="'),
        ("a b", '[a  >|b|< ]: expected an operator ("=="|"!="|"~=")'),
        ("name==a b", "[name==a >| |< b]: unexpected input:  "),
        ('name=="open', '[name== >|"|< open]: quoted literal not terminated'),
        ("name==/x/", "[name== >|/|< x/]: invalid quote encountered"),
        (r'a=="\q"', r'[a== >|"|< \q"]: illegal escape sequence'),
        (r'a=="\x4"', r'[a== >|"|< \x4"]: illegal numeric escape sequence'),
    ],
)
def test_malformed_filters_say_what_containerd_says(text, words):
    with pytest.raises(InvalidArgument) as e:
        filters.parse(text)
    assert str(e.value) == f"filters: parse error: {words}: invalid argument"


def test_a_regular_expression_that_does_not_compile_matches_nothing():
    assert not match("name~=/(/")
    assert not match("name!=x,name~=/(/")


def test_escapes_in_double_quotes():
    parsed = filters.parse(r'labels.x=="a\"b\\c\n"')
    assert parsed.selectors[0].value == 'a"b\\c\n'


def test_regex_quotes_take_go_escapes_only_as_containerd_does():
    assert filters.parse(r"name~=/a\/c\x41/").selectors[0].value == "a/cA"
    with pytest.raises(InvalidArgument, match="illegal escape sequence"):
        filters.parse(r"name~=/a\.b/")


@given(st.text(max_size=60))
def test_the_parser_raises_nothing_but_invalid_argument(text):
    try:
        parsed = filters.parse(text)
    except InvalidArgument:
        return
    parsed.matches(OBJ)
