"""The loopback relay: one-shot tokens, chunked streaming as written, keep-alive, unknown tokens refused."""

import asyncio
from unittest import mock

import aiohttp
import pytest

from addon.relay import Parked, Relay
from addon.upstream import read_some


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    chunks = []
    while True:
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            await reader.readline()
            return head, chunks
        chunks.append(await reader.readexactly(size))
        await reader.readline()


async def test_streams_each_write_as_a_chunk_and_keeps_the_connection():
    relay = Relay()
    port = await relay.start()
    gate = asyncio.Event()

    async def pump(write):
        await write(b"data: one\n\n")
        await gate.wait()
        await write(b"data: two\n\n")

    t1 = relay.park(Parked(200, [("x-test", "1")], pump, lambda: None))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /{t1} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"x-test: 1" in head and b"chunked" in head
    # The first event arrives while the pump is still waiting: nothing is held back.
    size = int((await asyncio.wait_for(reader.readline(), 2)).strip(), 16)
    assert await reader.readexactly(size) == b"data: one\n\n"
    await reader.readline()
    gate.set()
    size = int((await reader.readline()).strip(), 16)
    assert await reader.readexactly(size) == b"data: two\n\n"
    await reader.readline()
    assert await reader.readline() == b"0\r\n"
    await reader.readline()

    # Same connection, next token; a used token is gone.
    async def pump2(write):
        await write(b"x")

    t2 = relay.park(Parked(200, [], pump2, lambda: None))
    writer.write(f"GET /{t2} HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc".encode())
    head, chunks = await _read_response(reader)
    assert chunks == [b"x"]
    writer.write(f"GET /{t1} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 404")
    writer.close()
    await relay.stop()


async def test_unclaimed_tokens_are_abandoned():
    relay = Relay(unclaimed_ttl=0.3)
    await relay.start()
    abandoned = asyncio.Event()

    async def pump(write):  # pragma: no cover - never claimed
        raise AssertionError

    relay.park(Parked(200, [], pump, abandoned.set))
    await asyncio.wait_for(abandoned.wait(), 3)
    await relay.stop()


async def test_read_some_takes_what_arrived_without_a_timer_and_waits_bounded_otherwise():
    """The upstream read of the pump and of whole answers (addon/upstream.py read_some) on aiohttp's reader."""
    content = aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    content.feed_data(b"data: one\n\n")
    content.feed_data(b"data: two\n\n")
    with mock.patch("asyncio.timeout", side_effect=AssertionError("no timer for buffered data")):
        assert await read_some(content, 0) == b"data: one\n\ndata: two\n\n"
    with pytest.raises(TimeoutError):  # nothing buffered: the bound applies
        await read_some(content, 0.01)
    asyncio.get_running_loop().call_later(0.01, content.feed_data, b"data: three\n\n")
    assert await read_some(content, 2) == b"data: three\n\n"
    content.feed_eof()
    assert await read_some(content, 2) == b""
    content.set_exception(aiohttp.ClientPayloadError("cut"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_some(content, 2)


async def test_the_hop_closing_mid_stream_stops_the_pump():
    """mitmproxy drops the relay connection (its caller went away): the pump is cancelled at once, not at its
    next write, so the provider stream it reads is closed."""
    relay = Relay()
    port = await relay.start()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def pump(write):
        await write(b"data: one\n\n")
        started.set()
        try:
            await asyncio.Event().wait()  # a provider that sends nothing more
        finally:
            stopped.set()

    token = relay.park(Parked(200, [], pump, lambda: None))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /{token} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await asyncio.wait_for(started.wait(), 2)
    writer.close()
    await asyncio.wait_for(stopped.wait(), 2)
    await relay.stop()


@pytest.mark.parametrize("request_head", [
    b"GET /t HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
    b"GET /t HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
    b"GET /" + b"t" * 70000 + b" HTTP/1.1\r\n",  # no end of head within the limit
])
async def test_a_malformed_request_is_refused_with_400(request_head):
    relay = Relay()
    port = await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 400") and await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await relay.stop()


async def test_keep_alive_after_an_answer_that_completes_inside_create_task():
    """mitmproxy's loop runs new tasks eagerly: an answer already whole (the pump never suspends) ends inside
    create_task. The next request on the same connection must still be answered (it once hung there)."""
    loop = asyncio.get_running_loop()
    old_factory = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)
    relay = Relay()
    try:
        port = await relay.start()

        async def whole(write):
            await write(b"data: all at once\n\n")  # never suspends: the transport takes it at once

        tokens = [relay.park(Parked(200, [("content-type", "text/event-stream")], whole, lambda: None))
                  for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for token in tokens:  # one connection, one request after the other (keep-alive)
            writer.write(f"GET /{token} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 200")
            body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 2)
            assert b"data: all at once" in body
        writer.close()
    finally:
        await relay.stop()
        loop.set_task_factory(old_factory)
