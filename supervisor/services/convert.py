"""Small translations shared by the servicers: times and descriptors."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from supervisor.api.containerd.types import descriptor_pb2
from supervisor.metadata.images import Descriptor


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def descriptor_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def descriptor_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))
