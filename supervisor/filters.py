"""containerd's filter language, parsed once and matched against any object.

A filter is selectors joined by `,` (all must hold); a request's list of filters matches when
any one of them does. A selector is a field path with an optional operator and value:

    name==foo            equal
    labels."a.b"!=x      not equal (also true when the field is absent)
    topic~=/tasks/       regular-expression search
    labels.foo           present (non-empty)

The parser is a port of containerd's (`filters/scanner.go`, `parser.go`, `quote.go`): the same
tokens, the same quoting (`"…"` anywhere, `/…/` and `|…|` after `~=` only, Go escapes in all
three, nothing else escaped), and the same errors in the same words, positions in bytes of the
UTF-8 text (`filters: parse error: [name== >|x|< ]: …`). It is pure and raises only
`InvalidArgument`. A regular expression that does not compile matches nothing, as in containerd
(Python's `re` stands in for Go's RE2). Objects are matched through an adaptor, a function from
a field path to the field's value or None when absent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from supervisor.errors import InvalidArgument

Adaptor = Callable[[tuple[str, ...]], str | None]
Operator = Literal["present", "==", "!=", "~="]


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
        return self.pattern is not None and self.pattern.search(actual or "") is not None


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
    return Filters(tuple(parse(f) for f in filters))


def parse_all_wrapped(filters: Iterable[str]) -> Filters:
    """`parse_all` for the calls whose parse errors containerd wraps in InvalidArgument once
    more (its images, containers and leases stores, its introspection service): their words
    end `: invalid argument: invalid argument`."""
    try:
        return parse_all(filters)
    except InvalidArgument as e:
        raise InvalidArgument(str(e)) from None


def parse(text: str) -> Filter:
    if not text:
        return Filter(())  # matches everything, as containerd's special case
    try:
        return _Parser(text).selectors()
    except _ParseError as e:
        raise InvalidArgument(f"filters: parse error: {e}") from None


# The scanner's tokens: negative, so that any other rune stands for itself.
_EOF, _QUOTED, _VALUE, _FIELD, _SEPARATOR, _OPERATOR, _ILLEGAL = range(-1, -8, -1)
_GO_SPACE = frozenset(map(ord, "\t\n\v\f\r \x85\xa0"))


def _is_space(r: int) -> bool:
    return r in _GO_SPACE if r < 0x100 else r >= 0 and chr(r).isspace()


def _is_field(r: int) -> bool:
    return r >= 0 and (chr(r) == "_" or (chr(r).isascii() and chr(r).isalnum()))


def _is_value(r: int) -> bool:
    """Go's letters, digits, numbers, graphic and punctuation runes, but space and `,`."""
    if r < 0 or r == ord(",") or _is_space(r):
        return False
    category = unicodedata.category(chr(r))
    return category[0] in "LMNPS" or category == "Zs"


def _digit(r: int) -> int:
    c = chr(r) if r >= 0 else ""
    return int(c, 16) if c and c in "0123456789abcdefABCDEF" else 16


class _ParseError(Exception):
    def __init__(self, text: bytes, pos: int, message: str) -> None:
        super().__init__(message)
        self.text, self.pos, self.message = text, pos, message

    def __str__(self) -> str:
        if self.pos < len(self.text):
            before, at, after = (
                self.text[: self.pos], self.text[self.pos : self.pos + 1], self.text[self.pos + 1 :]
            )  # fmt: skip
            shown = f"{_show(before)} >|{_show(at)}|< {_show(after)}"
            return f"[{shown}]: {self.message}"
        return f"[{_show(self.text)}]: {self.message}"


