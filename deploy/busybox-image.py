#!/usr/bin/env python3
"""Build the quickstart's image offline: busybox from Debian's busybox-static, as an archive.

    deploy/busybox-image.py [ARCHIVE]     (default /var/lib/ctrd/images/busybox.tar)

The archive is an OCI image layout holding one image, docker.io/library/busybox:latest, with
/bin/busybox, its common applets, /etc/passwd and /etc/group: load it with
`ctrctl load -i ARCHIVE` (or `ctr images import ARCHIVE`). The image is the one the tests
build (tests/support/images.py of this checkout), so the same busybox gives the same
digest. The archive is written beside ARCHIVE and renamed into place when whole.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT = Path("/var/lib/ctrd/images/busybox.tar")
NAME = "docker.io/library/busybox:latest"


def _test_images() -> ModuleType:
    """tests/support/images.py, loaded by path: another `tests` package cannot shadow it."""
    path = CHECKOUT / "tests" / "support" / "images.py"
    spec = importlib.util.spec_from_file_location("ctrd_test_images", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    target = Path(argv[0]) if argv else DEFAULT
    images = _test_images()
    if not images.BUSYBOX.is_file():
        print(f"{images.BUSYBOX} is missing: install busybox-static", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        images.oci_archive(images.busybox_image(), partial, NAME)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{target}: {NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
