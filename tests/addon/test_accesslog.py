"""addon/accesslog.py: one JSON object per line, no secrets or bodies, never blocking the caller."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import threading

from addon.accesslog import FIELDS, AccessLog, record_line
from addon.record import AttemptRecord, RequestRecord, TokenUsage

GATEWAY_KEY = "sk-aigw-abSECRETSECRETSECRET0123456789"
PROVIDER_KEY = "sk-proj-PROVIDERCREDENTIAL0123456789"
PROMPT = "please summarise the attached confidential merger memo"
COMPLETION = "The merger memo says the quiet part out loud"


def rec(request_id: str = "req-1", **fields) -> RequestRecord:
    base = dict(started=1_735_689_600.25, method="POST", path="/v1/chat/completions", ingress="openai",
                gateway_id="g1", gateway="main", rule_id="r1", service_id="s1", upstream_id="u1", upstream="chat",
                key_id="key_1", key_prefix="sk-aigw-ab", requested_model="gpt-4o", served_model="gpt-4o-2024",
                provider="openai", target_id="t1", status=200, duration_s=0.75, upstream_s=0.5,
                attempts=[AttemptRecord("t0", "anthropic", "5xx", 503, 0.125), AttemptRecord("t1", "openai", "ok",
                                                                                           200, 0.375)],
                usage=TokenUsage(100, 20, 10, True), cost=0.0015)
    base.update(fields)
    return RequestRecord(request_id=request_id, **base)


def lines_of(text: str) -> list[dict]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_line_fields_and_values():
    line = json.loads(record_line(rec()))
    assert tuple(line) == FIELDS
    assert line["time"] == "2025-01-01T00:00:00.250Z"
    assert line["key_id"] == "key_1" and line["key_prefix"] == "sk-aigw-ab"
    assert line["attempts"] == [{"target": "t0", "provider": "anthropic", "outcome": "5xx", "status": 503, "ms": 125.0},
                                {"target": "t1", "provider": "openai", "outcome": "ok", "status": 200, "ms": 375.0}]
    assert (line["attempt_count"], line["failovers"], line["fail_open"]) == (2, 1, False)
    assert (line["duration_ms"], line["upstream_ms"], line["overhead_ms"], line["ttft_ms"]) == (750.0, 500.0, 250.0,
                                                                                               None)
    assert (line["input_tokens"], line["output_tokens"], line["cached_tokens"], line["usage_reported"]) == \
        (100, 20, 10, True)
    assert line["cost"] == 0.0015 and line["stream"] is False and line["error_class"] is None


def test_stream_line():
    line = json.loads(record_line(rec(stream=True, ttft_s=0.25, duration_s=3.0, upstream_s=0.125,
                                      stream_error="idle timeout")))
    assert (line["stream"], line["ttft_ms"], line["overhead_ms"], line["stream_error"]) == \
        (True, 250.0, 125.0, "idle timeout")


def test_caller_strings_are_bounded_and_escaped():
    line = record_line(rec(requested_model="m\n" + "x" * 1000, path="/v1/" + "p" * 1000))
    assert "\n" not in line
    doc = json.loads(line)
    assert len(doc["requested_model"]) == 257 and doc["requested_model"].startswith("m\n")
    assert len(doc["path"]) == 257


def test_file_destination_append_mode_0600(tmp_path):
    path = tmp_path / "access.log"
    path.write_text('{"earlier":1}\n')
    os.chmod(path, 0o644)  # an existing file keeps its mode; a new one is created 0600
    new = tmp_path / "new.log"
    for target in (path, new):
        log = AccessLog(str(target))
        log.write(rec("a"))
        log.write(rec("b", status=502, error_class="api_error", target_id=None, provider=None))
        log.close()
        assert log.written == 2 and log.dropped == 0 and log.errors == 0
    assert [d.get("request_id") for d in lines_of(path.read_text())] == [None, "a", "b"]
    assert [d["request_id"] for d in lines_of(new.read_text())] == ["a", "b"]
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600


def test_no_key_credential_or_body_unless_asked(tmp_path):
    path = tmp_path / "access.log"
    request_body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}).encode()
    response_body = json.dumps({"choices": [{"message": {"content": COMPLETION}}]}).encode()
    bodies = (request_body + f" Authorization: Bearer {PROVIDER_KEY}".encode(), response_body)
    log = AccessLog(str(path))
    log.write(rec("a"), bodies)
    log.write(rec("b", stream=True, ttft_s=0.1), bodies)
    log.close()
    text = path.read_text()
    for leak in (GATEWAY_KEY, PROVIDER_KEY, PROMPT, COMPLETION, "messages", "Authorization"):
        assert leak not in text
    for doc in lines_of(text):
        assert tuple(doc) == FIELDS
        assert doc["key_prefix"] == "sk-aigw-ab" and doc["key_id"] == "key_1"


def test_bodies_only_with_the_debug_option(tmp_path):
    path = tmp_path / "debug.log"
    log = AccessLog(str(path), include_bodies=True)
    log.write(rec("a"), (PROMPT.encode(), b"\xff" + COMPLETION.encode()))
    log.write(rec("b"))  # no bodies passed: none logged
    log.close()
    first, second = lines_of(path.read_text())
    assert first["request_body"] == PROMPT and first["response_body"] == "\ufffd" + COMPLETION
    assert "request_body" not in second


def test_stdout_destination(capsys):
    log = AccessLog("-")
    log.write(rec("a"))
    log.close()
    assert [d["request_id"] for d in lines_of(capsys.readouterr().out)] == ["a"]


class _Gate(io.StringIO):
    """A stream whose first write blocks until released: the writer is stuck, the queue fills."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return super().write(text)


