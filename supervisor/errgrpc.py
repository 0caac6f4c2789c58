"""The one mapping between `supervisor.errors` and gRPC status codes, both ways.

The server side turns a typed error into a status (`code_of`); clients turn a failed call back
into a typed error (`from_rpc_error`) so that their code can say `except NotFound`.
"""

from __future__ import annotations

import grpc

from supervisor import errors

_CODES: dict[type[errors.CtrdError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.Unknown: grpc.StatusCode.UNKNOWN,
    errors.CtrdError: grpc.StatusCode.UNKNOWN,
}
_KINDS = {code: kind for kind, code in _CODES.items()}


def code_of(error: errors.CtrdError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.UNKNOWN


def from_status(code: grpc.StatusCode, message: str) -> errors.CtrdError:
    """The typed error for a status; the message keeps the server's words, suffix stripped."""
    kind = _KINDS.get(code, errors.CtrdError)
    suffix = f": {kind.kind}"
    detail = message[: -len(suffix)] if message.endswith(suffix) else message
    return kind(detail)


def from_rpc_error(error: grpc.RpcError) -> errors.CtrdError:
    # grpc.aio's AioRpcError carries a status but is not a grpc.Call.
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return errors.CtrdError(str(error))
    return from_status(error.code(), error.details() or "")
