"""`ctrctl images`, `rmi`, `tag` and the `image` group (ls, rm, tag, inspect, prune).

What docker's words mean here:

- IMAGE ID is the digest of the image's config for this machine's platform (docker's image
  ID), shortened to 12 hex digits; an image whose content is gone shows its target's digest.
- SIZE is what the image takes unpacked: the sum of its layers' committed snapshots (their
  usage as the snapshotter recorded it at commit), as docker shows its layers' size. An image
  not unpacked (or only partly) shows the size of its content (compressed blobs) instead.
- CREATED is the config's `created` time (when the image was built), as docker shows it.
- An image is used by a container when a container's image has the same target. `rmi` refuses
  to remove the last name of such an image unless -f (the container keeps its own snapshot and
  can go on running); other names are only untagged, as docker does.
- "Dangling": containerd keeps no untagged images as docker does, so here an image is dangling
  when its name carries no tag (only a digest, `repo@sha256:...`) and no tagged image has the
  same target; `image prune` removes those that no container uses. `image prune -a` removes
  every image no container uses.

Deleting the last name of a target asks ctrd to collect garbage before answering (the sync
option), so the space is free when the command returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

IMAGES_TEXT = (
    "List images: REPOSITORY TAG IMAGE ID CREATED SIZE. IMAGE ID is the config's digest;"
    " SIZE is the unpacked size (the layers' snapshots), or the content's size for an image"
    " not unpacked."
)
PRUNE_TEXT = (
    "Remove dangling images: names without a tag (repo@sha256:...) whose target no tagged"
    " image has and no container uses. With -a, every image no container uses."
)
DANGLING_WARNING = "WARNING! This will remove all dangling images."
ALL_WARNING = (
    "WARNING! This will remove all images without at least one container associated to them."
)


def add_parsers(commands: Any) -> None:
    images = commands.add_parser("images", help="list images", description=IMAGES_TEXT)
    _ls_options(images)
    rmi = commands.add_parser("rmi", help="remove images", description=_RM_TEXT)
    _rm_options(rmi)
    tag = commands.add_parser("tag", help="give an image another name", description=_TAG_TEXT)
    _tag_options(tag)
    group = commands.add_parser(
        "image",
        help="manage images",
        description="Manage images: ls, rm, tag, inspect, prune, pull, push, save, load.",
    )
    sub = group.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", aliases=["list"], help="list images", description=IMAGES_TEXT)
    _ls_options(ls)
    rm = sub.add_parser("rm", aliases=["remove"], help="remove images", description=_RM_TEXT)
    _rm_options(rm)
    _tag_options(sub.add_parser("tag", help="give an image another name", description=_TAG_TEXT))
    inspect = sub.add_parser(
        "inspect",
        help="show images as JSON",
        description="Show images as JSON: name, target descriptor, config digest (id), size,"
        " created, labels, platform, config.",
    )
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.set_defaults(handler="ctl.images:inspect+client")
    prune = sub.add_parser("prune", help="remove unused images", description=PRUNE_TEXT)
    prune.add_argument("-a", "--all", action="store_true", help="every image no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    prune.set_defaults(handler="ctl.images:prune+client")


_RM_TEXT = (
    "Remove images by name or ID (a unique prefix of it). An image a container uses is"
    " refused unless -f. Prints Untagged: NAME for each name, Deleted: DIGEST once the last"
    " name of an image is gone."
)
_TAG_TEXT = "Create TARGET_IMAGE naming the same image as SOURCE_IMAGE (names as docker's)."


def _ls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="image IDs only")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--no-trunc", action="store_true", help="full image IDs")
    parser.set_defaults(handler="ctl.images:ls+client")


def _rm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--force", action="store_true", help="also images in use")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.set_defaults(handler="ctl.images:rm+client")


def _tag_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE_IMAGE")
    parser.add_argument("target", metavar="TARGET_IMAGE")
    parser.set_defaults(handler="ctl.images:tag+client")


# --- what an image is made of -----------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    name: str
    target: dict[str, Any]  # mediaType, digest, size
    config_digest: str  # "" when the image's content is gone
    created: float  # seconds since the epoch (config's "created", else the record's)
    labels: dict[str, str]
    platform: dict[str, str]
    config: dict[str, Any]  # the image config's "config" (Env, Cmd, Entrypoint, ...)
    blobs: dict[str, int] = field(default_factory=dict)  # digest → size of what it needs
    chain: tuple[str, ...] = ()  # chain ids of its layers, bottom first
    unpacked: int | None = None  # bytes of its layers' snapshots; None if not unpacked

    @property
    def id(self) -> str:
        return self.config_digest or self.target["digest"]

    @property
    def content_size(self) -> int:
        return sum(self.blobs.values()) or int(self.target["size"])

    @property
    def size(self) -> int:
        return self.unpacked if self.unpacked is not None else self.content_size


def repository_and_tag(name: str) -> tuple[str, str]:
    """docker's REPOSITORY and TAG columns: familiar names, `<none>` for a digest-only one."""
    from supervisor.distribution import reference

    try:
        ref = reference.parse(name)
    except ValueError:
        return name, "<none>"
    familiar = reference.Reference(ref.domain, ref.path).familiar()
    return familiar, ref.tag or "<none>"


