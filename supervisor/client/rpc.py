"""What every client proxy shares: the request headers and typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from supervisor import errgrpc, identifiers
from supervisor import headers as header_names

NAMESPACE_HEADER = header_names.NAMESPACE
LEASE_HEADER = header_names.LEASE

Metadata = tuple[tuple[str, str], ...]


def headers(namespace: str, lease: str | None = None) -> Metadata:
    """The metadata every namespaced call carries."""
    out = [(NAMESPACE_HEADER, identifiers.validate(namespace))]
    if lease:
        out.append((LEASE_HEADER, lease))
    return tuple(out)


@contextmanager
def typed_errors() -> Iterator[None]:
    """Raise a failed call's status as its typed error (`except NotFound` works)."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise errgrpc.from_rpc_error(e) from None
