"""`ctrctl pull`: ctrd pulls (and unpacks) the image; this shows its progress as docker does.

On a terminal each blob has a line, rewritten in place as its status and byte count change;
otherwise a plain line is printed whenever a blob's status changes (never one per chunk).
The end is docker's: `Digest: ...` and `Status: Downloaded newer image for NAME` (or
`Image is up to date for NAME`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

import grpc

from supervisor.api.ctrd.services.images.v1 import pull_pb2 as pb
from supervisor.api.ctrd.services.images.v1 import pull_pb2_grpc as pb_grpc

SNAPSHOTTER = "overlayfs"
LABELS = {
    "resolving": "Resolving",
    "downloading": "Downloading",
    "done": "Download complete",
    "exists": "Already exists",
    "unpacking": "Extracting",
    "unpacked": "Pull complete",
}
BAR = 40


def short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}" if unit != "B" else f"{n}B"
        value /= 1000
    return f"{n}B"


def bar(offset: int, total: int) -> str:
    """docker's progress bar and byte counts: ` [=====>    ] 1.2MB/3.4MB`."""
    filled = BAR * offset // total if total else 0
    arrow = "=" * max(filled - 1, 0) + (">" if filled < BAR else "=") if filled else ""
    return f" [{arrow.ljust(BAR)}] {size(offset)}/{size(total)}"


def describe(message: Any) -> str:
    label = LABELS.get(message.status, message.status)
    line = f"{short(message.ref)}: {label}"
    if message.status == "downloading" and message.total:
        line += bar(message.offset, message.total)
    return line


class Display:
    """Lines per blob: in place on a terminal, appended otherwise (`describe` words them)."""

    def __init__(self, out: TextIO, tty: bool, describe: Callable[[Any], str] = describe) -> None:
        self.out = out
        self.tty = tty
        self.describe = describe
        self.lines: dict[str, str] = {}
        self.statuses: dict[str, str] = {}

    def update(self, message: Any) -> None:
        if message.status == "resolving":
            self.out.write(f"Pulling {message.ref}\n")
            self.out.flush()
            return
        if self.tty:
            self._redraw(message.ref, self.describe(message))
        elif self.statuses.get(message.ref) != message.status:
            self.statuses[message.ref] = message.status
            self.out.write(self.describe(message).split(" [", 1)[0] + "\n")
            self.out.flush()

    def _redraw(self, ref: str, line: str) -> None:
        if ref in self.lines:
            up = len(self.lines) - list(self.lines).index(ref)
            self.out.write(f"\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
        else:
            self.out.write(line + "\n")
        self.lines[ref] = line
        self.out.flush()


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    request = pb.PullRequest(
        ref=args.image, platform=args.platform or "", unpack=True, snapshotter=SNAPSHOTTER
    )
    display = Display(out, out.isatty())
    last: Any = None
    with grpc.insecure_channel(f"unix:{args.address}") as channel:
        stub = pb_grpc.PullStub(channel)
        metadata = (("containerd-namespace", args.namespace),)
        for message in stub.Pull(request, metadata=metadata):
            if message.image:
                last = message
            else:
                display.update(message)
    if last is None:
        raise RuntimeError("the pull ended without naming the image")
    out.write(f"Digest: {last.digest}\n")
    if last.status == "exists":
        out.write(f"Status: Image is up to date for {last.image}\n")
    else:
        out.write(f"Status: Downloaded newer image for {last.image}\n")
    out.write(f"{last.image}\n")
    return 0
