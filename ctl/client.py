"""ctrctl's side of ctrd's API: images, unpacking, containers, tasks, with docker's names.

Everything here speaks the containerd v1 API (plus ctrd's extensions), so what ctrctl makes
`ctr` sees and the other way round. Container ids: `--name` when given, else 64 random hex
digits as docker makes them; a unique prefix of an id names the container, as in docker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
from collections.abc import Sequence
from types import ModuleType, SimpleNamespace
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.protobuf.message_factory import GetMessageClass

from ctl import spec as oci
from ctl import volopts
from supervisor import digests
from supervisor.api.containerd.runc.options import oci_pb2 as runc_pb
from supervisor.api.containerd.services.containers.v1 import containers_pb2 as cpb
from supervisor.api.containerd.services.content.v1 import content_pb2 as contentpb
from supervisor.api.containerd.services.images.v1 import images_pb2 as ipb
from supervisor.api.containerd.services.leases.v1 import leases_pb2 as lpb
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from supervisor.distribution import reference

SNAPSHOTTER = "overlayfs"
RUNTIME = "io.containerd.runc.v2"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
NAME_LABEL = "ctrctl.name"


class NotFound(Exception):
    """What the user named does not exist (ctrctl says so and exits 125)."""


class ImageNotFound(NotFound):
    """No image of that name in the namespace (`run` may pull it)."""


def normalize(name: str) -> str:
    """docker's short names: `busybox` → `docker.io/library/busybox:latest`."""
    try:
        return str(reference.parse(name))
    except ValueError:
        return name  # not a reference: looked up as it is, and not found


class Conflict(Exception):
    """The name asked for is taken (docker's "Conflict")."""


class NewContainer(NamedTuple):
    """A container `Client.create` made: its id, and the mounts of its root filesystem (what
    Tasks.Create takes, as Snapshots.Mounts would give them). A NamedTuple, not a frozen
    dataclass: defining one of those costs every ctrctl ~0.5 ms at import."""

    id: str
    rootfs: tuple[Any, ...]


def stub(channel: grpc.Channel, module: ModuleType, service: str) -> Any:
    """A client stub for `service` of the generated `_pb2` `module`, made from the service's
    descriptor as its `_pb2_grpc` module makes it: a multi-callable by the name of each method,
    of the kind its streaming says. Importing the `_pb2_grpc` modules (servicers and all) cost
    ~1 ms each; ctrctl needs only their stubs."""
    service_descriptor = module.DESCRIPTOR.services_by_name[service]
    calls = {}
    for method in service_descriptor.methods:
        streaming = (method.client_streaming, method.server_streaming)
        kind = "_".join("stream" if streams else "unary" for streams in streaming)
        calls[method.name] = getattr(channel, kind)(
            f"/{service_descriptor.full_name}/{method.name}",
            request_serializer=GetMessageClass(method.input_type).SerializeToString,
            response_deserializer=GetMessageClass(method.output_type).FromString,
            _registered_method=True,
        )
    return SimpleNamespace(**calls)


def _layers(manifest: dict[str, Any], config: dict[str, Any]) -> list[tuple[Any, str]]:
    """The image's layers (descriptors), each with its snapshot's chain id, bottom first."""
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    return list(zip(manifest.get("layers", []), digests.chain_ids(diff_ids), strict=True))


def _layer_dirs(mounts: Sequence[Any]) -> tuple[str, ...] | None:
    """The directories of a snapshot's mounts, top first, when ctrctl (as root) can read them
    as overlayfs merges them: one overlay (its upperdir, then its lowerdirs) or one bind of a
    directory. None for anything else: then the snapshot is mounted."""
    if len(mounts) != 1 or os.geteuid() != 0:
        return None
    mount = mounts[0]
    if mount.type == "bind":
        layers = [mount.source]
    elif mount.type == "overlay":
        options = dict(option.partition("=")[::2] for option in mount.options)
        upper = [options["upperdir"]] if options.get("upperdir") else []
        layers = [*upper, *options.get("lowerdir", "").split(":")]
    else:
        return None
    if not all(os.path.isabs(d) and "\\" not in d for d in layers):
        return None  # relative or escaped paths: left to the kernel
    return tuple(layers)


def _found(call: Any) -> bool:
    """Whether a call under way (a gRPC future) finds what it asks for: False when NOT_FOUND;
    its other errors raised."""
    try:
        call.result()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