def test_full_queue_drops_and_counts_instead_of_blocking():
    gate = _Gate()
    log = AccessLog(gate, max_queue=2)
    log.write(rec("a"))
    assert gate.entered.wait(10)  # the writer holds "a" and is blocked writing it
    for rid in ("b", "c", "d", "e"):
        log.write(rec(rid))       # returns at once even though the writer is stuck
    assert log.dropped == 2
    gate.release.set()
    log.close()
    assert [d["request_id"] for d in lines_of(gate.getvalue())] == ["a", "b", "c"]
    assert (log.written, log.dropped) == (3, 2)
    log.write(rec("late"))        # after close: dropped, never raised
    assert log.dropped == 3


class _Broken(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def write(self, text: str) -> int:
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_write_errors_are_counted_not_raised():
    stream = _Broken()
    log = AccessLog(stream)
    log.write(rec("a"))
    log.flush()
    assert log.errors == 1 and log.written == 0
    stream.fail = False
    log.write(rec("b"))
    log.close()
    assert [d["request_id"] for d in lines_of(stream.getvalue())] == ["b"]


def test_unserializable_record_is_counted():
    stream = io.StringIO()
    log = AccessLog(stream)
    log.write(rec("a", cost=object()))  # type: ignore[arg-type]  # a bug upstream must not kill the writer
    log.write(rec("b"))
    log.close()
    assert log.errors == 1 and [d["request_id"] for d in lines_of(stream.getvalue())] == ["b"]


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write(rec("a"))
    log.flush()
    os.rename(path, tmp_path / "access.log.1")
    log.reopen()
    log.write(rec("b"))
    log.close()
    assert [d["request_id"] for d in lines_of((tmp_path / "access.log.1").read_text())] == ["a"]
    assert [d["request_id"] for d in lines_of(path.read_text())] == ["b"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_time_format():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(record_line(rec(started=0.9999)))["time"])
    assert json.loads(record_line(rec(started=0.9999)))["time"] == "1970-01-01T00:00:00.999Z"


def test_attempt_wire_captures_never_reach_the_line():
    """An attempt may carry what went over the wire (aigw_attempt_flows): bodies, URLs, headers stay out."""
    from addon.wire import WireCapture

    wire = WireCapture()
    wire.sent("POST", f"https://api.example/v1/chat?key={PROVIDER_KEY}", {"Authorization": f"Bearer {PROVIDER_KEY}"},
              PROMPT.encode())
    wire.answered(200, {"x-request-id": "upstream-123"})
    wire.received(COMPLETION.encode())
    record = rec()
    record.attempts[1].wire = wire
    line = record_line(record)
    for leak in (PROVIDER_KEY, PROMPT, COMPLETION, "api.example", "upstream-123", "Bearer"):
        assert leak not in line
    assert tuple(json.loads(line)["attempts"][1]) == ("target", "provider", "outcome", "status", "ms")
