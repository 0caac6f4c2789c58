from __future__ import annotations

import grpc
import pytest

from supervisor import errgrpc, errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
        (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
        (errors.CtrdError, grpc.StatusCode.UNKNOWN),
    ],
)
def test_each_kind_maps_to_its_code_and_back(cls, code):
    error = cls('thing "x"')
    assert errgrpc.code_of(error) == code
    back = errgrpc.from_status(code, str(error))
    assert type(back) is cls
    assert back.detail == 'thing "x"'


def test_messages_read_like_containerds():
    assert str(errors.NotFound('namespace "x"')) == 'namespace "x": not found'


def test_subclasses_map_through_their_base():
    class Gone(errors.NotFound):
        pass

    assert errgrpc.code_of(Gone("y")) == grpc.StatusCode.NOT_FOUND
