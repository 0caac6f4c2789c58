"""The wire protocol between the daemon and a shim, version 1: a contract between two programs.

A shim outlives the daemon that started it, so a newer daemon may talk to an older shim: change
this protocol only in ways both sides accept (add optional keys; never change what one means).

Transport: one unix stream socket per shim connection, carrying frames in both directions.

Frame::

    length   4 bytes, unsigned big-endian: how many payload bytes follow;
             1 <= length <= MAX_FRAME (4 MiB = 4,194,304); anything else is a protocol error
    payload  exactly `length` bytes: the UTF-8 encoding of one JSON text (RFC 8259) whose
             top-level value is an object

Nothing else is on the stream: no magic, no version byte, no padding between frames. Encoders
write compact ASCII-only JSON (other characters as \\u escapes), never NaN or Infinity. Decoders
accept any UTF-8 JSON object and reject, as protocol errors: invalid UTF-8, invalid JSON (a BOM
included), a top-level value that is not an object, NaN/Infinity and numbers that overflow a
double, integers of more than 4,300 digits, and nesting deeper than Python's recursion limit.
A protocol error is fatal to the connection: the receiver closes it and the peers reconnect.
That loses nothing, because events are replayed from the shim's journal by sequence number.

Messages (a receiver ignores keys not listed here, so that later versions may add some)::

    request   daemon -> shim   {"id": int, "method": str, "params": object}
    response  shim -> daemon   {"id": int, "result": any JSON value}
                            or {"id": int, "error": {"code": str, "message": str}}
    event     shim -> daemon   {"seq": int, "topic": str, "event": object, "time_ns": int}

- A message with "method" is a request, one with "seq" an event, any other a response, which
  has exactly one of "result" and "error". A request may omit "params" (meaning {}).
- "id" (0 <= id < 2**63) is chosen by the daemon, unique among its requests in flight on the
  connection; the shim answers each request exactly once, with the same id, in any order.
- Tracing (optional both ways): a request's params may hold "traceparent", the daemon's span
  as W3C trace context (`00-<trace id>-<span id>-<flags>`). The shim then answers an object
  result with "spans" added: [{"name": str, "start_ns": int, "end_ns": int}, ...], wall-clock
  times of its handling ("shim.<method>") and of the runtime commands it ran for it ("runc
  create"), which the daemon records as child spans. Requests without it get no "spans".
- "code" is one of ERROR_CODES, spelled as the error classes of `supervisor/errors.py`, which
  the daemon raises for them. A receiver reads a code it does not know as "Internal"
  (`parse` does this, keeping the unknown code in the message).
- Events: "seq" counts from 1 in the shim's journal (`shim.journal`) without gaps; "time_ns" is
  the wall-clock time the shim journaled the event, in nanoseconds since the Unix epoch; "topic"
  is containerd's (`/tasks/exit`). The shim writes an event to its journal (an exit durably)
  before it sends it, and may send it more than once (a replay after a reconnect can overlap
  live events).
  So the daemon keeps, per shim, the last seq it has recorded (in the same transaction as the
  event's effects), ignores every event whose seq is not greater, and treats a seq beyond the
  next one as loss to be recovered by asking for a replay. That gives exactly-once delivery.

This module is pure (no I/O) and stdlib-only: it is imported by the shim, which must stay light.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, NamedTuple

VERSION = 1
MAX_FRAME = 4 * 1024 * 1024
"""The largest payload a frame may carry, in bytes (the 4-byte length prefix not included)."""

NOT_FOUND = "NotFound"
ALREADY_EXISTS = "AlreadyExists"
INVALID_ARGUMENT = "InvalidArgument"
FAILED_PRECONDITION = "FailedPrecondition"
UNAVAILABLE = "Unavailable"
UNIMPLEMENTED = "Unimplemented"
INTERNAL = "Internal"
UNKNOWN = "Unknown"
ERROR_CODES = frozenset(
    {
        NOT_FOUND,
        ALREADY_EXISTS,
        INVALID_ARGUMENT,
        FAILED_PRECONDITION,
        UNAVAILABLE,
        UNIMPLEMENTED,
        INTERNAL,
        UNKNOWN,
    }
)

_HEADER = struct.Struct(">I")
_MAX_ID = 2**63


class ProtocolError(Exception):
    """The peer broke this protocol (or a message cannot be sent): close the connection."""


# Values are NamedTuples, not frozen dataclasses: `dataclasses` imports inspect, ast and dis,
# which cost every shim about 1.3 MB (a fifth of its own memory). NamedTuples are as typed and
# as frozen.
class Request(NamedTuple):
    id: int
    method: str
    params: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "params": self.params}


class Response(NamedTuple):
    id: int
    result: Any

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "result": self.result}


class ErrorResponse(NamedTuple):
    id: int
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "error": {"code": self.code, "message": self.message}}


class Event(NamedTuple):
    seq: int
    topic: str
    event: dict[str, Any]
    time_ns: int

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "topic": self.topic, "event": self.event, "time_ns": self.time_ns}


Message = Request | Response | ErrorResponse | Event


def dumps(message: dict[str, Any]) -> bytes:
    """The payload for `message`: compact ASCII JSON. ProtocolError if it is not JSON."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(message).__name__}")
    try:
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"message is not JSON: {e}") from None
    return text.encode("ascii")


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding `message`; ProtocolError if it is not JSON or exceeds MAX_FRAME."""
    payload = dumps(message)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the maximum of {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number out of range: {text}")
    return number


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(payload: bytes) -> dict[str, Any]:
    """The object a payload holds; ProtocolError if it holds none (see the rules above)."""
    try:
        value = json.loads(
            payload.decode("utf-8"), parse_float=_finite, parse_constant=_reject_constant
        )
    # ValueError covers invalid UTF-8 and JSON and over-long integers; RecursionError, nesting.
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"invalid frame: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(value).__name__}")
    return value


class Decoder:
    """Turns the bytes of a stream, however they are split, into messages.

    After a ProtocolError the stream has lost its framing: every later `feed` raises again.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._failure: str | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held: non-zero at end of stream means a torn frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The messages completed by `data`, in order (perhaps none)."""
        if self._failure is not None:
            raise ProtocolError(f"stream already broken: {self._failure}")
        try:
            return self._feed(data)
        except ProtocolError as e:
            self._failure = str(e)
            self._buffer.clear()
            raise

    def _feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._buffer
        buffer += data
        messages: list[dict[str, Any]] = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, start)
            if not 1 <= length <= self._max_frame:
                # Refused on sight of the header: a huge length is never buffered for.
                raise ProtocolError(f"frame length {length} outside 1..{self._max_frame}")
            end = start + _HEADER.size + length
            if len(buffer) < end:
                break
            messages.append(loads(bytes(buffer[start + _HEADER.size : end])))
            start = end
        del buffer[:start]
        return messages


def _int(message: dict[str, Any], key: str, low: int, high: int = _MAX_ID) -> int:
    value = message.get(key)
    # bool is an int in Python but not in JSON's eyes.
    if type(value) is not int or not low <= value < high:
        raise ProtocolError(f"{key!r} must be an integer in {low}..{high - 1}: {value!r}")
    return value


def _str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key!r} must be a string: {value!r}")
    return value


def _object(
    message: dict[str, Any], key: str, default: dict[str, Any] | None = None
) -> dict[str, Any]:
    value = message.get(key, default)
    if not isinstance(value, dict):
        raise ProtocolError(f"{key!r} must be an object: {value!r}")
    return value


def parse(message: dict[str, Any]) -> Message:
    """The typed message a decoded object is; ProtocolError if it has none of the shapes."""
    if "method" in message:
        return Request(
            _int(message, "id", 0), _str(message, "method"), _object(message, "params", {})
        )
    if "seq" in message:
        return Event(
            _int(message, "seq", 1),
            _str(message, "topic"),
            _object(message, "event"),
            _int(message, "time_ns", 0),
        )
    if ("result" in message) == ("error" in message):
        raise ProtocolError(f"not a request, response nor event: keys {sorted(message)}")
    ident = _int(message, "id", 0)
    if "result" in message:
        return Response(ident, message["result"])
    error = _object(message, "error")
    code, text = _str(error, "code"), _str(error, "message")
    if code not in ERROR_CODES:
        return ErrorResponse(ident, INTERNAL, f"{code}: {text}")
    return ErrorResponse(ident, code, text)
