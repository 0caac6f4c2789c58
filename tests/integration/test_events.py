"""Events: what the stores publish reaches `ctr events` and Subscribe, filtered as containerd."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.protobuf import any_pb2

from supervisor.api.containerd.events import namespace_pb2
from supervisor.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from supervisor.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from tests.support.tasks import CtrEvents

pytestmark = pytest.mark.integration


class Subscription:
    """Envelopes collected from a Subscribe stream on a thread."""

    def __init__(self, ctrd, filters: list[str]) -> None:
        self.envelopes: list[events_pb2.Envelope] = []
        stub = ctrd.stub(events_pb2_grpc.EventsStub)
        self.call = stub.Subscribe(events_pb2.SubscribeRequest(filters=filters))
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()
        self.call.initial_metadata()  # sent once the daemon has registered the subscriber

    def _collect(self) -> None:
        try:
            for envelope in self.call:
                self.envelopes.append(envelope)
        except grpc.RpcError:
            pass

    def topics(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [e.topic for e in self.envelopes]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def create_image(ctrd, md, name: str, ns: str = "default") -> None:
    ctrd.stub(images_pb2_grpc.ImagesStub).Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                name=name,
                labels={"kind": "test"},
                target={"media_type": "application/json", "digest": "sha256:" + "1" * 64,
                        "size": 10},
            )
        ),
        metadata=md(ns),
    )  # fmt: skip


def test_subscribe_gets_image_and_namespace_events_in_order(ctrd, md):
    sub = Subscription(ctrd, [])
    create_image(ctrd, md, "img:1")
    ctrd.ctr("images", "label", "img:1", "x=y")
    ctrd.ctr("images", "rm", "img:1")
    ctrd.ctr("namespaces", "create", "fresh")
    assert sub.topics(4) == [
        "/images/create", "/images/update", "/images/delete", "/namespaces/create",
    ]  # fmt: skip
    create = sub.envelopes[0]
    assert create.namespace == "default"
    assert create.event.type_url == "containerd.services.images.v1.ImageCreate"
    ns_event = namespace_pb2.NamespaceCreate.FromString(sub.envelopes[3].event.value)
    assert sub.envelopes[3].event.type_url == "containerd.events.NamespaceCreate"
    assert ns_event.name == "fresh"
    sub.close()


def test_filters_select_by_topic_namespace_and_event_field(ctrd, md):
    by_topic = Subscription(ctrd, ['topic~="/namespaces/"'])
    by_ns = Subscription(ctrd, ["namespace==other"])
    by_field = Subscription(ctrd, ["event.name==wanted", 'topic=="/images/delete"'])
    create_image(ctrd, md, "wanted")
    create_image(ctrd, md, "other-image", ns="other")
    ctrd.ctr("images", "rm", "wanted")
    ctrd.ctr("namespaces", "create", "n1")
    assert by_topic.topics(1) == ["/namespaces/create"]
    assert by_ns.topics(1) == ["/images/create"]
    assert by_ns.envelopes[0].namespace == "other"
    # Two filters OR: every event named "wanted", and every image delete.
    assert by_field.topics(2) == ["/images/create", "/images/delete"]
    time.sleep(0.2)
    assert len(by_topic.envelopes) == 1
    for sub in (by_topic, by_ns, by_field):
        sub.close()


def test_ctr_events_prints_what_happens(ctrd, md):
    events = CtrEvents(ctrd)
    try:
        create_image(ctrd, md, "seen:1")
        events.wait_for_topic("/images/create")
    finally:
        out = events.stop()
    assert "default /images/create" in out
    assert '"name":"seen:1"' in out.replace(" ", "")


def test_publish_validates_topic_and_delivers(ctrd, md):
    sub = Subscription(ctrd, ['topic=="/custom/thing"'])
    stub = ctrd.stub(events_pb2_grpc.EventsStub)
    payload = any_pb2.Any()
    payload.Pack(namespace_pb2.NamespaceDelete(name="x"))
    stub.Publish(events_pb2.PublishRequest(topic="/custom/thing", event=payload), metadata=md())
    assert sub.topics(1) == ["/custom/thing"]
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(events_pb2.PublishRequest(topic="no-slash", event=payload), metadata=md())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.Subscribe(events_pb2.SubscribeRequest(filters=["topic=="])).next()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sub.close()
