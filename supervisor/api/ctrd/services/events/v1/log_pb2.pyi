import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from supervisor.api.containerd.services.events.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplayRequest(_message.Message):
    __slots__ = ("since", "until", "after", "filters", "follow")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    after: int
    filters: _containers.RepeatedScalarFieldContainer[str]
    follow: bool
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., after: _Optional[int] = ..., filters: _Optional[_Iterable[str]] = ..., follow: _Optional[bool] = ...) -> None: ...

class LoggedEvent(_message.Message):
    __slots__ = ("seq", "envelope")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    envelope: _events_pb2.Envelope
    def __init__(self, seq: _Optional[int] = ..., envelope: _Optional[_Union[_events_pb2.Envelope, _Mapping]] = ...) -> None: ...