def _show(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class _Scanner:
    """containerd's scanner: `pos` is where the current rune starts, `ppos` where it ends."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.pos = 0
        self.ppos = 0
        self.value = False  # the next run of value runes is a value (an operator came last)
        self.err = ""

    def error(self, message: str) -> None:
        self.err = self.err or message

    def next(self) -> int:
        if self.pos >= len(self.text):
            return _EOF
        self.pos = self.ppos
        rune, width = _decode(self.text, self.ppos)
        self.ppos += width
        if rune == 0xFFFD:
            if width > 0:
                self.error("rune error")
                return _ILLEGAL
            return _EOF
        if rune == 0:
            self.error("unexpected null")
            return _ILLEGAL
        return rune

    def peek(self) -> int:
        pos, ppos = self.pos, self.ppos
        rune = self.next()
        self.pos, self.ppos = pos, ppos
        return rune

    def scan(self) -> tuple[int, int, str]:
        """(position, token, text)"""
        ch = self.next()
        pos = self.pos
        while _is_space(ch):
            ch = self.next()
            pos = self.pos
        if ch in (_EOF, _ILLEGAL):
            return self.pos, ch, ""
        token = ch
        if chr(ch) in '/|"':
            token = _QUOTED if self._quoted(ch) else _ILLEGAL
        elif chr(ch) in ",.":
            self.value = False
            token = _SEPARATOR
        elif chr(ch) in "=!~":
            self._while(lambda r: r >= 0 and chr(r) in "=!~")
            self.value = True
            token = _OPERATOR
        elif self.value:
            self._while(_is_value)
            self.value = False
            token = _VALUE
        elif _is_field(ch):
            self._while(_is_field)
            token = _FIELD
        else:
            return self.pos, ch, ""
        return pos, token, _show(self.text[pos : self.ppos])

    def _while(self, accept: Callable[[int], bool]) -> None:
        while accept(self.peek()):
            self.next()

    def _quoted(self, quote: int) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch == ord("\n") or ch < 0:
                self.error("quoted literal not terminated")
                return False
            if ch == ord("\\"):
                ch, ok = self._escape(quote)
                legal = legal and ok
            else:
                ch = self.next()
        return legal

    def _escape(self, quote: int) -> tuple[int, bool]:
        ch = self.next()
        c = chr(ch) if ch >= 0 else ""
        if c and (c in "abfnrtv\\" or ch == quote):
            return self.next(), True
        if c and c in "01234567":
            return self._digits(ch, 8, 3)
        width = {"x": 2, "u": 4, "U": 8}.get(c)
        if width:
            return self._digits(self.next(), 16, width)
        self.error("illegal escape sequence")
        return ch, False

    def _digits(self, ch: int, base: int, n: int) -> tuple[int, bool]:
        while n > 0 and _digit(ch) < base:
            ch = self.next()
            n -= 1
        if n > 0:
            self.error("illegal numeric escape sequence")
            return ch, False
        return ch, True


def _decode(data: bytes, at: int) -> tuple[int, int]:
    """Go's utf8.DecodeRune: (rune, width); (0xFFFD, 1) for a bad byte, (0xFFFD, 0) at the end."""
    if at >= len(data):
        return 0xFFFD, 0
    for width in (1, 2, 3, 4):
        try:
            decoded = data[at : at + width].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return ord(decoded), width
    return 0xFFFD, 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text.encode("utf-8", "surrogatepass")
        self.scanner = _Scanner(self.text)

    def fail(self, pos: int, message: str) -> _ParseError:
        return _ParseError(self.text, pos, message)

    def selectors(self) -> Filter:
        selectors = [self.selector()]
        while True:
            ch = self.scanner.peek()
            if ch == ord(","):
                pos, token, _ = self.scanner.scan()
                if token != _SEPARATOR:
                    raise self.fail(pos, "expected a separator")
                selectors.append(self.selector())
            elif ch == _EOF:
                return Filter(tuple(selectors))
            else:
                shown = chr(ch) if ch >= 0 else "\ufffd"
                raise self.fail(self.scanner.ppos, f"unexpected input: {shown}")

    def selector(self) -> Selector:
        path = self.fieldpath()
        if self.scanner.peek() in (ord(","), _SEPARATOR, _EOF):
            return Selector(path, "present")
        operator = self.operator()
        value = self.value(alt_quotes=operator == "~=")
        if operator == "~=":
            try:
                pattern = re.compile(value)
            except (re.error, RecursionError, OverflowError):
                pattern = None  # containerd logs it and matches nothing
            return Selector(path, "~=", value, pattern)
        return Selector(path, operator, value)

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.scanner.peek() == ord("."):
            pos, token, _ = self.scanner.scan()
            if token != _SEPARATOR:
                raise self.fail(pos, "expected a field separator (`.`)")
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        pos, token, text = self.scanner.scan()
        if token == _FIELD:
            return text
        if token == _QUOTED:
            return self.unquote(pos, text, alt_quotes=False)
        if token == _ILLEGAL:
            raise self.fail(pos, self.scanner.err)
        raise self.fail(pos, "expected field or quoted")

    def operator(self) -> Literal["==", "!=", "~="]:
        pos, token, text = self.scanner.scan()
        if token == _OPERATOR:
            if text in ("==", "!=", "~="):
                return text  # type: ignore[return-value]
            raise self.fail(pos, f'unsupported operator "{text}"')
        if token == _ILLEGAL:
            raise self.fail(pos, self.scanner.err)
        raise self.fail(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, alt_quotes: bool) -> str:
        pos, token, text = self.scanner.scan()
        if token in (_VALUE, _FIELD):
            return text
        if token == _QUOTED:
            return self.unquote(pos, text, alt_quotes)
        if token == _ILLEGAL:
            raise self.fail(pos, self.scanner.err)
        raise self.fail(pos, "expected value or quoted")

    def unquote(self, pos: int, text: str, alt_quotes: bool) -> str:
        if not alt_quotes and text[0] not in "'\"":
            raise self.fail(pos, "invalid quote encountered")
        try:
            return _unquote(text.encode())
        except ValueError:
            raise self.fail(pos, "unquoting failed: quote syntax error") from None


_SIMPLE_ESCAPES = {
    ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
    ord("v"): 11, ord("\\"): ord("\\"),
}  # fmt: skip


def _unquote(quoted: bytes) -> str:
    """containerd's `unquote` (Go's strconv.Unquote, with `/` and `|` quoting like `"`);
    ValueError for its "quote syntax error"."""
    if len(quoted) < 2 or quoted[0] != quoted[-1] or chr(quoted[0]) not in "\"'|/":
        raise ValueError(quoted)
    quote, body = quoted[0], quoted[1:-1]
    if b"\n" in body:
        raise ValueError(quoted)
    if b"\\" not in body and quote not in body and quote != ord("'"):
        return _show(body)
    out = bytearray()
    while body:
        char, body = _unquote_char(body, quote)
        out += char
        if quote == ord("'") and body:
            raise ValueError(quoted)
    return _show(bytes(out))


def _unquote_char(body: bytes, quote: int) -> tuple[bytes, bytes]:
    """The bytes of `body`'s first (possibly escaped) character, and the rest."""
    first = body[0]
    if first == quote:
        raise ValueError(body)
    if first != ord("\\"):
        _, width = _decode(body, 0)
        return body[:width], body[width:]
    if len(body) <= 1:
        raise ValueError(body)
    kind, rest = body[1], body[2:]
    if kind in _SIMPLE_ESCAPES:
        return bytes([_SIMPLE_ESCAPES[kind]]), rest
    if chr(kind) in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[chr(kind)]
        digits = rest[:n]
        if len(digits) < n or any(chr(d) not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError(body)
        value = int(digits, 16)
        if kind == ord("x"):
            return bytes([value]), rest[n:]
        if value > 0x10FFFF:
            raise ValueError(body)
        return _encode_rune(value), rest[n:]
    if chr(kind) in "01234567":
        digits = body[1:4]
        if len(digits) < 3 or any(chr(d) not in "01234567" for d in digits):
            raise ValueError(body)
        value = int(digits, 8)
        if value > 255:
            raise ValueError(body)
        return bytes([value]), rest[2:]
    if chr(kind) in "'\"|/" and kind == quote:
        return bytes([kind]), rest
    raise ValueError(body)


def _encode_rune(value: int) -> bytes:
    """Go's utf8.EncodeRune: surrogates and the like become U+FFFD."""
    if 0xD800 <= value <= 0xDFFF:
        value = 0xFFFD
    return chr(value).encode()


def label_adaptor(fields: dict[str, str], labels: dict[str, str]) -> Adaptor:
    """The adaptor most objects need: some top-level fields plus `labels.<key>`."""

    def adapt(path: Sequence[str]) -> str | None:
        if not path:
            return None
        if path[0] == "labels":
            return labels.get(".".join(path[1:])) if len(path) > 1 else None
        return fields.get(path[0]) if len(path) == 1 else None

    return adapt
