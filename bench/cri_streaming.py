"""CRI streaming: ctrd's against containerd's (Debian's 1.6.20 by `anchor-containerd.sh`).

Both runtimes get the same pod (busybox, PID namespace per container) with one container
serving `/www` with busybox's httpd on port 80 (`index.html`, and `big`: `--megabytes` MB of
zeros written at its start), set up as `bench/cri.py` sets them up (critest's images from the
loopback registry, a CNI bridge of each runtime's own). Then, the runtimes taking turns run by
run (who goes first flips every run):

1. `crictl exec CONTAINER true`, timed end to end (`--exec-runs`, default 20, after a warm-up
   each): the Exec RPC, the SPDY upgrade, the exec through the shim, the status. Issue 18's
   target: ctrd's median at most 0.8x containerd's. `--parts execsync`: the same with
   `crictl exec -s` (the ExecSync RPC, as kubelet's exec probes run).
2. port-forward throughput: one `crictl port-forward POD LOCAL:80` per runtime, kept for the
   whole part; `curl` fetches `big` through it (`--transfer-runs`, default 5, after a warm-up
   each), MB/s from curl's own time. Target: ctrd's median at least containerd's.
3. resets (`--parts ...,resets`): whether a port-forward session survives a connection reset
   by the pod (a request followed by bytes httpd never reads) and, separately, a client that
   resets its connection in the middle of `big`: each then tries 10 fetches of `index.html`
   (5 s each) through the same session. A report, not a figure.

Everything is removed at the end, also on Ctrl-C (pods, the port-forwards, containerd by its
script, ctrd by pid, the bridges). Run as root with ctrd's interpreter:

    /opt/ctrd/bin/python bench/cri_streaming.py [--exec-runs 20] [--transfer-runs 5]
        [--megabytes 100] [--parts exec,transfer,resets] [--runtimes ctrd,containerd]
        [--registry 127.0.0.1:5066]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import Samples, run, scratch_dir
from cri import (
    BUSYBOX,
    CRICTL,
    Runtime,
    containerd_runtime,
    ctrd_runtime,
    images_registry,
    parse_list,
)

RUNTIMES = ("ctrd", "containerd")
PARTS = ("exec", "execsync", "transfer", "resets")


@dataclass
class Pod:
    runtime: Runtime
    pod: str
    container: str


def start_web_pod(scratch: Path, rt: Runtime, megabytes: int) -> Pod:
    pod_json = scratch / f"{rt.name}-stream-pod.json"
    container_json = scratch / f"{rt.name}-stream-web.json"
    pod_json.write_text(
        json.dumps(
            {
                "metadata": {
                    "name": "stream", "namespace": "bench", "uid": uuid.uuid4().hex,
                    "attempt": 0,
                },
                "log_directory": str(scratch / "logs" / rt.name),
                "linux": {"security_context": {"namespace_options": {"pid": 1}}},
            }
        )
    )  # fmt: skip
    script = (
        "mkdir -p /www && echo hello > /www/index.html"
        f" && dd if=/dev/zero of=/www/big bs=1M count={megabytes} 2>/dev/null"
        " && touch /www/ready && exec httpd -f -p 80 -h /www"
    )
    container_json.write_text(
        json.dumps(
            {
                "metadata": {"name": "web"},
                "image": {"image": BUSYBOX},
                "command": ["sh", "-c", script],
                "log_path": "web.log",
                "linux": {},
            }
        )
    )
    _, pod = rt.crictl("runp", str(pod_json))
    _, cid = rt.crictl("create", pod, str(container_json), str(pod_json))
    rt.crictl("start", cid)
    for _ in range(300):
        done = run(_crictl(rt, "exec", cid, "test", "-e", "/www/ready"), capture_output=True)
        if done.returncode == 0:
            return Pod(rt, pod, cid)
        time.sleep(0.1)
    raise RuntimeError(f"{rt.name}: the web container did not get ready")


def _crictl(rt: Runtime, *args: str) -> list[str]:
    return [CRICTL, "--config", "/dev/null", "--runtime-endpoint", rt.endpoint, *args]


# --- 1. exec latency -------------------------------------------------------------------------


def exec_once(pod: Pod, sync: bool = False) -> float:
    start = time.perf_counter()
    flags = ["-s"] if sync else []
    done = run(_crictl(pod.runtime, "exec", *flags, pod.container, "true"), capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{pod.runtime.name}: crictl exec: {done.stderr!r}")
    return seconds


def measure_exec(pods: Sequence[Pod], runs: int, sync: bool = False) -> None:
    for pod in pods:
        exec_once(pod, sync)
    samples = Samples()
    for n in range(runs):
        for pod in pods if n % 2 == 0 else list(reversed(pods)):
            samples.add(pod.runtime.name, exec_once(pod, sync))
    what = "exec -s" if sync else "exec"
    print(f"\n== crictl {what} CONTAINER true, {runs} runs each")
    samples.report_spread(f"{what}:", lambda s: f"{s * 1000:.1f} ms")


# --- 2. port-forward throughput --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_forward(pod: Pod) -> Iterator[int]:
    """`crictl port-forward POD LOCAL:80` running; the local port."""
    local = free_port()
    proc = subprocess.Popen(
        _crictl(pod.runtime, "port-forward", pod.pod, f"{local}:80"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"Forwarding from" not in line:
            raise RuntimeError(f"{pod.runtime.name}: crictl port-forward said {line!r}")
        yield local
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def transfer(port: int, path: str = "/big") -> tuple[float, int]:
    """(seconds, bytes) of one curl download through the forwarded port."""
    done = run(
        ["curl", "-s", "-o", "/dev/null", "-m", "120", "-w", "%{time_total} %{size_download}",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"curl exited {done.returncode}")
    seconds, size = done.stdout.split()
    return float(seconds), int(float(size))


def measure_transfer(pods: Sequence[Pod], runs: int, megabytes: int) -> None:
    samples = Samples()
    with contextlib.ExitStack() as stack:
        ports = {pod.runtime.name: stack.enter_context(port_forward(pod)) for pod in pods}
        for pod in pods:
            transfer(ports[pod.runtime.name])  # warm-up: the file in the page cache
        for n in range(runs):
            for pod in pods if n % 2 == 0 else list(reversed(pods)):
                seconds, size = transfer(ports[pod.runtime.name])
                if size != megabytes << 20:
                    raise RuntimeError(f"{pod.runtime.name}: {size} bytes came")
                samples.add(pod.runtime.name, size / seconds / 1e6)
    print(f"\n== port-forward: curl of {megabytes} MB through crictl port-forward, {runs} runs")
    samples.report_spread("throughput (MB/s, higher is better):", lambda v: f"{v:.0f}")


# --- 3. resets -------------------------------------------------------------------------------


def reset_by_pod(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(256):  # more than the buffers hold: httpd closes with it unread
                s.sendall(b"x" * (1 << 20))
            while s.recv(65536):
                pass


def reset_by_client(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    s.recv(65536)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def fetches_after(port: int, n: int = 10) -> int:
    ok = 0
    for _ in range(n):
        done = run(
            ["curl", "-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}",
             f"http://127.0.0.1:{port}/index.html"],
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip
        ok += done.stdout.strip() == "200"
    return ok


def measure_resets(pods: Sequence[Pod]) -> None:
    print("\n== port-forward sessions after one reset: fetches that worked, of 10")
    for pod in pods:
        for name, reset in (("by the pod", reset_by_pod), ("by the client", reset_by_client)):
            with port_forward(pod) as port:
                reset(port)
                time.sleep(0.3)
                print(f"  {pod.runtime.name:<12} reset {name:<14} {fetches_after(port)}/10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exec-runs", type=int, default=20)
    parser.add_argument("--transfer-runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--parts", type=parse_list(PARTS), default=("exec", "transfer"))
    parser.add_argument("--runtimes", type=parse_list(RUNTIMES), default=RUNTIMES)
    parser.add_argument("--registry", default="127.0.0.1:5066")
    args = parser.parse_args()
    began = time.monotonic()
    with (
        scratch_dir("ctrd-bench-cri-streaming-") as scratch,
        images_registry(args.registry, scratch) as registry,
        contextlib.ExitStack() as stack,
    ):
        makers = {"ctrd": ctrd_runtime, "containerd": containerd_runtime}
        runtimes = [stack.enter_context(makers[n](scratch, registry)) for n in args.runtimes]
        for rt in runtimes:
            rt.crictl("pull", BUSYBOX)
        pods = [start_web_pod(scratch, rt, args.megabytes) for rt in runtimes]
        print(f"runtimes: {', '.join(f'{rt.name} {rt.endpoint}' for rt in runtimes)}")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        if "exec" in args.parts and args.exec_runs:
            measure_exec(pods, args.exec_runs)
        if "execsync" in args.parts and args.exec_runs:
            measure_exec(pods, args.exec_runs, sync=True)
        if "transfer" in args.parts and args.transfer_runs:
            measure_transfer(pods, args.transfer_runs, args.megabytes)
        if "resets" in args.parts:
            measure_resets(pods)
    print(f"\nwall time {time.monotonic() - began:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