def familiar(name: str) -> str:
    from supervisor.distribution import reference

    try:
        return reference.parse(name).familiar()
    except ValueError:
        return name


def is_dangling(name: str) -> bool:
    """A name without a tag: `repo@sha256:...` (docker would show it as <none>)."""
    from supervisor.distribution import reference

    try:
        ref = reference.parse(name)
    except ValueError:
        return False
    return not ref.tag and bool(ref.digest)


def inspect_image(client: Client, image: Any, usage: dict[str, int | None]) -> ImageInfo:
    """What the image is made of; `usage` caches snapshot usage by chain id across images."""
    import grpc

    from ctl.client import NotFound
    from supervisor import digests

    target = {
        "mediaType": image.target.media_type,
        "digest": image.target.digest,
        "size": image.target.size,
    }
    base = {
        "name": image.name,
        "target": target,
        "labels": dict(image.labels),
        "created": image.created_at.seconds + image.created_at.nanos / 1e9,
    }
    try:
        descriptor, manifest = client.platform_manifest(image)
        config_descriptor = manifest["config"]
        config = json.loads(client.read(config_descriptor["digest"]))
    except NotFound:
        return ImageInfo(config_digest="", platform={}, config={}, **base)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return ImageInfo(config_digest="", platform={}, config={}, **base)
    blobs = {target["digest"]: int(target["size"]), descriptor["digest"]: descriptor["size"]}
    blobs[config_descriptor["digest"]] = int(config_descriptor["size"])
    for layer in manifest.get("layers", []):
        blobs[layer["digest"]] = int(layer["size"])
    chain = tuple(digests.chain_ids(config.get("rootfs", {}).get("diff_ids", [])))
    sizes = [_usage(client, key, usage) for key in chain]
    platform = {
        key: str(config.get(name) or descriptor.get("platform", {}).get(name, ""))
        for key, name in (("os", "os"), ("architecture", "architecture"), ("variant", "variant"))
    }
    if created := config.get("created"):
        base["created"] = _parse_time(str(created)) or base["created"]
    return ImageInfo(
        config_digest=str(config_descriptor["digest"]),
        platform={k: v for k, v in platform.items() if v},
        config=dict(config.get("config") or {}),
        blobs=blobs,
        chain=chain,
        unpacked=None if not sizes or None in sizes else sum(s or 0 for s in sizes),
        **base,
    )


def _usage(client: Client, key: str, cache: dict[str, int | None]) -> int | None:
    import grpc

    from ctl.client import SNAPSHOTTER
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    if key not in cache:
        try:
            cache[key] = client.snapshots.Usage(
                spb.UsageRequest(snapshotter=SNAPSHOTTER, key=key), metadata=client.md
            ).size
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            cache[key] = None
    return cache[key]


def _parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time, 0 if it is none."""
    from ctl.times import parse_rfc3339

    try:
        return parse_rfc3339(text).timestamp()
    except ValueError:
        return 0.0


def all_images(client: Client) -> list[ImageInfo]:
    usage: dict[str, int | None] = {}
    return [inspect_image(client, image, usage) for image in client.list_images()]


def users(client: Client, images: list[ImageInfo]) -> dict[str, list[str]]:
    """Container ids by the target digest of the image they were made from."""
    targets = {i.name: i.target["digest"] for i in images}
    used: dict[str, list[str]] = {}
    for container in client.list_containers():
        digest = targets.get(container.image)
        if digest:
            used.setdefault(digest, []).append(container.id)
    return used


# --- commands ----------------------------------------------------------------------------------


def ls(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import ago, human_size, table

    images = sorted(all_images(client), key=lambda i: (-i.created, i.name))
    if args.quiet:
        ids = [i.id if args.no_trunc else _short(i.id) for i in images]
        for image_id in dict.fromkeys(ids):
            print(image_id)
        return 0
    if args.format == "json":
        print(json.dumps([_row(i) for i in images], indent=2))
        return 0
    now = time.time()
    rows = []
    for image in images:
        repository, tag = repository_and_tag(image.name)
        image_id = image.id if args.no_trunc else _short(image.id)
        rows.append([repository, tag, image_id, ago(image.created, now), human_size(image.size, 3)])
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows, shrink=(0, 1))
    return 0


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def _row(image: ImageInfo) -> dict[str, Any]:
    repository, tag = repository_and_tag(image.name)
    return {
        "name": image.name,
        "repository": repository,
        "tag": tag,
        "id": image.id,
        "digest": image.target["digest"],
        "created": _rfc3339(image.created),
        "size": image.size,
        "contentSize": image.content_size,
        "unpacked": image.unpacked is not None,
    }


def _rfc3339(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def inspect(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(inspect_images(client, args.images), indent=2))
    return 0


def inspect_images(client: Client, names: list[str]) -> list[dict[str, Any]]:
    """`image inspect`'s objects for the images these names or ID prefixes give."""
    usage: dict[str, int | None] = {}
    out = []
    for name in names:
        for image in client.find_images(name):
            info = inspect_image(client, image, usage)
            out.append(
                {
                    "name": info.name,
                    "id": info.id,
                    "configDigest": info.config_digest,
                    "target": info.target,
                    "size": info.size,
                    "contentSize": info.content_size,
                    "unpacked": info.unpacked is not None,
                    "created": _rfc3339(info.created),
                    "labels": info.labels,
                    "platform": info.platform,
                    "config": info.config,
                    "rootfs": {"chainIds": list(info.chain)},
                }
            )
    return out


