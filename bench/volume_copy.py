"""Copy-up: a container whose new named volume is filled from the image, ctrd vs docker.

An image made of the tests' busybox and a layer with `--files` small files (100 directories of
`--files`/100 files of 100 bytes, under /data) is loaded into both engines. Then, `--runs`
times, each engine in turn (which one goes first flips every iteration), after a warm-up:

- `run --rm IMG true` with a new, empty named volume mounted on /data, which the engine fills
  with the image's /data before the container starts (docker's copy-up): docker through
  `docker volume create` + `docker run --rm -v VOL:/data`, ctrd through `ctrctl volume
  create` (the volumes API's Create) + the real `ctr run --rm --label
  ctrd.io/volumes=[{"name": VOL, "target": "/data"}]` (the label ctrctl's `-v` sets: the
  daemon's share; with `--with-ctrctl`, `ctrctl run --rm -v VOL:/data` too);
- the same `run --rm IMG true` without a volume, the baseline.

Reported: medians of each, and the copy's share (the volume run minus the same iteration's
baseline, paired), and the ratio ctrd/docker of both. The volumes are removed (untimed) after
each iteration; the first iteration's are checked to hold every file.

Docker Engine 20.10 runs on a containerd 1.6 of its own, both in a fresh network and mount
namespace, and ctrd in a fresh network namespace, as `bench/network.py` starts them (reused).

    /opt/ctrd/bin/python bench/volume_copy.py [--runs 8] [--files 20000] [--with-ctrctl]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import network
from common import NAMESPACE, REPO, run, scratch_dir, settle
from network import Client, ctrd_engine, docker_engine

sys.path.insert(0, str(REPO))
from supervisor.volumes.labels import VOLUMES_LABEL
from tests.support import images

TAG = "volcopy:latest"
CTR_IMAGE = "docker.io/library/volcopy:latest"
DIRS = 100
_IDS = itertools.count()


def build_archive(directory: Path, files: int) -> Path:
    per_dir = max(1, files // DIRS)
    entries: list[images.Entry] = [images.Dir("data")]
    for d in range(DIRS):
        entries.append(images.Dir(f"data/d{d:03}"))
        entries += [images.File(f"data/d{d:03}/f{f:04}", b"x" * 100) for f in range(per_dir)]
    image = images.build_image(
        [images.busybox_layer("docker"), entries], schema="docker", history=["busybox", "data"]
    )
    return images.docker_archive(image, directory / "volcopy.tar", TAG)


class Engine:
    name: str

    def with_volume(self, volume: str) -> float: ...
    def without(self) -> float: ...
    def create(self, volume: str) -> None: ...
    def remove(self, volume: str) -> None: ...
    def count(self, volume: str) -> int: ...


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, client: Client) -> None:
        self.client = client

    def _docker(self, *args: str) -> str:
        result = run([*self.client.argv, *args], env=self.client.env, capture_output=True,
                     text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return str(result.stdout)

    def with_volume(self, volume: str) -> float:
        return self.client.time("run", "--rm", "-v", f"{volume}:/data", TAG, "true")

    def without(self) -> float:
        return self.client.time("run", "--rm", TAG, "true")

    def create(self, volume: str) -> None:
        self._docker("volume", "create", volume)

    def remove(self, volume: str) -> None:
        self._docker("volume", "rm", volume)

    def count(self, volume: str) -> int:
        out = self._docker("run", "--rm", "-v", f"{volume}:/data", TAG, "busybox", "sh", "-c",
                           "busybox find /data -type f | busybox wc -l")  # fmt: skip
        return int(out.strip())


class CtrdEngine(Engine):
    """ctrd through the real ctr (the label) or ctrctl (`-v`); volumes made and removed with
    `ctrctl volume` (no gRPC channel in this process: it forks a client per run)."""

    def __init__(self, name: str, address: str, fifo_dir: str, ctrctl: bool) -> None:
        self.name = name
        self.address = address
        self.fifo_dir = fifo_dir
        self.ctrctl = ctrctl

    def _time(self, argv: list[str]) -> float:
        start = time.perf_counter()
        result = run(argv, capture_output=True, timeout=300, stdin=subprocess.DEVNULL, cwd=REPO)
        elapsed = time.perf_counter() - start
        if result.returncode:
            raise RuntimeError(f"{argv}: {result.stderr.decode(errors='replace').strip()}")
        return elapsed

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", self.address, "-n", NAMESPACE, *args]

    def _ctrctl(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ctl", "--address", self.address, "--namespace",
                NAMESPACE, *args]  # fmt: skip

    def with_volume(self, volume: str) -> float:
        if self.ctrctl:
            return self._time(self._ctrctl("run", "--rm", "-v", f"{volume}:/data", TAG, "true"))
        mounts = json.dumps([{"name": volume, "target": "/data"}])
        return self._time(self._ctr(
            "run", "--rm", "--fifo-dir", self.fifo_dir, "--label", f"{VOLUMES_LABEL}={mounts}",
            CTR_IMAGE, f"vc-{next(_IDS)}", "true",
        ))  # fmt: skip

    def without(self) -> float:
        if self.ctrctl:
            return self._time(self._ctrctl("run", "--rm", TAG, "true"))
        return self._time(self._ctr("run", "--rm", "--fifo-dir", self.fifo_dir, CTR_IMAGE,
                                    f"vc-{next(_IDS)}", "true"))  # fmt: skip

    def create(self, volume: str) -> None:
        self._time(self._ctrctl("volume", "create", volume))

    def remove(self, volume: str) -> None:
        self._time(self._ctrctl("volume", "rm", volume))

    def count(self, volume: str) -> int:
        shown = run(self._ctrctl("volume", "inspect", volume), capture_output=True, check=True,
                    cwd=REPO)  # fmt: skip
        mountpoint = json.loads(shown.stdout)[0]["Mountpoint"]
        return sum(len(files) for _, _, files in os.walk(mountpoint))


def measure(engines: list[Engine], runs: int, warmup: int, files: int) -> dict[str, dict]:
    series: dict[str, dict[str, list[float]]] = {
        e.name: {"volume": [], "baseline": [], "copy": []} for e in engines
    }
    for i in range(-warmup, runs):
        order = engines if i % 2 == 0 else list(reversed(engines))
        made: list[tuple[Engine, str]] = []
        for engine in order:
            volume = f"bench{i + warmup}{engine.name.replace('/', '')}"
            engine.create(volume)
            made.append((engine, volume))
            with_volume = engine.with_volume(volume)
            baseline = engine.without()
            if i == 0:
                got = engine.count(volume)
                if got != files:
                    raise RuntimeError(f"{engine.name}: the volume holds {got} files, not {files}")
            if i >= 0:
                kept = series[engine.name]
                kept["volume"].append(with_volume)
                kept["baseline"].append(baseline)
                kept["copy"].append(with_volume - baseline)
        for engine, volume in made:
            engine.remove(volume)
        settle(1.0)
        if i >= 0:
            shown = ", ".join(
                f"{name} {kept['volume'][-1] * 1000:.0f}/{kept['baseline'][-1] * 1000:.0f}"
                for name, kept in series.items()
            )
            print(f"run {i + 1}: with volume / without (ms): {shown}", flush=True)
    return series


def report(series: dict[str, dict[str, list[float]]], files: int) -> None:
    med: Callable[[list[float]], float] = statistics.median
    print(f"\ncopy-up of {files} files of 100 B into a new named volume, medians (ms):")
    print(f"  {'':<14} {'run + copy':>11} {'run alone':>10} {'the copy':>9}")
    for name, kept in series.items():
        volume, baseline, copy = (med(kept[k]) * 1000 for k in ("volume", "baseline", "copy"))
        print(f"  {name:<14} {volume:>11.0f} {baseline:>10.0f} {copy:>9.0f}")
    docker = series.get("docker")
    for name, kept in series.items():
        if name == "docker" or docker is None:
            continue
        print(f"  {name}/docker: run + copy {med(kept['volume']) / med(docker['volume']):.2f}, "
              f"the copy {med(kept['copy']) / med(docker['copy']):.2f}")  # fmt: skip


def daemon_side(log: Path) -> None:
    """What ctrd's log says of its copy-ups: the copy and the syncfs that makes it durable
    before it is marked complete."""
    copies, syncs = [], []
    for line in log.read_text(errors="replace").splitlines():
        if '"volume_copied_up"' in line:
            event = json.loads(line)
            copies.append(float(event["ms"]))
            syncs.append(float(event["sync_ms"]))
    if copies:
        copy, sync = statistics.median(copies), statistics.median(syncs)
        print(f"  in ctrd ({len(copies)} copy-ups, medians): the copy {copy:.0f} ms, "
              f"then syncfs {sync:.0f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument(
        "--with-ctrctl",
        action="store_true",
        help="also ctrctl run -v (needs ctrctl's -v for named volumes)",
    )
    args = parser.parse_args()
    files = DIRS * max(1, args.files // DIRS)
    # ctrd at info level: its copy-ups' log lines give the daemon's own times
    network.start_ctrd = functools.partial(common.start_ctrd, log_level="info")
    with scratch_dir("volcopy-") as scratch, contextlib.ExitStack() as stack:
        archive = build_archive(scratch, files)
        docker = stack.enter_context(docker_engine(scratch / "docker"))
        run([*docker.client.argv, "load", "-i", str(archive)], env=docker.client.env,
            check=True, capture_output=True)  # fmt: skip
        ctrd = stack.enter_context(ctrd_engine(scratch / "ctrd", scratch))
        ctrd.daemon.ctr("images", "import", str(archive), ns=NAMESPACE)
        fifo = str(ctrd.daemon.fifo_dir)
        engines: list[Engine] = [
            DockerEngine(docker.client),
            CtrdEngine("ctr/ctrd", ctrd.daemon.address, fifo, ctrctl=False),
        ]
        if args.with_ctrctl:
            engines.append(CtrdEngine("ctrctl/ctrd", ctrd.daemon.address, fifo, ctrctl=True))
        report(measure(engines, args.runs, args.warmup, files), files)
        daemon_side(scratch / "ctrd" / "ctrd.log")


if __name__ == "__main__":
    main()
