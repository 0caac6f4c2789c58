"""The daemon-shim wire protocol: framing, the incremental decoder and the message shapes."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim import protocol
from shim.protocol import (
    MAX_FRAME,
    Decoder,
    ErrorResponse,
    Event,
    ProtocolError,
    Request,
    Response,
    encode,
    parse,
)
from supervisor import errors

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=6)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(messages=st.lists(JSON_OBJECTS, max_size=5), cuts=st.lists(st.integers(0, 10**6)))
def test_messages_survive_any_split_of_the_stream(messages, cuts):
    decoder = Decoder()
    received = []
    for chunk in split(b"".join(encode(m) for m in messages), cuts):
        received += decoder.feed(chunk)
    assert received == messages
    assert decoder.pending == 0


def test_a_frame_is_a_big_endian_length_then_compact_ascii_json():
    assert encode({"a": "é", "b": [1, 2.5, None]}) == frame(b'{"a":"\\u00e9","b":[1,2.5,null]}')


def test_a_partial_frame_is_held_until_it_completes():
    data = encode({"id": 1, "result": None})
    decoder = Decoder()
    assert decoder.feed(data[:3]) == []
    assert decoder.feed(data[3:-1]) == []
    assert decoder.pending == len(data) - 1
    assert decoder.feed(data[-1:]) == [{"id": 1, "result": None}]


def test_non_ascii_utf8_from_a_peer_is_accepted():
    assert Decoder().feed(frame('{"a":"é"}'.encode())) == [{"a": "é"}]


@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_the_decoder_raises_only_protocol_errors_on_arbitrary_bytes(chunks):
    decoder = Decoder()
    for chunk in chunks:
        try:
            messages = decoder.feed(chunk)
        except ProtocolError:
            with pytest.raises(ProtocolError):
                decoder.feed(b"")
            return
        assert all(isinstance(m, dict) for m in messages)


@given(payloads=st.lists(st.binary(max_size=64), max_size=4), cuts=st.lists(st.integers(0, 999)))
def test_the_decoder_raises_only_protocol_errors_on_well_framed_garbage(payloads, cuts):
    decoder = Decoder()
    try:
        for chunk in split(b"".join(frame(p) for p in payloads), cuts):
            assert all(isinstance(m, dict) for m in decoder.feed(chunk))
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # a zero length
        b"\xff\xfe",  # not UTF-8
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"\xef\xbb\xbf{}",  # a BOM
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b'{"a":1e999}',
        b'{"a":' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b'{"a":"\x01"}',  # a raw control character
    ],
)
def test_malformed_frames_are_protocol_errors(payload):
    with pytest.raises(ProtocolError):
        Decoder().feed(frame(payload))


def test_a_frame_over_the_maximum_is_refused_from_its_header_alone():
    decoder = Decoder()
    with pytest.raises(ProtocolError, match=f"frame length {MAX_FRAME + 1} outside 1..{MAX_FRAME}"):
        decoder.feed(struct.pack(">I", MAX_FRAME + 1))


def test_a_frame_of_exactly_the_maximum_is_accepted():
    payload = b'{"a":"' + b"x" * (MAX_FRAME - 8) + b'"}'
    assert len(payload) == MAX_FRAME
    assert Decoder().feed(frame(payload)) == [{"a": "x" * (MAX_FRAME - 8)}]


def test_the_maximum_can_be_lowered_per_decoder():
    with pytest.raises(ProtocolError):
        Decoder(max_frame=10).feed(encode({"key": "a value"}))


def test_messages_before_a_broken_frame_in_the_same_read_are_lost_with_the_stream():
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(encode({"id": 1, "result": 1}) + frame(b"oops"))
    with pytest.raises(ProtocolError, match="already broken"):
        decoder.feed(encode({"id": 2, "result": 2}))


def test_encoding_an_oversized_message_says_how_big_it_was():
    with pytest.raises(ProtocolError, match=f"of {MAX_FRAME + 2} bytes exceeds the maximum"):
        encode({"a": "x" * (MAX_FRAME - 6)})


@pytest.mark.parametrize(
    "message",
    [{"a": float("nan")}, {"a": object()}, {"a": {1, 2}}, ["not", "an", "object"]],
)
def test_encoding_what_is_not_a_json_object_is_a_protocol_error(message):
    with pytest.raises(ProtocolError):
        encode(message)


@pytest.mark.parametrize(
    "message",
    [
        Request(7, "state", {"id": "c1"}),
        Request(0, "shutdown", {}),
        Response(7, {"pid": 42}),
        Response(8, None),
        ErrorResponse(9, protocol.NOT_FOUND, "process c1: not found"),
        Event(1, "/tasks/exit", {"pid": 42, "exit_status": 137}, 1_700_000_000_000_000_000),
    ],
)
def test_every_message_shape_round_trips_through_the_wire(message):
    (decoded,) = Decoder().feed(encode(message.to_wire()))
    assert parse(decoded) == message
    assert type(parse(decoded)) is type(message)


def test_a_request_may_omit_its_params_and_unknown_keys_are_ignored():
    assert parse({"id": 1, "method": "pids", "future": True}) == Request(1, "pids", {})


def test_an_unknown_error_code_is_read_as_internal_keeping_the_code():
    message = {"id": 3, "error": {"code": "Exploded", "message": "boom"}}
    assert parse(message) == ErrorResponse(3, protocol.INTERNAL, "Exploded: boom")


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"id": 1},
        {"id": 1, "result": 1, "error": {"code": "Internal", "message": "x"}},
        {"id": True, "result": 1},
        {"id": -1, "result": 1},
        {"id": 2**63, "result": 1},
        {"id": "1", "result": 1},
        {"id": 1, "method": 5},
        {"id": 1, "method": "x", "params": []},
        {"method": "x"},
        {"id": 1, "error": "Internal"},
        {"id": 1, "error": {"code": "Internal"}},
        {"seq": 0, "topic": "/t", "event": {}, "time_ns": 1},
        {"seq": 1, "topic": "/t", "event": {}},
        {"seq": 1, "topic": "/t", "event": [], "time_ns": 1},
        {"seq": 1, "event": {}, "time_ns": 1},
    ],
)
def test_objects_of_no_message_shape_are_protocol_errors(message):
    with pytest.raises(ProtocolError):
        parse(message)


KEYS = st.sampled_from(
    [
        "id",
        "method",
        "params",
        "result",
        "error",
        "code",
        "message",
        "seq",
        "topic",
        "event",
        "time_ns",
    ]
)
SHAPE_LIKE = st.recursive(
    JSON_VALUES, lambda children: st.dictionaries(KEYS, children, max_size=5), max_leaves=12
)


@given(message=st.dictionaries(KEYS, SHAPE_LIKE, max_size=6) | JSON_OBJECTS)
def test_parse_raises_only_protocol_errors(message):
    with contextlib.suppress(ProtocolError):
        assert type(parse(message)) in {Request, Response, ErrorResponse, Event}


def test_error_codes_are_the_names_of_the_daemons_error_classes():
    for code in protocol.ERROR_CODES:
        assert issubclass(getattr(errors, code), errors.CtrdError), code
