"""`ctr run --rm IMG <id> true` through ctrd vs containerd, and the floor below both.

`ctrctl run --rm IMG true` against ctrd is timed too (the Python client's start-up counts),
alongside the bare start-up of each client (`--help`).

One run creates the container (snapshot and spec), its task (shim, `runc create`), starts it,
waits for `true` to exit, deletes the task and the container: the whole life of a short-lived
container as a client sees it. Runs alternate between the daemons (and flip order each round)
after a few warm-up runs each. The floor is the OCI runtime alone, `runc run` of a bundle
(the same busybox rootfs, `runc spec` with args ["true"], no terminal), and `crun run` where
crun works (crun 1.8 refuses a hybrid cgroup layout: then it is reported unavailable).

    /opt/ctrd/bin/python bench/run_rm.py [--runs 30] [--warmup 3] [--daemons ctrd,containerd]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    DAEMONS,
    NAMESPACE,
    REPO,
    Daemon,
    Samples,
    daemons,
    import_busybox,
    parse_daemons,
    run,
    scratch_dir,
)

RUNTIMES = ("runc", "crun")


def prepare_bundle(directory: Path) -> Path:
    """An OCI bundle of the busybox rootfs whose process is `true`."""
    sys.path.insert(0, str(REPO))
    from tests.support import images

    rootfs = directory / "rootfs"
    rootfs.mkdir(parents=True)
    tar = images.busybox_layer().tar
    subprocess.run(["tar", "-x", "-C", str(rootfs)], input=tar, check=True)
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["true"]
    config["process"]["terminal"] = False
    config["linux"]["cgroupsPath"] = f"/{NAMESPACE}/floor"  # removed with the rest at the end
    config_path.write_text(json.dumps(config, indent=2))
    return directory


class Runtime:
    """`<runtime> --root <dir> run -b <bundle> <id>`, with its state in the scratch dir."""

    def __init__(self, name: str, bundle: Path, root: Path) -> None:
        self.name = name
        self.bundle = bundle
        self.root = root

    def run(self, cid: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[bytes]]:
        argv = [self.name, "--root", str(self.root), "run", "-b", str(self.bundle), cid]
        start = time.perf_counter()
        result = run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=60, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if check and result.returncode:
            raise RuntimeError(f"{self.name} run: {result.stderr.decode().strip()}")
        return elapsed, result

    def probe(self) -> str | None:
        """None when it runs the bundle here, or why it cannot."""
        if shutil.which(self.name) is None:
            return "not installed"
        _, result = self.run(f"probe-{self.name}", check=False)
        if result.returncode == 0:
            return None
        subprocess.run(
            [self.name, "--root", str(self.root), "delete", "-f", f"probe-{self.name}"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {result.returncode}"


def ctr_run_rm(daemon: Daemon, image: str, cid: str) -> float:
    return daemon.ctr(
        "run", "--rm", "--fifo-dir", str(daemon.fifo_dir), image, cid, "true",
        ns=NAMESPACE, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def ctrctl_run_rm(daemon: Daemon, image: str) -> float:
    """ctrd's own client, Python start-up and all: `ctrctl run --rm IMG true`."""
    start = time.perf_counter()
    run(
        [sys.executable, "-m", "ctl", "--address", daemon.address, "--namespace", NAMESPACE,
         "run", "--rm", image, "true"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    return time.perf_counter() - start


def client_start(argv: list[str]) -> float:
    start = time.perf_counter()
    run(argv, stdout=subprocess.DEVNULL, check=True, timeout=60, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--daemons", type=parse_daemons, default=DAEMONS)
    args = parser.parse_args()

    samples = Samples()
    with scratch_dir("ctrd-bench-run-") as scratch:
        bundle = prepare_bundle(scratch / "bundle")
        floors: list[Runtime] = []
        unavailable: dict[str, str] = {}
        for name in RUNTIMES:
            runtime = Runtime(name, bundle, scratch / f"{name}-root")
            why = runtime.probe()
            if why is None:
                floors.append(runtime)
            else:
                unavailable[name] = why
        with daemons(scratch, args.daemons) as running:
            image = ""
            for daemon in running:
                image = import_busybox(daemon, scratch)
            ctrd = next((d for d in running if d.name == "ctrd"), None)
            for i in range(args.warmup):
                for daemon in running:
                    ctr_run_rm(daemon, image, f"warm-{daemon.name}-{i}")
                if ctrd is not None:
                    ctrctl_run_rm(ctrd, image)
                for runtime in floors:
                    runtime.run(f"warm-{runtime.name}-{i}")
            for i in range(args.runs):
                order = running if i % 2 == 0 else running[::-1]
                for daemon in order:
                    samples.add(daemon.name, ctr_run_rm(daemon, image, f"{daemon.name}-{i}"))
                if ctrd is not None:
                    samples.add("ctrctl/ctrd", ctrctl_run_rm(ctrd, image))
                    samples.add("ctrctl --help", client_start([sys.executable, "-m", "ctl", "-h"]))
                    samples.add("ctr --help", client_start(["ctr", "--help"]))
                for runtime in floors:
                    elapsed, _ = runtime.run(f"{runtime.name}-{i}")
                    samples.add(f"{runtime.name} run", elapsed)
    samples.report_spread(
        f"ctr run --rm busybox true (ctrctl/ctrd: ctrctl run --rm), {args.runs} runs after"
        f" {args.warmup} warm-up (ms)",
        lambda v: f"{v * 1000:.1f}",
    )
    for name, why in unavailable.items():
        print(f"  {name + ' run':<12} unavailable: {why}")
    if "runc run" in samples.values:
        floor = samples.median("runc run")
        over = ", ".join(
            f"{daemon} +{(samples.median(daemon) - floor) * 1000:.1f} ms"
            for daemon in (*DAEMONS, "ctrctl/ctrd")
            if daemon in samples.values
        )
        print(f"  over the runc floor (medians): {over}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (containers, shims and daemons were cleaned up)")
