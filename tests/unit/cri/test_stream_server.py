"""The streaming server's URLs (single-use, expiring tokens; only what it handed out), its
HTTP answers, the SPDY upgrade's negotiation and the remote-command statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor import errors
from supervisor.cri.streaming import remotecommand, spdy
from supervisor.cri.streaming.server import Exchange, StreamServer, tls_context
from supervisor.cri.streaming.tokens import Full, Tokens


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_serves_once():
    tokens = Tokens()
    token = tokens.issue("exec", "payload")
    assert len(token) == 8
    assert tokens.take("exec", token) == "payload"
    assert tokens.take("exec", token) is None


def test_a_token_of_another_kind_is_unknown_and_kept():
    tokens = Tokens()
    token = tokens.issue("exec", "payload")
    assert tokens.take("attach", token) is None
    assert tokens.take("exec", token) == "payload"


def test_a_token_expires_after_its_ttl():
    clock = Clock()
    tokens = Tokens(ttl=60, clock=clock)
    token = tokens.issue("exec", "p")
    clock.now += 60.5
    assert tokens.take("exec", token) is None
    assert len(tokens) == 0


def test_at_most_limit_tokens_wait():
    tokens = Tokens(limit=2)
    tokens.issue("exec", 1)
    tokens.issue("exec", 2)
    with pytest.raises(Full):
        tokens.issue("exec", 3)


def test_tokens_are_not_guessable():
    tokens = Tokens(limit=10_000)
    assert len({tokens.issue("exec", i) for i in range(5000)}) == 5000


async def _request(port: int, head: str) -> tuple[bytes, bytes]:
    """The answer's head and what follows it, up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head_end = answer.index(b"\r\n\r\n") + 4
    return answer[:head_end], answer[head_end:]


