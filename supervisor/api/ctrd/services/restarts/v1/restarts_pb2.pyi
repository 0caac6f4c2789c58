import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListRestartsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class RestartState(_message.Message):
    __slots__ = ("container_id", "restart_count", "restarting", "started_at", "exited", "exit_status", "exited_at", "restart_at")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESTARTING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTART_AT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    restart_count: int
    restarting: bool
    started_at: _timestamp_pb2.Timestamp
    exited: bool
    exit_status: int
    exited_at: _timestamp_pb2.Timestamp
    restart_at: _timestamp_pb2.Timestamp
    def __init__(self, container_id: _Optional[str] = ..., restart_count: _Optional[int] = ..., restarting: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exited: _Optional[bool] = ..., exit_status: _Optional[int] = ..., exited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restart_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRestartsResponse(_message.Message):
    __slots__ = ("restarts",)
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    restarts: _containers.RepeatedCompositeFieldContainer[RestartState]
    def __init__(self, restarts: _Optional[_Iterable[_Union[RestartState, _Mapping]]] = ...) -> None: ...
