"""`ctr content ingest` of a large random file through ctrd vs containerd, and the floor.

The floor is hashing the file (`openssl dgst -sha256`) plus writing it durably
(`dd … conv=fsync`), run one after the other. Usage:

    /opt/ctrd/bin/python bench/content_ingest.py [--size-mib 1024] [--runs 3] [--settle 15]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import time

from common import Samples, daemons, scratch_dir, settle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    size = args.size_mib << 20

    with scratch_dir("ctrd-bench-ingest-") as scratch:
        blob = scratch / "blob.bin"
        hasher = hashlib.sha256()
        with open(blob, "wb") as f:
            for _ in range(args.size_mib):
                chunk = os.urandom(1 << 20)
                hasher.update(chunk)
                f.write(chunk)
        digest = f"sha256:{hasher.hexdigest()}"
        samples = Samples()
        with daemons(scratch) as running:
            for run in range(args.runs):
                settle(args.settle)
                start = time.perf_counter()
                subprocess.run(["openssl", "dgst", "-sha256", str(blob)], capture_output=True)
                copy = scratch / "copy.bin"
                subprocess.run(
                    ["dd", f"if={blob}", f"of={copy}", "bs=1M", "conv=fsync", "status=none"],
                    check=True,
                )
                samples.add("floor", time.perf_counter() - start)
                copy.unlink()
                for daemon in running:
                    settle(args.settle)
                    with open(blob, "rb") as stdin:
                        elapsed = daemon.ctr(
                            "content", "ingest", "--expected-size", str(size),
                            "--expected-digest", digest, f"bench-{run}", stdin=stdin,
                        )  # fmt: skip
                    samples.add(daemon.name, elapsed)
                    daemon.ctr("content", "rm", digest)
        mib = args.size_mib
        samples.report(
            f"ctr content ingest of {mib} MiB (seconds; MB/s = {mib * 1.048576:.0f} / s)",
            lambda v: f"{v:.2f}s",
        )


if __name__ == "__main__":
    main()
