"""containerd.services.images.v1.Images over the namespaced image store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor.api.containerd.events import image_pb2 as events_pb2
from supervisor.api.containerd.services.images.v1 import images_pb2 as pb
from supervisor.api.containerd.services.images.v1 import images_pb2_grpc as pb_grpc
from supervisor.events import Exchange
from supervisor.metadata.gc import Collector
from supervisor.metadata.images import Image, ImageStore
from supervisor.services import rpc
from supervisor.services.convert import descriptor_from_pb, descriptor_to_pb, timestamp

Context = grpc.aio.ServicerContext[Any, Any]


def image_to_pb(image: Image) -> pb.Image:
    return pb.Image(
        name=image.name,
        labels=dict(image.labels),
        target=descriptor_to_pb(image.target),
        created_at=timestamp(image.created_at),
        updated_at=timestamp(image.updated_at),
    )


def image_from_pb(image: pb.Image) -> Image:
    return Image(image.name, descriptor_from_pb(image.target), dict(image.labels))


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, store: Callable[[str], ImageStore], events: Exchange, gc: Collector) -> None:
        self._store = store
        self._events = events
        self._gc = gc

    async def Get(self, request: pb.GetImageRequest, context: Context) -> Any:
        image = await self._store(rpc.namespace(context)).get(request.name)
        return pb.GetImageResponse(image=image_to_pb(image))

    async def List(self, request: pb.ListImagesRequest, context: Context) -> Any:
        images = await self._store(rpc.namespace(context)).list(list(request.filters))
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in images])

    async def Create(self, request: pb.CreateImageRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        image = await self._store(ns).create(image_from_pb(request.image))
        await self._events.publish(
            ns, "/images/create", events_pb2.ImageCreate(name=image.name, labels=image.labels)
        )
        return pb.CreateImageResponse(image=image_to_pb(image))

    async def Update(self, request: pb.UpdateImageRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        image = await self._store(ns).update(
            image_from_pb(request.image), list(request.update_mask.paths)
        )
        await self._events.publish(
            ns, "/images/update", events_pb2.ImageUpdate(name=image.name, labels=image.labels)
        )
        return pb.UpdateImageResponse(image=image_to_pb(image))

    async def Delete(self, request: pb.DeleteImageRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        await self._store(ns).delete(request.name)
        await self._events.publish(ns, "/images/delete", events_pb2.ImageDelete(name=request.name))
        if request.sync:
            await self._gc.collect()
        else:
            self._gc.mark_dirty()
        return empty_pb2.Empty()
