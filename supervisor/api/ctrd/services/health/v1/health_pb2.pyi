import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Result(_message.Message):
    __slots__ = ("start", "end", "exit_code", "output")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    exit_code: int
    output: str
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., output: _Optional[str] = ...) -> None: ...

class ContainerHealth(_message.Message):
    __slots__ = ("container_id", "status", "failing_streak", "log", "started_at")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILING_STREAK_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    status: str
    failing_streak: int
    log: _containers.RepeatedCompositeFieldContainer[Result]
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, container_id: _Optional[str] = ..., status: _Optional[str] = ..., failing_streak: _Optional[int] = ..., log: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class GetHealthResponse(_message.Message):
    __slots__ = ("health",)
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    health: ContainerHealth
    def __init__(self, health: _Optional[_Union[ContainerHealth, _Mapping]] = ...) -> None: ...

class ListHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHealthResponse(_message.Message):
    __slots__ = ("health",)
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    health: _containers.RepeatedCompositeFieldContainer[ContainerHealth]
    def __init__(self, health: _Optional[_Iterable[_Union[ContainerHealth, _Mapping]]] = ...) -> None: ...

class HealthStatus(_message.Message):
    __slots__ = ("container_id", "status", "action")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    status: str
    action: str
    def __init__(self, container_id: _Optional[str] = ..., status: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...
