"""Cold `ctr images pull` (fetch + unpack) of a large image from a loopback registry.

The image is built here: 10 layers, ~200 MB uncompressed, ~20,000 files, later layers deleting
and rewriting files of earlier ones. Each run starts every daemon on a fresh root, so every pull
is cold; runs alternate between ctrd and containerd and the filesystem settles between them.

    /opt/ctrd/bin/python bench/pull_unpack.py [--runs 3] [--settle 20] [--layers 10] [--files 2000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time

from common import REPO, Samples, daemons, scratch_dir, settle

sys.path.insert(0, str(REPO))

from tests.support import images
from tests.support.registry import Registry

FILE_SIZE = 10_000


def build(layers: int, files: int) -> images.Image:
    """Half-random file contents: gzip gets about 2:1, as on real images."""
    rng = random.Random(42)
    built: list[list[images.Entry]] = [images.busybox_rootfs_layer()]
    for n in range(layers):
        entries: list[images.Entry] = []
        for i in range(files):
            body = rng.randbytes(FILE_SIZE // 2) + bytes(FILE_SIZE // 2)
            entries.append(images.File(f"data/l{n:02d}/d{i % 50:02d}/f{i:05d}", body))
        if n:
            entries.extend(  # delete 5% of the layer below
                images.Whiteout(f"data/l{n - 1:02d}/d{i % 50:02d}/f{i:05d}")
                for i in range(0, files, 20)
            )
            for i in range(1, files, 20):  # rewrite another 5%
                body = rng.randbytes(FILE_SIZE)
                entries.append(images.File(f"data/l{n - 1:02d}/d{i % 50:02d}/f{i:05d}", body))
        built.append(entries)
    built[1] = built[0] + built[1]  # busybox and the first data layer as one
    return images.build_image(built[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()

    image = build(args.layers, args.files)
    size = sum(len(layer.tar) for layer in image.layers)
    packed = sum(len(layer.data) for layer in image.layers)
    count = sum(layer.tar.count(b"ustar") for layer in image.layers)
    print(
        f"image: {len(image.layers)} layers, {size / 1e6:.0f} MB uncompressed, "
        f"{packed / 1e6:.0f} MB compressed, ~{count} tar entries"
    )
    samples = Samples()
    with scratch_dir("ctrd-bench-pull-") as scratch:
        (scratch / "registry").mkdir()
        with Registry(base=scratch / "registry") as reg:
            pushed = reg.push("bench/large", "latest", image)
            # Each pull on a fresh daemon, in an order that rotates from round to round: on
            # this ext4 what comes right after large deletions is slower, whoever it is.
            kinds = [("ctrd", "ctr"), ("containerd", "ctr"), ("ctrd", "ctrctl")]
            if shutil.which("containerd") is None:
                print("containerd is not installed: measuring without it")
                kinds.remove(("containerd", "ctr"))
            for run in range(args.runs):
                for n in range(len(kinds)):
                    name, client = kinds[(run + n) % len(kinds)]
                    base = scratch / f"run{run}-{n}"
                    with daemons(base, names=(name,)) as (daemon,):
                        settle(args.settle)
                        if client == "ctr":
                            elapsed = daemon.ctr("images", "pull", "--plain-http", pushed.ref)
                            samples.add(name, elapsed)
                        else:
                            # ctrd's own pull: layers fetched 3 at a time, unpacked in order
                            # as they complete.
                            begin = time.perf_counter()
                            subprocess.run(
                                [sys.executable, "-m", "ctl", "--address", daemon.address,
                                 "--namespace", "default", "pull", pushed.ref],
                                check=True, stdout=subprocess.DEVNULL, cwd=REPO,
                            )  # fmt: skip
                            samples.add("ctrd (ctrctl pull)", time.perf_counter() - begin)
                    shutil.rmtree(base, ignore_errors=True)
    samples.report(
        f"cold ctr images pull of {size / 1e6:.0f} MB / ~{count} entries (seconds)",
        lambda v: f"{v:.2f}s",
    )


if __name__ == "__main__":
    main()
