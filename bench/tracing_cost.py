"""What tracing costs: `ctr run --rm IMG <id> true` on ctrd from another source tree (the code
before tracing and the debug hooks: `--before DIR`), on this tree with tracing off, and on this
tree with tracing on (exporting by OTLP/HTTP to a receiver in this process), interleaved; and
the time to import the daemon's modules in each tree.

    git archive a3900a0 | tar -x -C /tmp/before     # the commit before issue 19's tracing
    /opt/ctrd/bin/python bench/tracing_cost.py --before /tmp/before [--runs 40] [--warmup 3]

"Costing nothing measurable when off": the off and before medians should differ by less than
their run-to-run spread. Each daemon runs on a temporary root of its own; everything is
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from common import (
    NAMESPACE,
    REPO,
    Daemon,
    Samples,
    _wait_or_kill,
    compile_sources,
    import_busybox,
    remove_cgroups,
    run,
    scratch_dir,
    tear_down,
)


@contextmanager
def ctrd_from(tree: Path, base: Path, config: str = "") -> Iterator[Daemon]:
    """ctrd running the code under `tree` (its modules and its shims) on `base`."""
    base.mkdir(parents=True)
    args = []
    if config:
        (base / "config.toml").write_text(config)
        args = ["--config", str(base / "config.toml")]
    env = dict(os.environ, PYTHONPATH=str(tree), OTEL_BSP_SCHEDULE_DELAY="500")
    with open(base / "ctrd.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--root", str(base / "root"),
             "--state", str(base / "state"), "--address", str(base / "ctrd.sock"),
             "--log-level", "warning", *args],
            stdout=out, stderr=out, cwd=tree, env=env, start_new_session=True,
        )  # fmt: skip
    _wait_or_kill(str(base / "ctrd.sock"), proc, base / "ctrd.log")
    daemon = Daemon(tree.name, str(base / "ctrd.sock"), proc, base)
    try:
        yield daemon
    finally:
        tear_down(daemon)


def import_ms(tree: Path, module: str, runs: int = 15) -> tuple[float, float]:
    """`python -X importtime -c 'import MODULE'` from `tree`: the module's cumulative import
    time in ms, minimum and median over the runs (bytecode compiled beforehand)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    packages = [str(tree / p) for p in ("supervisor", "shim", "snapshotter", "ctl")]
    run([sys.executable, "-m", "compileall", "-q", *packages], cwd=tree, env=env)
    took = []
    for _ in range(runs):
        out = run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            cwd=tree, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        last = [line for line in out.stderr.splitlines() if line.endswith(f"| {module}")][-1]
        took.append(int(last.split("|")[1]) / 1000)
    return min(took), statistics.median(took)