def _upgrade(path: str, *protocols: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    return "\r\n".join(lines) + "\r\n\r\n"


def _serve(check: Any) -> None:
    async def run() -> None:
        served: list[Any] = []

        async def handle(exchange: Exchange) -> None:
            served.append(exchange.payload)
            upgraded = await spdy.upgrade(exchange, ("v4.channel.k8s.io", "channel.k8s.io"))
            if upgraded is not None:
                await upgraded[0].close()

        server = StreamServer()
        server.route("exec", "spdy", handle)
        try:
            await check(server, served)
        finally:
            await server.stop()
        assert server.connections == 0

    asyncio.run(run())


def test_a_url_works_once_then_404():
    async def check(server: StreamServer, served: list[Any]) -> None:
        url = await server.url("exec", "the request")
        port, path = int(url.split(":")[2].split("/")[0]), url.split(str(server.base_url))[1]
        answer, _ = await _request(port, _upgrade(path, "v4.channel.k8s.io"))
        assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in answer
        assert served == ["the request"]
        answer, _ = await _request(port, _upgrade(path, "v4.channel.k8s.io"))
        assert answer.startswith(b"HTTP/1.1 404 ")

    _serve(check)


def test_urls_it_never_handed_out_are_404():
    async def check(server: StreamServer, served: list[Any]) -> None:
        url = await server.url("exec", "x")
        port = int(url.split(":")[2].split("/")[0])
        for path in ("/exec/AAAAAAAA", "/attach/" + url.rsplit("/", 1)[1], "/", "/exec/a/b"):
            answer, _ = await _request(port, _upgrade(path, "v4.channel.k8s.io"))
            assert answer.startswith(b"HTTP/1.1 404 "), path
        assert served == []

    _serve(check)


def test_negotiation_takes_the_clients_first_known_protocol_or_says_why_not():
    async def check(server: StreamServer, served: list[Any]) -> None:
        url = await server.url("exec", "x")
        port, path = int(url.split(":")[2].split("/")[0]), url.split(str(server.base_url))[1]
        answer, _ = await _request(port, _upgrade(path, "v9.x", "channel.k8s.io"))
        assert b"X-Stream-Protocol-Version: channel.k8s.io" in answer
        path = (await server.url("exec", "x")).split(str(server.base_url))[1]
        answer, body = await _request(port, _upgrade(path))
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"X-Stream-Protocol-Version is required" in body
        path = (await server.url("exec", "x")).split(str(server.base_url))[1]
        answer, _ = await _request(port, _upgrade(path, "v9.x"))
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert b"X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in answer

    _serve(check)


def test_a_request_without_upgrade_is_400_and_keeps_its_token():
    async def check(server: StreamServer, served: list[Any]) -> None:
        url = await server.url("exec", "x")
        port, path = int(url.split(":")[2].split("/")[0]), url.split(str(server.base_url))[1]
        answer, body = await _request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"unable to upgrade" in body
        answer, _ = await _request(port, _upgrade(path, "channel.k8s.io"))
        assert answer.startswith(b"HTTP/1.1 101 ")

    _serve(check)


def test_status_v4_success_and_exit_code_as_kubelets_client_reads_them():
    assert json.loads(remotecommand.status_message(4, None)) == {
        "metadata": {},
        "status": "Success",
    }
    failure = remotecommand.ExitCode(3, ["sh", "-c", "exit 3"])
    status = json.loads(remotecommand.status_message(4, failure))
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert status["message"] == (
        "command terminated with non-zero exit code: "
        "error executing command [sh -c exit 3], exit code 3"
    )


def test_status_before_v4_is_plain_text_and_nothing_on_success():
    assert remotecommand.status_message(3, None) == b""
    assert remotecommand.status_message(2, errors.NotFound("gone", plain=True)) == b"gone"
    internal = json.loads(remotecommand.status_message(5, errors.Unknown("boom", plain=True)))
    assert internal["reason"] == "InternalError"
    assert internal["code"] == 500


def test_resize_objects_split_anywhere_and_zero_sizes_dropped():
    parser = remotecommand.ResizeParser()
    assert parser.feed(b'{"Width":80,"Hei') == []
    assert parser.feed(b'ght":24}{"Width":0,"Height":5}\n{"Width":100,"Height":30}') == [
        (80, 24),
        (100, 30),
    ]


def test_expected_streams_follow_the_request_and_version():
    assert remotecommand.expected(4, True, True, False, True) == {
        "error",
        "stdin",
        "stdout",
        "resize",
    }
    assert remotecommand.expected(2, False, True, True, True) == {"error", "stdout"}
    assert remotecommand.expected(4, False, True, True, False) == {"error", "stdout", "stderr"}


def test_with_a_certificate_the_urls_are_https_and_served_over_tls(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    async def run() -> None:
        server = StreamServer(tls=tls_context(str(cert), str(key)))

        async def handle(exchange: Exchange) -> None:
            await spdy.upgrade(exchange, ("v4.channel.k8s.io",))

        server.route("exec", "spdy", handle)
        try:
            url = await server.url("exec", "x")
            assert url.startswith("https://127.0.0.1:")
            port, path = int(url.split(":")[2].split("/")[0]), url.split(server.base_url)[1]
            client = ssl.create_default_context(cafile=str(cert))
            client.check_hostname = False
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(_upgrade(path, "v4.channel.k8s.io").encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        finally:
            await server.stop()

    asyncio.run(run())


class Recorder:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    async def read(self) -> bytes:
        return b""

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        self.closed = True


def test_an_error_from_a_task_group_is_reported_in_its_own_words_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
):
    async def work() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.sleep(10))
            raise errors.Unknown("OCI runtime exec failed: no such file", plain=True)

    async def run() -> Recorder:
        error, out = Recorder(), Recorder()
        await remotecommand.serve(remotecommand.Channels(4, error, stdout=out), work())
        assert out.closed
        assert error.closed
        return error

    status = json.loads(asyncio.run(run()).data)
    assert status["details"]["causes"] == [{"message": "OCI runtime exec failed: no such file"}]
    logged = capsys.readouterr()
    assert "cri_stream_work_failed" not in logged.out + logged.err
