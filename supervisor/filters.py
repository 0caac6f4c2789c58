"""containerd's filter language, parsed once and matched against any object.

A filter is selectors joined by `,` (all must hold); a request's list of filters matches when
any one of them does. A selector is a field path with an optional operator and value:

    name==foo            equal
    labels."a.b"!=x      not equal (also true when the field is absent)
    topic~=/tasks/       regular-expression search
    labels.foo           present (non-empty)

Field path parts are `[A-Za-z0-9_]+` or `"…"`-quoted. Values are quoted with `"…"` (Go
escapes), or, after `~=` only, with `/…/` or `|…|` (the delimiter is escaped with a backslash);
unquoted, a value runs to the next white space or `,`. The parser is pure and raises only
`InvalidArgument`; objects are matched through an adaptor, a function from a field path to the
field's value or None when absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from supervisor.errors import InvalidArgument

Adaptor = Callable[[tuple[str, ...]], str | None]
Operator = Literal["present", "==", "!=", "~="]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_VALUE = re.compile(r"[^\s,]+")
_QUOTES = '"/|'
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    operator: Operator
    value: str = ""
    pattern: re.Pattern[str] | None = None

    def matches(self, adaptor: Adaptor) -> bool:
        actual = adaptor(self.path)
        if self.operator == "present":
            return bool(actual)
        if self.operator == "==":
            return actual is not None and actual == self.value
        if self.operator == "!=":
            return (actual or "") != self.value  # an absent field is "", as in containerd
        assert self.pattern is not None
        return actual is not None and self.pattern.search(actual) is not None


@dataclass(frozen=True)
class Filter:
    """Selectors that must all match."""

    selectors: tuple[Selector, ...]

    def matches(self, adaptor: Adaptor) -> bool:
        return all(s.matches(adaptor) for s in self.selectors)


@dataclass(frozen=True)
class Filters:
    """Any of several filters; no filter at all matches everything."""

    alternatives: tuple[Filter, ...]

    def matches(self, adaptor: Adaptor) -> bool:
        return not self.alternatives or any(f.matches(adaptor) for f in self.alternatives)


def parse_all(filters: Iterable[str]) -> Filters:
    return Filters(tuple(parse(f) for f in filters if f.strip()))


def parse(text: str) -> Filter:
    return _Parser(text).filter()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"filter {self.text!r}: {why} at position {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip_space()
        return self.text.startswith(token, self.pos)

    def filter(self) -> Filter:
        selectors = [self.selector()]
        while self.peek(","):
            self.pos += 1
            selectors.append(self.selector())
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("unexpected input")
        return Filter(tuple(selectors))

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek("."):
            self.pos += 1
            path.append(self.field())
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "=!~":
            self.pos += 1
        op = self.text[start : self.pos]
        if not op:
            return Selector(tuple(path), "present")
        if op not in ("==", "!=", "~="):
            raise self.fail(f"unsupported operator {op!r}")
        value = self.value(regex=op == "~=")
        if op == "~=":
            try:
                pattern = re.compile(value)
            except re.error as e:
                raise self.fail(f"bad regular expression {value!r}: {e}") from None
            return Selector(tuple(path), "~=", value, pattern)
        return Selector(tuple(path), op, value)  # type: ignore[arg-type]

    def field(self) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in _QUOTES:
            if self.text[self.pos] != '"':
                raise self.fail("invalid quote encountered")
            return self.quoted()
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group()

    def value(self, regex: bool) -> str:
        """A quoted value, or a run of characters up to white space or `,`."""
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in _QUOTES:
            if self.text[self.pos] != '"' and not regex:
                raise self.fail("invalid quote encountered (/…/ and |…| quote only for ~=)")
            return self.quoted()
        m = _VALUE.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a value")
        self.pos = m.end()
        return m.group()

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\" and self.pos < len(self.text):
                nxt = self.text[self.pos]
                self.pos += 1
                if nxt == quote or (quote == '"' and nxt == "\\"):
                    out.append(nxt)
                elif quote == '"':
                    out.append(_ESCAPES.get(nxt, "\\" + nxt))
                else:
                    out.append("\\" + nxt)  # a regular expression keeps its escapes
                continue
            out.append(ch)
        raise self.fail(f"unterminated quote {quote}")


def label_adaptor(fields: dict[str, str], labels: dict[str, str]) -> Adaptor:
    """The adaptor most objects need: some top-level fields plus `labels.<key>`."""

    def adapt(path: Sequence[str]) -> str | None:
        if not path:
            return None
        if path[0] == "labels":
            return labels.get(".".join(path[1:])) if len(path) > 1 else None
        return fields.get(path[0]) if len(path) == 1 else None

    return adapt
