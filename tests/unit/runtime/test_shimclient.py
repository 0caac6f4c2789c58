"""The daemon's shim client against a scripted shim on a real unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shim import protocol
from supervisor.errors import NotFound, Unavailable
from supervisor.runtime.shimclient import ShimClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_requests(reader: asyncio.StreamReader, count: int) -> list[protocol.Request]:
    decoder = protocol.Decoder()
    out: list[protocol.Request] = []
    while len(out) < count:
        data = await reader.read(4096)
        assert data, "the client closed early"
        out += map(protocol.parse, decoder.feed(data))  # type: ignore[arg-type]
    return out


def run(tmp_path: Path, shim: Handler, scenario: Callable[[ShimClient], Awaitable[None]]) -> None:
    async def main() -> None:
        path = str(tmp_path / "shim.sock")

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await shim(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_unix_server(serve, path)
        client = await ShimClient.connect(path, "test")
        try:
            await scenario(client)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_overlapping_calls_get_their_own_answers_in_any_order(tmp_path):
    async def shim(reader, writer):
        first, second = await read_requests(reader, 2)
        # Answer the second first, and send an event in between.
        writer.write(protocol.encode(protocol.Response(second.id, {"m": second.method}).to_wire()))
        writer.write(protocol.encode(protocol.Event(1, "/tasks/exit", {"pid": 7}, 5).to_wire()))
        writer.write(protocol.encode(protocol.Response(first.id, {"m": first.method}).to_wire()))
        await writer.drain()
        await reader.read()  # until the client goes

    async def scenario(client):
        a, b = await asyncio.gather(client.call("state"), client.call("pids"))
        assert (a, b) == ({"m": "state"}, {"m": "pids"})
        events = client.events()
        event = await anext(events)
        assert (event.seq, event.topic, event.event) == (1, "/tasks/exit", {"pid": 7})

    run(tmp_path, shim, scenario)


def test_a_shim_error_is_raised_as_the_typed_error(tmp_path):
    async def shim(reader, writer):
        (request,) = await read_requests(reader, 1)
        error = protocol.ErrorResponse(request.id, protocol.NOT_FOUND, 'process "x"')
        writer.write(protocol.encode(error.to_wire()))
        await writer.drain()
        await reader.read()

    async def scenario(client):
        with pytest.raises(NotFound, match='process "x"'):
            await client.call("kill", {"exec_id": "x"})

    run(tmp_path, shim, scenario)


def test_a_shim_that_dies_fails_calls_in_flight_and_ends_the_events(tmp_path):
    async def shim(reader, writer):
        await read_requests(reader, 1)
        writer.write(protocol.encode(protocol.Event(3, "/tasks/oom", {}, 1).to_wire()))
        writer.close()  # gone, with a call unanswered

    async def scenario(client):
        with pytest.raises(Unavailable, match="connection closed"):
            await client.call("wait")
        assert [e.seq async for e in client.events()] == [3]
        with pytest.raises(Unavailable):
            await client.call("state")

    run(tmp_path, shim, scenario)


def test_garbage_from_a_shim_is_a_protocol_error_that_fails_calls(tmp_path):
    async def shim(reader, writer):
        await read_requests(reader, 1)
        writer.write(b"\x00\x00\x00\x05nope!")
        await writer.drain()
        await reader.read()

    async def scenario(client):
        with pytest.raises(Unavailable, match="protocol error"):
            await client.call("state")

    run(tmp_path, shim, scenario)


def test_connecting_to_no_shim_is_unavailable(tmp_path):
    async def main() -> None:
        with pytest.raises(Unavailable, match="cannot connect"):
            await ShimClient.connect(str(tmp_path / "none.sock"), "ghost")

    asyncio.run(main())


def test_a_connection_ending_while_a_request_is_written_leaves_no_stray_future(tmp_path):
    """The call fails with Unavailable, and its future's exception is retrieved: asyncio has
    nothing to report as "never retrieved" (the daemon's log must not show it)."""
    import gc

    reported: list[dict[str, object]] = []

    async def shim(reader, writer):
        await reader.read()

    async def scenario(client: ShimClient) -> None:
        def report(_: object, context: dict[str, object]) -> None:
            if "never retrieved" in str(context.get("message")):
                reported.append(context)

        asyncio.get_running_loop().set_exception_handler(report)

        async def drain_as_the_connection_ends() -> None:
            client._end("connection closed")  # the reader saw the end meanwhile
            raise ConnectionResetError("reset by peer")

        client._writer.drain = drain_as_the_connection_ends  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match="state: reset by peer"):
            await client.call("state")
        gc.collect()
        await asyncio.sleep(0)

    run(tmp_path, shim, scenario)
    assert reported == []