class Client:
    def __init__(self, address: str, namespace: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.address = address
        self.namespace = namespace
        self.md = (("containerd-namespace", namespace),)
        self.images = stub(self.channel, ipb, "Images")
        self.content = stub(self.channel, contentpb, "Content")
        self.snapshots = stub(self.channel, spb, "Snapshots")
        self.containers = stub(self.channel, cpb, "Containers")
        self.tasks = stub(self.channel, tpb, "Tasks")
        self.leases = stub(self.channel, lpb, "Leases")

    def close(self) -> None:
        self.channel.close()

    # -- images -----------------------------------------------------------------------------

    def image(self, name: str) -> ipb.Image:
        """The image `name` (as given, else normalized: `busybox` as docker.io's), both names
        asked for at once: one round trip, not one per name; the first found wins."""
        calls = [
            self.images.Get.future(ipb.GetImageRequest(name=candidate), metadata=self.md)
            for candidate in dict.fromkeys((name, normalize(name)))
        ]
        for call in calls:
            try:
                image: ipb.Image = call.result().image
                return image
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        raise ImageNotFound(f'image "{name}" not found: pull or load it first')

    def read(self, digest: str) -> bytes:
        request = contentpb.ReadContentRequest(digest=digest)
        return b"".join(r.data for r in self.content.Read(request, metadata=self.md))

    def manifest(self, image: ipb.Image) -> dict[str, Any]:
        """The image's manifest for this machine (linux/amd64 by default)."""
        return self.platform_manifest(image)[1]

    def platform_manifest(self, image: ipb.Image) -> tuple[dict[str, Any], dict[str, Any]]:
        """(descriptor, manifest) of the image's manifest for this machine.

        The descriptor is the index's entry (with its platform), or the image's target when
        the target is a manifest itself.
        """
        target = image.target
        document: dict[str, Any] = json.loads(self.read(target.digest))
        if target.media_type in INDEX_TYPES or "manifests" in document:
            machine = os.uname().machine
            arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
            for entry in document.get("manifests", []):
                platform = entry.get("platform", {})
                if platform.get("os", "linux") == "linux" and platform.get("architecture") == arch:
                    return dict(entry), dict(json.loads(self.read(entry["digest"])))
            raise NotFound(f'image "{image.name}" has no linux/{arch} manifest')
        descriptor = {"mediaType": target.media_type, "digest": target.digest, "size": target.size}
        return descriptor, document

    def list_images(self) -> list[ipb.Image]:
        return list(self.images.List(ipb.ListImagesRequest(), metadata=self.md).images)

    def find_images(self, name: str) -> list[ipb.Image]:
        """The images `name` names: by name (as given, or normalized as docker does), else by
        a unique prefix of an image ID (config digest) or of a target digest, which may be
        shared by several names. NotFound (docker's "No such image") otherwise."""
        try:
            return [self.image(name)]
        except NotFound:
            pass
        prefix = name.removeprefix("sha256:")
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            matched: dict[str, list[ipb.Image]] = {}
            for image in self.list_images():
                ids = {image.target.digest, self.config_digest(image)}
                if any(d.partition(":")[2].startswith(prefix) for d in ids if d):
                    matched.setdefault(image.target.digest, []).append(image)
            if len(matched) == 1:
                return next(iter(matched.values()))
            if matched:
                raise NotFound(f'"{name}" names {len(matched)} images: give more of the ID')
        raise NotFound(f"No such image: {name}")

    def config_digest(self, image: ipb.Image) -> str:
        """The image ID docker shows (its config's digest), or "" if its content is gone."""
        try:
            return str(self.platform_manifest(image)[1]["config"]["digest"])
        except (NotFound, KeyError, ValueError):
            return ""
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise

    def image_config(self, image: ipb.Image) -> tuple[dict[str, Any], dict[str, Any]]:
        """(manifest, image config JSON)."""
        manifest = self.manifest(image)
        return manifest, json.loads(self.read(manifest["config"]["digest"]))

    def unpack(self, manifest: dict[str, Any], config: dict[str, Any], lease: str = "") -> str:
        """Unpack the image's layers (what is missing) as ctr does, under `lease` (else one of
        its own); the top chain id. A top snapshot already there means all of them are (a
        snapshot's parents stay while it does): one Stat then."""
        layers = _layers(manifest, config)
        if layers and self._has_snapshot(layers[-1][1]):
            return str(layers[-1][1])
        from supervisor.api.containerd.services.diff.v1 import diff_pb2 as dpb
        from supervisor.api.containerd.types import descriptor_pb2

        diff = stub(self.channel, dpb, "Diff")
        own_lease = not lease
        lease = lease or self._lease()
        md = (*self.md, ("containerd-lease", lease))
        parent = ""
        try:
            for layer, chain in layers:
                if not self._has_snapshot(chain):
                    key = f"extract-{os.urandom(6).hex()} {chain}"
                    mounts = self.snapshots.Prepare(
                        spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=key, parent=parent),
                        metadata=md,
                    ).mounts
                    diff.Apply(
                        dpb.ApplyRequest(
                            diff=descriptor_pb2.Descriptor(
                                media_type=layer["mediaType"],
                                digest=layer["digest"],
                                size=layer["size"],
                            ),
                            mounts=mounts,
                        ),
                        metadata=md,
                    )
                    self.snapshots.Commit(
                        spb.CommitSnapshotRequest(snapshotter=SNAPSHOTTER, name=chain, key=key),
                        metadata=md,
                    )
                parent = chain
        finally:
            if own_lease:
                self.leases.Delete(lpb.DeleteRequest(id=lease), metadata=self.md)
        return parent

    def _has_snapshot(self, key: str) -> bool:
        try:
            self.snapshots.Stat(
                spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=key), metadata=self.md
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    def _lease(self) -> str:
        lease = f"ctrctl-{os.urandom(8).hex()}"
        self.leases.Create(lpb.CreateRequest(id=lease), metadata=self.md)
        return lease

    # -- containers -------------------------------------------------------------------------

    def create(
        self, image_name: str, options: oci.RunOptions, name: str = "", runtime: str = ""
    ) -> NewContainer:
        """Make a container (record, spec, snapshot) for an image. A name taken is said before
        anything else (a missing image too), though both are asked for at once."""
        taken = self._container_get(name) if name else None
        try:
            image = self.image(image_name)
        finally:
            if taken is not None and _found(taken):
                raise Conflict(
                    f'the container name "{name}" is already in use: remove that container'
                    f" (ctrctl rm {name}) or choose another name"
                )
        # One lease from the unpack until the container holds its snapshot, as containerd's
        # client has: the collector would take snapshots nothing refers to yet. Asked for
        # while the image's manifest and config are read.
        lease = f"ctrctl-{os.urandom(8).hex()}"
        leased = self.leases.Create.future(lpb.CreateRequest(id=lease), metadata=self.md)
        try:
            manifest, config = self.image_config(image)
            cid = name or os.urandom(32).hex()
            image_config = config.get("config", {}) or {}
            if options.storage or image_config.get("Volumes"):  # the image's VOLUMEs, names
                storage = volopts.complete(options.storage, image_config)
                options = dataclasses.replace(options, storage=storage)
            if not options.hostname and options.network != "host":
                options = dataclasses.replace(options, hostname=cid[:12])  # as dockerd names it
            labels = oci.container_labels(image_config, options)
        except BaseException:
            with contextlib.suppress(grpc.RpcError):  # the lease, if made, goes: nothing held
                leased.result()
                self.leases.Delete(lpb.DeleteRequest(id=lease), metadata=self.md)
            raise
        leased.result()
        if name:
            labels[NAME_LABEL] = name
        try:
            mounts = self._prepare(cid, manifest, config, lease)
            made: list[str] = []
            try:
                spec = self._spec(cid, mounts, image_config, options)
                if options.storage:  # the volumes it names, made before it (ctl.volumes)
                    from ctl import volumes

                    made = volumes.make(self, options.storage)
                self._create(cid, image.name, labels, runtime, spec)
            except BaseException:
                self._remove_snapshot(cid)
                if made:
                    from ctl import volumes

                    volumes.unmake(self, made)
                raise
        finally:
            self.leases.Delete(lpb.DeleteRequest(id=lease), metadata=self.md)
        return NewContainer(cid, tuple(mounts))

    def _create(
        self, cid: str, image: str, labels: dict[str, str], runtime: str, spec: dict[str, Any]
    ) -> None:
        runtime_options = runc_pb.Options(binary_name=runtime) if runtime else runc_pb.Options()
        container = cpb.Container(
            id=cid,
            image=image,
            labels=labels,
            runtime=cpb.Container.Runtime(
                name=RUNTIME,
                options=any_pb2.Any(
                    type_url="containerd.runc.v1.Options",
                    value=runtime_options.SerializeToString(),
                ),
            ),
            spec=any_pb2.Any(type_url=oci.SPEC_TYPE_URL, value=oci.encode(spec)),
            snapshotter=SNAPSHOTTER,
            snapshot_key=cid,
        )
        self.containers.Create(cpb.CreateContainerRequest(container=container), metadata=self.md)

    def _prepare(
        self, cid: str, manifest: dict[str, Any], config: dict[str, Any], lease: str
    ) -> Sequence[Any]:
        """The container's snapshot on the image's top one: prepared at once, and only when
        that one is not there (NotFound) is the image unpacked first (`unpack`)."""
        md = (*self.md, ("containerd-lease", lease))
        layers = _layers(manifest, config)
        chain = str(layers[-1][1]) if layers else ""
        try:
            return list(self.snapshots.Prepare(
                spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid, parent=chain),
                metadata=md,
            ).mounts)  # fmt: skip
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or not chain:
                raise
        chain = self.unpack(manifest, config, lease)
        return list(self.snapshots.Prepare(
            spb.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid, parent=chain),
            metadata=md,
        ).mounts)  # fmt: skip

    def _container_get(self, cid: str) -> Any:
        """Containers.Get of `cid` under way (a future; `_found` tells its answer)."""
        return self.containers.Get.future(cpb.GetContainerRequest(id=cid), metadata=self.md)

    def _container_exists(self, cid: str) -> bool:
        return _found(self._container_get(cid))

    def _spec(
        self, cid: str, mounts: Sequence[Any], image_config: dict[str, Any],
        options: oci.RunOptions,
    ) -> dict[str, Any]:  # fmt: skip
        """The spec, with the user resolved in the image's /etc/passwd and /etc/group as dockerd
        does it (also without a user: root's groups count): read in the container's own
        snapshot, from its layers' directories when it is an overlay or a bind (`_layer_dirs`),
        else mounted for the while. A ctrctl that may not mount (not root, yet allowed on
        ctrd's socket) runs a container without a user as root with no other groups."""
        layers = _layer_dirs(mounts)
        if layers is not None:
            return oci.generate(self.namespace, cid, image_config, options, layers)
        import tempfile
        from pathlib import Path

        from snapshotter.mount import MountError, mount_all, unmount
        from snapshotter.protocol import Mount

        target = Path(tempfile.mkdtemp(prefix="ctrctl-rootfs-"))
        try:
            try:
                # Read-only: nothing is written, and a read-only overlay's unmount does not
                # sync the upper filesystem (0.9 -> 0.15 ms here, more under I/O).
                mount_all([Mount(m.type, m.source, (*m.options, "ro")) for m in mounts], target)
            except MountError as e:
                if e.errno != errno.EPERM or options.user or image_config.get("User"):
                    raise
                return oci.generate(self.namespace, cid, image_config, options)
            try:
                return oci.generate(self.namespace, cid, image_config, options, target)
            finally:
                unmount(target)
        finally:
            os.rmdir(target)

    def _remove_snapshot(self, key: str) -> None:
        try:
            self.snapshots.Remove(
                spb.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key), metadata=self.md
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def list_containers(self) -> list[cpb.Container]:
        return list(self.containers.List(cpb.ListContainersRequest(), metadata=self.md).containers)

    def resolve(self, name: str) -> str:
        """A container's id from its id, name or a unique id prefix: an id (or name) is one
        Get, only a prefix lists the containers (every spec, ~5 KB each)."""
        try:
            if self._container_exists(name):
                return name
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:  # not an id: maybe a prefix
                raise
        ids = [c.id for c in self.list_containers()]
        if name in ids:
            return name
        matches = [i for i in ids if i.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"No such container: {name}")
        raise NotFound(f'"{name}" names {len(matches)} containers: give more of the id')

    def task(self, cid: str, exec_id: str = "") -> Any | None:
        try:
            return self.tasks.Get(
                tpb.GetRequest(container_id=cid, exec_id=exec_id), metadata=self.md
            ).process
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def all_tasks(self) -> dict[str, Any]:
        """Every task of the namespace by container id, from one List (what `task` gives)."""
        listed = self.tasks.List(tpb.ListTasksRequest(), metadata=self.md).tasks
        return {process.id: process for process in listed}

    def remove(self, cid: str, has_task: bool | None = None) -> cpb.Container:
        """Delete the container, its stopped task and its snapshot; `has_task`: whether it has
        a task, when the caller knows (None: asked). The container as it was."""
        if has_task is None:
            has_task = self.task(cid) is not None
        if has_task:
            self.tasks.Delete(tpb.DeleteTaskRequest(container_id=cid), metadata=self.md)
        container: cpb.Container = self.containers.Get(
            cpb.GetContainerRequest(id=cid), metadata=self.md
        ).container
        self.containers.Delete(cpb.DeleteContainerRequest(id=cid), metadata=self.md)
        if container.snapshot_key:
            self._remove_snapshot(container.snapshot_key)
        return container

    def rootfs(self, cid: str) -> Sequence[Any]:
        container = self.containers.Get(cpb.GetContainerRequest(id=cid), metadata=self.md).container
        return list(
            self.snapshots.Mounts(
                spb.MountsRequest(snapshotter=container.snapshotter or SNAPSHOTTER,
                                  key=container.snapshot_key),
                metadata=self.md,
            ).mounts
        )  # fmt: skip

    def update_labels(self, cid: str, labels: dict[str, str]) -> None:
        from google.protobuf import field_mask_pb2

        container = cpb.Container(id=cid, labels=labels)
        self.containers.Update(
            cpb.UpdateContainerRequest(
                container=container,
                update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
            ),
            metadata=self.md,
        )


def short(cid: str) -> str:
    return cid[:12] if len(cid) == 64 else cid
