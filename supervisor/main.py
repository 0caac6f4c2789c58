"""`ctrd`: the daemon's command line. Flags follow containerd's and override the config file."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import signal
import sys

from supervisor import config as config_mod
from supervisor import log as log_mod
from supervisor.debug import hooks
from supervisor.errors import CtrdError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ctrd", description="ctrd: a container supervisor speaking containerd's API"
    )
    parser.add_argument("--config", "-c", help="path to the TOML configuration file")
    parser.add_argument("--root", help="directory for persistent data (default /var/lib/ctrd)")
    parser.add_argument("--state", help="directory for volatile state (default /run/ctrd)")
    parser.add_argument(
        "--address", "-a", help="unix socket to serve on (default /run/ctrd/ctrd.sock)"
    )
    parser.add_argument(
        "--log-level", "-l", choices=config_mod.LEVELS, help="log level (default info)"
    )
    parser.add_argument("--version", "-v", action="store_true", help="print the version")
    return parser.parse_args(argv)


# glibc's malloc gives each block over its mmap threshold (128 KiB at first) a mapping of its
# own, unmapped again at free, and hands the heap's free top back past a trim threshold. gRPC
# and protobuf allocate each message anew, so every 1 MiB chunk of an upload faulted in 256
# fresh pages: ~450,000 page faults and over 1 s of CPU per GiB ingested. Fixed thresholds keep
# blocks up to 4 MiB on the heap and up to 16 MiB of it free for reuse.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20


def tune_malloc() -> bool:
    """Set glibc's thresholds (see above); False where malloc is not glibc's."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


async def run(cfg: config_mod.Config) -> None:
    from supervisor.server import Daemon  # after logging is configured

    # Handled before the socket listens: a client may stop the daemon as soon as it answers,
    # and it must then stop as it always does (its zygote too), not die of the signal.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stacks: on SIGUSR1 into the log (as containerd's goroutines), and on the debug socket.
    # A plain handler, not the loop's: a loop stuck in a callback must still dump.
    hooks.install(loop)
    signal.signal(signal.SIGUSR1, hooks.on_signal)
    debug = None
    if cfg.debug.address:
        from supervisor.debug.server import DebugServer

        debug = DebugServer(cfg.debug.address, cfg.debug.uid, cfg.debug.gid)
    try:
        daemon = await Daemon.start(cfg)
        try:
            await stop.wait()
        finally:
            await daemon.stop()
    finally:
        if debug is not None:
            debug.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        from supervisor.services.version import version

        print(f"ctrd {version()}")
        return 0
    try:
        cfg = config_mod.load(args.config).with_overrides(
            root=args.root, state=args.state, address=args.address, log_level=args.log_level
        )
    except CtrdError as e:
        print(f"ctrd: {e.detail}", file=sys.stderr)
        return 2
    log_mod.configure(cfg.debug.level, cfg.debug.format)
    tune_malloc()
    try:
        asyncio.run(run(cfg))
    except CtrdError as e:
        print(f"ctrd: {e.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
