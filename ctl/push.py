"""`ctrctl push`: ctrd pushes an image to its registry; this shows the progress as docker does.

    ctrctl push [--platform P] IMAGE [TARGET]

IMAGE is normalized as pull names images (busybox -> docker.io/library/busybox:latest); with
TARGET the image goes there instead of to its own name (as `ctrctl tag IMAGE TARGET` and a push
of TARGET would, without keeping the tag). With --platform, an index gives way to that
platform's manifest alone; without, an index whose manifests are not all here is refused.

Output is docker's: `The push refers to repository [NAME]`, one line per layer (Preparing,
Waiting, Pushing with a bar, Pushed, Layer already exists, Mounted from REPO), rewritten in
place on a terminal and printed once per status change otherwise; configs and manifests go
without a line, as in docker. The last line is `TAG: digest: sha256:... size: N`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

LABELS = {
    "preparing": "Preparing",
    "waiting": "Waiting",
    "pushing": "Pushing",
    "pushed": "Pushed",
    "exists": "Layer already exists",
}


def add_parsers(commands: Any) -> None:
    push = commands.add_parser(
        "push",
        help="push an image to a registry (ctrd sends it)",
        description=(
            "Push IMAGE to its registry, or to TARGET (another reference) when given. Only what"
            " the registry lacks is sent; layers another repository of that registry has are"
            " mounted from it."
        ),
    )
    push.add_argument(
        "--platform",
        help="os/arch[/variant]: of an index, push only this platform's manifest",
    )
    push.add_argument("image")
    push.add_argument("target", nargs="?", help="push under this reference instead")
    push.set_defaults(handler="ctl.push:run")


def shown(message: Any) -> bool:
    """Whether a progress message gets a line: layers (and blobs of unknown kinds) do, configs
    and manifests do not (docker shows layers only)."""
    from supervisor.distribution import manifest

    kind = manifest.ref_key(manifest.Descriptor(message.media_type, "", 0)).partition("-")[0]
    return kind in ("layer", "unknown")


def describe(message: Any) -> str:
    from ctl.pull import bar, short

    if message.status == "mounted":
        label = f"Mounted from {message.mounted_from}"
    else:
        label = LABELS.get(message.status, message.status)
    line = f"{short(message.ref)}: {label}"
    if message.status == "pushing" and message.total:
        line += bar(message.offset, message.total)
    return line


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import grpc

    from ctl.pull import Display
    from supervisor.api.ctrd.services.images.v1 import push_pb2 as pb
    from supervisor.api.ctrd.services.images.v1 import push_pb2_grpc as pb_grpc
    from supervisor.distribution import reference

    target = reference.parse(args.target or args.image)
    request = pb.PushRequest(image=args.image, ref=args.target or "", platform=args.platform or "")
    out.write(f"The push refers to repository [{target.name}]\n")
    out.flush()
    display = Display(out, out.isatty(), describe)
    last: Any = None
    with grpc.insecure_channel(f"unix:{args.address}") as channel:
        stub = pb_grpc.PushStub(channel)
        metadata = (("containerd-namespace", args.namespace),)
        for message in stub.Push(request, metadata=metadata):
            if message.status == "done":
                last = message
            elif shown(message):
                display.update(message)
    if last is None:
        raise RuntimeError("the push ended without naming what it pushed")
    pushed = reference.parse(last.image)
    prefix = f"{pushed.tag}: " if pushed.tag else ""
    out.write(f"{prefix}digest: {last.digest} size: {last.total}\n")
    return 0