def tag(client: Client, args: argparse.Namespace) -> int:
    import grpc

    from supervisor.api.containerd.services.images.v1 import images_pb2 as ipb
    from supervisor.distribution import reference

    [source, *_] = client.find_images(args.source)
    target = reference.parse(args.target)
    if target.digest:
        raise ValueError(f'refusing to create a tag with a digest reference: "{args.target}"')
    image = ipb.Image(name=str(target), target=source.target, labels=source.labels)
    try:
        client.images.Create(ipb.CreateImageRequest(image=image), metadata=client.md)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        client.images.Update(ipb.UpdateImageRequest(image=image), metadata=client.md)
    return 0


class Conflict(Exception):
    """The image is in use, or named several times, and -f was not given."""


def rm(client: Client, args: argparse.Namespace) -> int:
    from ctl.client import NotFound, short

    failed = False
    for name in args.images:
        try:
            matched = client.find_images(name)
            if len(matched) > 1 and not args.force:
                raise Conflict(
                    f"conflict: unable to delete {name} (must be forced) - image is referenced"
                    " in multiple repositories"
                )
            digest = matched[0].target.digest
            if not args.force:
                # As docker: a name among others is only untagged; the last one is refused
                # while a container uses the image.
                images = all_images(client)
                names = {i.name for i in images if i.target["digest"] == digest}
                using = users(client, images).get(digest, [])
                if using and not names - {m.name for m in matched}:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{name}" (must force)'
                        f" - container {short(using[0])} is using its referenced image"
                        f" {_short(_id_of(images, digest))}"
                    )
            for line in delete(client, [m.name for m in matched]):
                print(line)
        except (NotFound, Conflict) as e:
            print(f"ctrctl: {e}", file=sys.stderr)
            failed = True
    return 125 if failed else 0


def _id_of(images: list[ImageInfo], digest: str) -> str:
    return next((i.id for i in images if i.target["digest"] == digest), digest)


def delete(client: Client, names: list[str]) -> list[str]:
    """Delete image records (GC runs with the last); docker's Untagged/Deleted lines."""
    from supervisor.api.containerd.services.images.v1 import images_pb2 as ipb

    targets = {i.name: i.target.digest for i in client.list_images()}
    lines = []
    for n, name in enumerate(names):
        client.images.Delete(
            ipb.DeleteImageRequest(name=name, sync=n == len(names) - 1), metadata=client.md
        )
        lines.append(f"Untagged: {familiar(name)}")
        digest = targets.pop(name, "")
        if digest and digest not in targets.values():
            lines.append(f"Deleted: {digest}")
    return lines


def prunable(images: list[ImageInfo], used: dict[str, list[str]], all_: bool) -> list[str]:
    """Names `image prune` removes (see the module's docstring for "dangling")."""
    tagged = {i.target["digest"] for i in images if not is_dangling(i.name)}
    names = []
    for image in images:
        digest = image.target["digest"]
        if digest in used:
            continue
        if all_ or (is_dangling(image.name) and digest not in tagged):
            names.append(image.name)
    return names


def confirm(warning: str, force: bool) -> bool:
    """docker's question; anything but y/yes (or no answer at all) is a no."""
    if force:
        return True
    sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def prune_images(client: Client, all_: bool) -> list[str]:
    images = all_images(client)
    names = prunable(images, users(client, images), all_)
    return delete(client, names) if names else []


def prune(client: Client, args: argparse.Namespace) -> int:
    from ctl.system import disk_total

    if not confirm(ALL_WARNING if args.all else DANGLING_WARNING, args.force):
        return 0
    prune_and_report(client, args.all, disk_total(client))
    return 0


def prune_and_report(client: Client, everything: bool, before: int) -> None:
    """Prune images and print docker's report; `before` is the disk use measured first."""
    from ctl.system import disk_total
    from ctl.table import human_size

    lines = prune_images(client, everything)
    if lines:
        print("Deleted Images:")
        for line in lines:
            print(line[0].lower() + line[1:])
        print()
    print(f"Total reclaimed space: {human_size(max(before - disk_total(client), 0))}")
