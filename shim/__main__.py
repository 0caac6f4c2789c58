"""`python -m shim zygote --state DIR`: start the zygote that forks shims (see shim.zygote)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "zygote" and argv[1] == "--state":
        from shim import zygote

        return zygote.main(argv[2])
    sys.stderr.write("usage: python -m shim zygote --state DIR\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
