"""The few kinds of error the daemon's cores raise.

Each kind is one class; a core raises it with a detail that names the object, and the message
reads like containerd's (`namespace "x": not found`), which clients show to people as is. The
one mapping to gRPC status codes lives in `supervisor.errgrpc`: this module imports nothing of
gRPC so that every layer may use it.
"""

from __future__ import annotations


class CtrdError(Exception):
    """Base of every typed error. `kind` is the suffix containerd puts on its messages."""

    kind = "unknown"

    def __init__(self, detail: str, *, plain: bool = False) -> None:
        """`plain`: the message is the detail alone, for the few errors containerd words
        without its suffix (`status.Errorf(codes.NotFound, "task %v not found", id)`)."""
        super().__init__(detail)
        self.detail = detail
        self.plain = plain

    def __str__(self) -> str:
        return self.detail if self.plain else f"{self.detail}: {self.kind}"


class NotFound(CtrdError):
    kind = "not found"


class AlreadyExists(CtrdError):
    kind = "already exists"


class InvalidArgument(CtrdError):
    kind = "invalid argument"


class FailedPrecondition(CtrdError):
    """Also what containerd returns for conflicts and for "not modified"."""

    kind = "failed precondition"


class Unavailable(CtrdError):
    kind = "unavailable"


class OutOfRange(CtrdError):
    kind = "out of range"


class Unimplemented(CtrdError):
    kind = "not implemented"


class Aborted(CtrdError):
    kind = "aborted"


class DataLoss(CtrdError):
    kind = "data loss"


class PermissionDenied(CtrdError):
    kind = "permission denied"


class Internal(CtrdError):
    kind = "internal"


class Unknown(CtrdError):
    """An error nothing more is known of, such as the OCI runtime's (as containerd reports it)."""

    kind = "unknown"


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a failed task group should raise: its first CtrdError (nested groups searched),
    else the group itself. The other tasks were cancelled because of that one."""
    for error in group.exceptions:
        found = first_error(error) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(found, CtrdError):
            return found
    return group
