from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PushRequest(_message.Message):
    __slots__ = ("image", "ref", "platform")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    image: str
    ref: str
    platform: str
    def __init__(self, image: _Optional[str] = ..., ref: _Optional[str] = ..., platform: _Optional[str] = ...) -> None: ...

class PushProgress(_message.Message):
    __slots__ = ("ref", "status", "offset", "total", "media_type", "mounted_from", "image", "digest")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    MOUNTED_FROM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ref: str
    status: str
    offset: int
    total: int
    media_type: str
    mounted_from: str
    image: str
    digest: str
    def __init__(self, ref: _Optional[str] = ..., status: _Optional[str] = ..., offset: _Optional[int] = ..., total: _Optional[int] = ..., media_type: _Optional[str] = ..., mounted_from: _Optional[str] = ..., image: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...
