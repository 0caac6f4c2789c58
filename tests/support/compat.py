"""The real `ctr` against ctrd and against a real containerd, side by side, compared.

`Both.started()` starts a ctrd (`tests.conftest.Ctrd`) and a private containerd
(`tests.support.containerd`, its CRI plugin disabled, in a mount namespace of its own) on
temporary directories, and puts a `RecordingProxy` in front of each: a generic gRPC proxy that
forwards every call as raw bytes and records its method and final status code, in the order
the calls started. `both.ctr(*args, ns=...)` runs the same `ctr` command line against each
proxy and returns a `Pair` of `Outcome`s: exit code, stdout and stderr (one stream, as a
terminal shows them) with what legitimately differs masked, and the RPC sequence.
`assert_same(pair)` fails with a unified diff of the two when they differ.

What is masked (`DEFAULT_MASKS`, plus a case's own `masks=`): each daemon's temporary
directory (so sockets, FIFO dirs and mount paths read `<base>`), RFC 3339 times, ctr's ages
("2 seconds"), UUIDs. Digests are not masked: the same bytes written to both daemons give the
same digests, and a test that writes different bytes should say so with its own mask.

How to add a case (see tests/integration/test_ctr_compat.py):

    @pytest.fixture(scope="module")
    def both() -> Iterator[compat.Both]:
        with compat.Both.started() as pair:
            yield pair

    def test_snapshots_rm_of_a_missing_key(both):
        both.setup("namespaces", "create", "case-1")      # must succeed on both, not compared
        compat.assert_same(both.ctr("snapshots", "rm", "nope", ns="case-1"))

Use a namespace of its own per case: the daemons live for the whole module. In arguments,
`{base}` and `{fifo}` are replaced by each daemon's temporary directory and a FIFO directory
in it (for `ctr run --fifo-dir {fifo}`: ctr's default is the host's /run/containerd/fifo).
`assert_same(pair, calls="unordered")` compares the RPCs as a multiset (for commands that
make calls concurrently) and `calls="ignore"` not at all; `ignoring=("Content/Info", ...)`
leaves out the calls whose method ends so (a progress display's polling, say, whose count
depends on how long the command takes).

Where containerd is not installed, `Both.started` fails the test (CI installs it).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest

from tests.conftest import Ctrd, require_binary
from tests.support.containerd import Containerd

Mask = tuple[str, str]  # (regular expression, replacement)

CallOrder = Literal["ordered", "unordered", "ignore"]

DEFAULT_MASKS: tuple[Mask, ...] = (
    (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", "<time>"),
    (
        r"\b(Less than a second|About a minute|About an hour|\d+ (seconds|minutes|hours|days))\b",
        "<age>",
    ),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>"),
)

_MAX_MESSAGE = 1 << 30
# Per-hop keys and those grpc refuses to send again itself.
_NOT_FORWARDED = frozenset(
    ("user-agent", "content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-status",
     "grpc-message", "grpc-accept-encoding", "grpc-internal-encoding-request")
)  # fmt: skip


def _forwardable(metadata: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metadata if not k.startswith(":") and k not in _NOT_FORWARDED]


@dataclass(frozen=True)
class Call:
    method: str  # e.g. /containerd.services.snapshots.v1.Snapshots/Remove
    code: str  # grpc.StatusCode name: OK, NOT_FOUND, ...
    details: str
    abandoned: bool = False  # the client cancelled it before it ended

    def __str__(self) -> str:
        # ctr stops reading a blob once it has what it needs and cancels the stream, racing
        # the daemon's end of it: ctr never sees the status either way, so both read as OK.
        code = "OK" if self.abandoned else self.code
        return f"{self.method.removeprefix('/containerd.services.')} {code}"


class RecordingProxy(grpc.GenericRpcHandler):
    """Listens on `listen`, forwards every call to `upstream` as raw bytes, records each.

    Every method is handled as stream-stream (a unary call is a stream of one message), so all
    four kinds pass unchanged; request metadata, deadlines, response headers, trailers, codes
    and details are passed on. A call is recorded before its status goes back to the client,
    so once `ctr` has exited its calls are all there (`wait_idle` covers those it abandoned).
    """

    def __init__(self, listen: str, upstream: str) -> None:
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        self._channel = grpc.insecure_channel(
            f"unix:{upstream}", options=[*options, ("grpc.enable_retries", 0)]
        )
        self._calls: list[Call | None] = []  # by order of start; None while in flight
        self._lock = threading.Condition()
        self._server = grpc.server(ThreadPoolExecutor(32), handlers=[self], options=options)
        self._server.add_insecure_port(f"unix:{listen}")
        self._server.start()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method  # type: ignore[attr-defined]
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._forward, method))

    def _forward(
        self, method: str, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        with self._lock:
            seq = len(self._calls)
            self._calls.append(None)
        code, details = grpc.StatusCode.CANCELLED, "abandoned by the client"
        try:
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None and remaining < 1e8 else None
            calls: list[grpc.Future] = []
            upstream = self._channel.stream_stream(method)(
                _passing(requests, calls), metadata=_forwardable(context.invocation_metadata()),
                timeout=timeout,
            )  # fmt: skip
            calls.append(upstream)
            context.add_callback(upstream.cancel)
            try:
                if headers := _forwardable(upstream.initial_metadata() or ()):
                    context.send_initial_metadata(headers)
                yield from upstream
                code, details = upstream.code(), upstream.details() or ""
                trailers = upstream.trailing_metadata()
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                trailers = error.trailing_metadata()  # type: ignore[attr-defined]
            if trailers := _forwardable(trailers or ()):
                context.set_trailing_metadata(trailers)
            if code != grpc.StatusCode.OK:
                context.set_code(code)
                context.set_details(details)
        finally:
            abandoned = not context.is_active() and code == grpc.StatusCode.CANCELLED
            with self._lock:
                self._calls[seq] = Call(method, code.name, details, abandoned)
                self._lock.notify_all()

    def mark(self) -> int:
        """A point in the record: `calls_since(mark)` gives the calls started after it."""
        with self._lock:
            return len(self._calls)

    def wait_idle(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._lock.wait_for(lambda: None not in self._calls, timeout)

    def calls_since(self, mark: int) -> tuple[Call, ...]:
        self.wait_idle()
        with self._lock:
            return tuple(call for call in self._calls[mark:] if call is not None)

    def stop(self) -> None:
        self._server.stop(grace=1).wait()
        self._channel.close()


def _passing(requests: Iterator[bytes], upstream: list[grpc.Future]) -> Iterator[bytes]:
    """The client's messages; a client that goes away cancels the upstream call rather than
    half-closing it (which would read as a complete request stream)."""
    try:
        yield from requests
    except grpc.RpcError:
        for call in upstream:
            call.cancel()


@dataclass(frozen=True)
class Outcome:
    """What one daemon made of one ctr command line, masked."""

    daemon: str
    exit_code: int
    output: str  # stdout and stderr interleaved, masked
    calls: tuple[Call, ...]

    def render(self, calls: CallOrder = "ordered", ignoring: Sequence[str] = ()) -> str:
        """The outcome as text; calls whose method ends with one of `ignoring` left out."""
        kept = [c for c in self.calls if not any(c.method.endswith(m) for m in ignoring)]
        listed = [str(call) for call in kept]
        if calls == "unordered":
            listed.sort()
        elif calls == "ignore":
            listed = ["(not compared)"]
        return "\n".join([f"exit {self.exit_code}", "--- output", self.output.rstrip("\n"),
                          "--- calls", *listed])  # fmt: skip


@dataclass(frozen=True)
class Pair:
    args: tuple[str, ...]
    ns: str
    ctrd: Outcome
    containerd: Outcome


@dataclass
class Side:
    """One daemon behind its proxy."""

    name: str
    base: Path  # the daemon's temporary directory (masked as <base>)
    proxy: RecordingProxy
    tap: str  # the proxy's socket: what ctr talks to
    log: Any  # () -> str: the daemon's log, for failure messages

    @property
    def fifo_dir(self) -> Path:
        path = self.base / "fifo"
        path.mkdir(exist_ok=True)
        return path

    def run(
        self,
        args: Sequence[str],
        ns: str,
        input: bytes | None,
        timeout: float,
        masks: Sequence[Mask],
    ) -> Outcome:
        argv = [arg.replace("{base}", str(self.base)).replace("{fifo}", str(self.fifo_dir))
                for arg in args]  # fmt: skip
        mark = self.proxy.mark()
        result = subprocess.run(
            [require_binary("ctr"), "-a", self.tap, "-n", ns, *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, input=input, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        output = result.stdout.decode("latin-1").replace(str(self.base), "<base>")
        for pattern, replacement in (*DEFAULT_MASKS, *masks):
            output = re.sub(pattern, replacement, output)
        return Outcome(self.name, result.returncode, output, self.proxy.calls_since(mark))


class Both:
    """A ctrd and a containerd, each behind a recording proxy; see the module docstring."""

    def __init__(self, ctrd: Side, containerd: Side) -> None:
        self.ctrd_side = ctrd
        self.containerd_side = containerd

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[Both]:
        require_binary("ctr")
        if not Containerd.installed():
            pytest.fail("containerd is not installed: run deploy/setup.sh (the containerd package)")
        tmp = Path(tempfile.mkdtemp(prefix="ctrd-compat-", dir="/tmp"))
        (tmp / "ctrd").mkdir()
        ctrd = Ctrd(tmp / "ctrd")
        containerd = Containerd(tmp / "containerd")
        proxies: list[RecordingProxy] = []
        try:
            ctrd.start()
            containerd.start()
            sides = []
            for name, base, upstream, log in (
                ("ctrd", ctrd.base, ctrd.address, ctrd.log),
                ("containerd", containerd.base, containerd.address, containerd.log),
            ):
                tap = str(base / "tap.sock")
                proxies.append(RecordingProxy(tap, upstream))
                sides.append(Side(name, base, proxies[-1], tap, log))
            yield cls(*sides)
        finally:
            for proxy in proxies:
                proxy.stop()
            status = ctrd.stop()
            ctrd.cleanup()
            containerd.stop()
            log = ctrd.log()  # read before its directory goes
            shutil.rmtree(tmp, ignore_errors=True)
        # Whatever went wrong inside ctrd was handled and logged as such, never a traceback.
        assert status == 0, f"ctrd exited with {status}:\n{log[-5000:]}"
        assert "Traceback" not in log, log[-5000:]

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.ctrd_side, self.containerd_side

    def ctr(
        self,
        *args: str,
        ns: str = "default",
        input: bytes | str | None = None,
        timeout: float = 60,
        masks: Sequence[Mask] = (),
    ) -> Pair:
        """The same ctr command line against both daemons (ctrd first), each outcome masked."""
        data = input.encode() if isinstance(input, str) else input
        ctrd, containerd = (side.run(args, ns, data, timeout, masks) for side in self.sides)
        return Pair(tuple(args), ns, ctrd, containerd)

    def setup(self, *args: str, ns: str = "default", input: bytes | str | None = None) -> Pair:
        """Like `ctr`, for a case's state: it must succeed on both; outputs are not compared."""
        pair = self.ctr(*args, ns=ns, input=input)
        for outcome in (pair.ctrd, pair.containerd):
            if outcome.exit_code != 0:
                pytest.fail(
                    f"setup `ctr {' '.join(args)}` (ns {ns}) failed on {outcome.daemon}:\n"
                    f"{outcome.render()}"
                )
        return pair


def difference(pair: Pair, calls: CallOrder = "ordered", ignoring: Sequence[str] = ()) -> str:
    """A unified diff of the two outcomes, or "" when they are the same."""
    ctrd = pair.ctrd.render(calls, ignoring)
    containerd = pair.containerd.render(calls, ignoring)
    if ctrd == containerd:
        return ""
    lines = difflib.unified_diff(
        containerd.splitlines(), ctrd.splitlines(), "containerd", "ctrd", lineterm=""
    )
    return "\n".join(lines)


def assert_same(pair: Pair, calls: CallOrder = "ordered", ignoring: Sequence[str] = ()) -> None:
    """ctr's exit code, masked output and RPC sequence are the same against both daemons."""
    if diff := difference(pair, calls, ignoring):
        pytest.fail(
            f"`ctr -n {pair.ns} {' '.join(pair.args)}` differs (- containerd, + ctrd):\n{diff}",
            pytrace=False,
        )
