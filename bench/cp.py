"""`cp` both ways, ctrctl on ctrd vs docker on Docker Engine 20.10 (on its own containerd).

One running busybox container per engine (`run -d ... sleep`). Then, `--runs` times, each
engine in turn (which one goes first flips every iteration), after a warm-up:

- `cp DIR C:/tmp/in-N`: a local tree of `--files` small files (100 directories of 100-byte
  files) into the container, under a new name;
- `cp C:/tmp/in-N OUT/N`: the same tree out again, to a new local directory;
- `cp BIG C:/tmp/big-N` and `cp C:/tmp/big-N OUT/big-N`: one file of `--big-mib` MiB.

Each time is the whole command, as a user waits for it (the CLI's start included: Python's
for ctrctl, Go's for docker). Reported: medians and the ratio ctrd/docker. The first
iteration's copies are checked (file count, size). Docker runs on a containerd 1.6 of its
own and ctrd in a fresh network namespace, as `bench/network.py` starts them (reused).

    /opt/ctrd/bin/python bench/cp.py [--runs 5] [--files 20000] [--big-mib 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from common import scratch_dir
from network import Client, ctrd_engine, docker_engine

DIRS = 100
OPS = ("tree in", "tree out", "big in", "big out")


def make_tree(root: Path, files: int) -> int:
    per_dir = max(1, files // DIRS)
    for d in range(DIRS):
        directory = root / f"d{d:03}"
        directory.mkdir(parents=True)
        for f in range(per_dir):
            (directory / f"f{f:04}").write_bytes(b"x" * 100)
    return DIRS * per_dir


def one_round(
    client: Client, name: str, tree: Path, big: Path, out: Path, n: int
) -> dict[str, float]:
    return {
        "tree in": client.time("cp", str(tree), f"{name}:/tmp/in-{n}"),
        "tree out": client.time("cp", f"{name}:/tmp/in-{n}", str(out / f"tree-{n}")),
        "big in": client.time("cp", str(big), f"{name}:/tmp/big-{n}"),
        "big out": client.time("cp", f"{name}:/tmp/big-{n}", str(out / f"big-{n}")),
    }


def check(out: Path, n: int, files: int, big_size: int) -> None:
    count = sum(len(names) for _, _, names in os.walk(out / f"tree-{n}"))
    if count != files or (out / f"big-{n}").stat().st_size != big_size:
        raise RuntimeError(f"{out}: {count} files of {files}, or a big file of the wrong size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--big-mib", type=int, default=64)
    args = parser.parse_args()
    with scratch_dir("cp-") as scratch, contextlib.ExitStack() as stack:
        tree = scratch / "tree"
        files = make_tree(tree, args.files)
        big = scratch / "big"
        with open(big, "wb") as f:
            f.write(os.urandom(1 << 20) * args.big_mib)
        docker = stack.enter_context(docker_engine(scratch / "docker"))
        ctrd = stack.enter_context(ctrd_engine(scratch / "ctrd", scratch))
        clients = [docker.client, ctrd.client]
        for client in clients:
            client.time("run", "-d", "--name", "cpbench", client.image, "sleep", "100000")
        samples: dict[tuple[str, str], list[float]] = {}
        for n in range(args.warmup + args.runs):
            order = clients if n % 2 == 0 else list(reversed(clients))
            for client in order:
                out = scratch / f"out-{client.name}"
                out.mkdir(exist_ok=True)
                times = one_round(client, "cpbench", tree, big, out, n)
                if n == 0:
                    check(out, n, files, args.big_mib << 20)
                if n >= args.warmup:
                    for op, value in times.items():
                        samples.setdefault((client.name, op), []).append(value)
        report(samples, [c.name for c in clients], files, args.big_mib)


def report(
    samples: dict[tuple[str, str], list[float]], engines: list[str], files: int, big: int
) -> None:
    median: Callable[[str, str], float] = lambda e, op: statistics.median(samples[e, op])  # noqa: E731
    print(f"cp of {files} files of 100 B and of one {big} MiB file (medians, ms)")
    print(f"{'':10}" + "".join(f"{e:>12}" for e in engines) + f"{'ratio':>10}")
    for op in OPS:
        cells = "".join(f"{median(e, op) * 1000:12.0f}" for e in engines)
        ratio = median(engines[-1], op) / median(engines[0], op)
        print(f"{op:10}{cells}{ratio:10.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