def added_imports(runs: int = 15) -> dict[str, float]:
    """The self import time (ms, minimum over runs) of each module tracing and the debug hooks
    add to a daemon that has tracing off: what `import supervisor.server` loads of them."""
    mine = ("supervisor.tracing", "supervisor.debug", "supervisor.debug.hooks")
    compile_sources()  # as a daemon's imports find them (bytecode written)
    best: dict[str, float] = {}
    for _ in range(runs):
        out = run(
            [sys.executable, "-X", "importtime", "-c", "import supervisor.main, supervisor.server"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        for line in out.stderr.splitlines():
            self_us, _, name = (
                part.strip() for part in line.removeprefix("import time:").split("|")
            )
            if name in mine:
                best[name] = min(best.get(name, float("inf")), int(self_us) / 1000)
    return best


def micro(loops: int = 20000) -> dict[str, float]:
    """What each piece costs with tracing off, in-process (µs per use, best of 5): a task
    made through the debug hooks' factory (vs the default), a step's `tracing.span` (a shared
    no-op), and a shim call's extra check and await (`ShimClient.call` -> `_call`)."""
    import asyncio
    import timeit

    sys.path.insert(0, str(REPO))
    from supervisor import tracing
    from supervisor.debug import hooks

    async def nothing() -> None:
        pass

    async def made(n: int) -> float:
        """µs per `loop.create_task` (the tasks then run to their end, untimed)."""
        loop = asyncio.get_running_loop()
        coros = [nothing() for _ in range(n)]
        start = time.perf_counter()
        made = [loop.create_task(c) for c in coros]
        took = time.perf_counter() - start
        await asyncio.gather(*made)
        return took / n * 1e6

    async def factories() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        plain, hooked = [], []
        for _ in range(15):  # interleaved, the best of each
            loop.set_task_factory(None)
            plain.append(await made(loops))
            hooks.install(loop)
            hooked.append(await made(loops))
        return min(plain), min(hooked)

    async def _timed(fn: Any, n: int) -> float:
        start = time.perf_counter()
        await fn(n)
        return time.perf_counter() - start

    def span() -> None:
        with tracing.span("task.step"):
            pass

    async def inner() -> int:
        return 1

    async def checked() -> int:
        if tracing.on():
            return 0
        return await inner()

    async def direct_calls(n: int) -> None:
        for _ in range(n):
            await inner()

    async def checked_calls(n: int) -> None:
        for _ in range(n):
            await checked()

    async def calls() -> float:
        plain = min([await _timed(direct_calls, loops) for _ in range(5)])
        wrapped = min([await _timed(checked_calls, loops) for _ in range(5)])
        return (wrapped - plain) / loops * 1e6

    plain, hooked = asyncio.run(factories())
    return {
        "a task made, default factory": plain,
        "a task made, debug hooks' factory": hooked,
        "tracing.span (off)": min(timeit.repeat(span, number=loops, repeat=5)) / loops * 1e6,
        "shim call: check + extra await": asyncio.run(calls()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="source tree to compare")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro", action="store_true", help="only the in-process figures")
    args = parser.parse_args()
    for name, us in micro().items():
        print(f"{name}: {us:.2f} µs")
    for name, ms in added_imports().items():
        print(f"import {name} (self, min of 15): {ms:.2f} ms")
    if args.micro:
        return
    if args.before is None:
        parser.error("--before DIR is needed to time runs against another tree")
    before = args.before.resolve()
    sys.path.insert(0, str(REPO))
    from tests.support.otlp import Receiver

    receiver = Receiver().start_http()
    samples = Samples()
    with scratch_dir("tracing-cost") as scratch, ExitStack() as stack:
        runs = {
            "before": stack.enter_context(ctrd_from(before, scratch / "before")),
            "off": stack.enter_context(ctrd_from(REPO, scratch / "off")),
            "on": stack.enter_context(
                ctrd_from(REPO, scratch / "on", f'[tracing]\nendpoint = "{receiver.endpoint}"\n')
            ),
        }
        for daemon in runs.values():
            image = import_busybox(daemon, scratch)
        order = list(runs)
        for i in range(args.warmup + args.runs):
            for name in order if i % 2 == 0 else reversed(order):
                daemon = runs[name]
                took = daemon.ctr(
                    "run", "--rm", "--fifo-dir", str(daemon.fifo_dir), image, f"t{i}", "true",
                    ns=NAMESPACE, timeout=60,
                )  # fmt: skip
                if i >= args.warmup:
                    samples.add(name, took)
        remove_cgroups(NAMESPACE)
    receiver.stop()
    samples.report_spread("ctr run --rm true", lambda s: f"{s * 1000:.1f} ms")
    spread = statistics.stdev(samples.values["before"]) * 1000
    delta = (samples.median("off") - samples.median("before")) * 1000
    print(f"  off - before: {delta:+.1f} ms (stdev of before's runs {spread:.1f} ms)")
    print(f"  spans received with tracing on: {len(receiver.spans)}")
    for module in ("supervisor.main", "supervisor.server"):
        (b_min, b_median), (n_min, n_median) = import_ms(before, module), import_ms(REPO, module)
        print(
            f"import {module} (min / median of 15): before {b_min:.1f} / {b_median:.1f} ms, "
            f"now {n_min:.1f} / {n_median:.1f} ms"
        )


if __name__ == "__main__":
    main()
