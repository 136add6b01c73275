import random

from providers.sse import SSEDecoder, SSEEvent, encode


def decode_all(chunks):
    d = SSEDecoder()
    out = []
    for c in chunks:
        out.extend(d.feed(c))
    out.extend(d.finish())
    return out


def test_basic_and_named_events():
    evs = decode_all([b"event: a\ndata: 1\n\ndata: 2\n\n"])
    assert evs == [SSEEvent("a", "1"), SSEEvent(None, "2")]


def test_line_endings_crlf_cr_and_mixed():
    for sep in (b"\r\n", b"\r", b"\n"):
        raw = b"event: x" + sep + b"data: {}" + sep + sep + b"data: y" + sep + sep
        assert decode_all([raw]) == [SSEEvent("x", "{}"), SSEEvent(None, "y")]
    mixed = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"
    assert [e.data for e in decode_all([mixed])] == ["a", "b", "c"]


def test_crlf_split_between_chunks_is_one_line_end():
    # "\r" ends one chunk, "\n" starts the next: must not create an extra blank line mid-event
    evs = decode_all([b"event: x\r", b"\ndata: 1\r", b"\n\r", b"\n"])
    assert evs == [SSEEvent("x", "1")]


def test_event_is_delivered_as_soon_as_complete():
    d = SSEDecoder()
    assert d.feed(b"data: 1\n") == []
    assert d.feed(b"\n") == [SSEEvent(None, "1")]
    # a trailing CR completes the line immediately
    assert d.feed(b"data: 2\r\r") == [SSEEvent(None, "2")]


def test_comments_keepalive_multiline_and_no_space():
    raw = b": keep-alive\n\ndata:a\ndata: b\n: mid comment\n\nid: 5\nretry: 10\ndata: c\n\n"
    assert [e.data for e in decode_all([raw])] == ["a\nb", "c"]


def test_utf8_split_across_chunks_and_every_boundary():
    raw = "data: {\"t\":\"héllo → 世界 🎉\"}\n\n".encode()
    want = decode_all([raw])
    assert want[0].data == "{\"t\":\"héllo → 世界 🎉\"}"
    for i in range(len(raw)):
        assert decode_all([raw[:i], raw[i:]]) == want
    assert decode_all([raw[i:i + 1] for i in range(len(raw))]) == want


def test_eof_flushes_last_event_without_blank_line():
    assert decode_all([b"event: message_stop\ndata: {}"]) == [SSEEvent("message_stop", "{}")]


def test_random_splits_equal_unsplit():
    raw = (b"event: a\r\ndata: 1\r\n\r\n: ping\n\ndata: \xc3\xa9\n\n" * 20)
    want = decode_all([raw])
    for seed in range(50):
        rng = random.Random(seed)
        chunks, i = [], 0
        while i < len(raw):
            n = rng.randint(1, 9)
            chunks.append(raw[i:i + n])
            i += n
        assert decode_all(chunks) == want


def test_encode():
    assert encode(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode('{"a":1}', "message_stop") == b'event: message_stop\ndata: {"a":1}\n\n'
    assert decode_all([encode("x\ny", "e")]) == [SSEEvent("e", "x\ny")]


def test_long_line_in_small_pieces_is_linear_and_bounded():
    """Hardening #8: an endless line is refused once it passes the bound, and appending its pieces does not copy
    the whole buffer each time (that made 100 MB cost seconds of CPU)."""
    import time

    import pytest

    from providers.sse import SSEDecoder, SSEOverflow

    dec = SSEDecoder(max_bytes=8 * 1024 * 1024)
    piece = b"x" * 1024
    started = time.perf_counter()
    with pytest.raises(SSEOverflow):
        for _ in range(9 * 1024):
            dec.feed(piece)
    assert time.perf_counter() - started < 2.0  # quadratic copying took ~minutes for this size
    # The decoder is usable again (its buffer was dropped) — a translator fails the stream anyway.
    assert dec.feed(b"data: {}\n\n")[0].data == "{}"


def test_many_data_lines_of_one_event_are_bounded():
    import pytest

    from providers.sse import SSEDecoder, SSEOverflow

    dec = SSEDecoder(max_bytes=1000)
    with pytest.raises(SSEOverflow):
        dec.feed(b"data: " + b"y" * 100 + b"\n" * 1 + (b"data: " + b"y" * 100 + b"\n") * 20)


def test_translator_reports_an_oversized_event_as_an_upstream_error():
    from providers import open_stream, parse_request
    from providers.sse import MAX_EVENT_BYTES

    req = parse_request("openai", b'{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"hi"}]}')
    tr = open_stream(req, "anthropic")
    tr.feed(b"data: " + b"z" * (MAX_EVENT_BYTES + 1))
    assert tr.upstream_error is not None and "larger than" in tr.upstream_error.message
    assert tr.feed(b"\n\n") == b""
