import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PathStat(_message.Message):
    __slots__ = ("name", "size", "mode", "mtime", "link_target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    mode: int
    mtime: _timestamp_pb2.Timestamp
    link_target: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., mtime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., link_target: _Optional[str] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("container_id", "path")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    path: str
    def __init__(self, container_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("stat",)
    STAT_FIELD_NUMBER: _ClassVar[int]
    stat: PathStat
    def __init__(self, stat: _Optional[_Union[PathStat, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("container_id", "path")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    path: str
    def __init__(self, container_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("stat", "data")
    STAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stat: PathStat
    data: bytes
    def __init__(self, stat: _Optional[_Union[PathStat, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("container_id", "path", "no_overwrite_dir_non_dir", "copy_uid_gid", "data")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NO_OVERWRITE_DIR_NON_DIR_FIELD_NUMBER: _ClassVar[int]
    COPY_UID_GID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    path: str
    no_overwrite_dir_non_dir: bool
    copy_uid_gid: bool
    data: bytes
    def __init__(self, container_id: _Optional[str] = ..., path: _Optional[str] = ..., no_overwrite_dir_non_dir: _Optional[bool] = ..., copy_uid_gid: _Optional[bool] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
