from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PullRequest(_message.Message):
    __slots__ = ("ref", "platform", "unpack", "snapshotter")
    REF_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    UNPACK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    ref: str
    platform: str
    unpack: bool
    snapshotter: str
    def __init__(self, ref: _Optional[str] = ..., platform: _Optional[str] = ..., unpack: _Optional[bool] = ..., snapshotter: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("ref", "status", "offset", "total", "image", "digest")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ref: str
    status: str
    offset: int
    total: int
    image: str
    digest: str
    def __init__(self, ref: _Optional[str] = ..., status: _Optional[str] = ..., offset: _Optional[int] = ..., total: _Optional[int] = ..., image: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...
