"""store/usage.py (the proxy's usage book and its file) and store/usage_report.py (reading it back)."""

import json
import logging
import math
import os
import threading
import time
from datetime import date, datetime, timezone

import pytest
from pydantic import ValidationError

from addon.record import RequestRecord, TokenUsage
from store import usage as usage_module
from store.models import Target
from store.upstream import Pricing
from store.usage import OTHER_MODEL, Tally, UsageBook, cost, decode_usage, parse_day, usage_path_for, utc_day
from store.usage_report import UsageData, UsageReader, gateway_usage, key_usage, load_usage

DAY1 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
DAY2 = datetime(2026, 3, 2, 12, tzinfo=timezone.utc).timestamp()
PRICING = Pricing(input_per_million=2.0, output_per_million=8.0, cached_input_per_million=0.5)


class Clock:
    def __init__(self, now: float = DAY2) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(gateway="g1", key="k1", target="t1", model="gpt-4", *, started=DAY1, status=200, tokens=(100, 10, 0),
           price=PRICING, stream_error=None, requested=None):
    usage = TokenUsage(*tokens, reported=any(tokens))
    return RequestRecord(request_id="r", started=started, gateway_id=gateway, key_id=key, target_id=target,
                         served_model=model, requested_model=requested, status=status, usage=usage,
                         cost=cost(usage, price), stream_error=stream_error)


@pytest.fixture
def path(tmp_path):
    return usage_path_for(tmp_path / "aigw.json")


@pytest.fixture
def book(path):
    return UsageBook(path, clock=Clock())


# -- pricing and cost ---------------------------------------------------------------------------------------------


def test_cost_needs_pricing():
    assert cost(TokenUsage(1000, 1000, 0, True), None) is None


def test_cost_bills_cached_tokens_at_the_cached_price():
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=500_000, cached_tokens=400_000, reported=True)
    assert cost(usage, PRICING) == pytest.approx(600_000 * 2 / 1e6 + 400_000 * 0.5 / 1e6 + 500_000 * 8 / 1e6)


def test_cached_price_defaults_to_the_input_price():
    pricing = Pricing(input_per_million=3, output_per_million=15)
    assert pricing.cached_input_per_million is None and pricing.cached_rate == 3.0
    assert cost(TokenUsage(1_000_000, 0, 1_000_000, True), pricing) == pytest.approx(3.0)


def test_cost_tolerates_odd_provider_counts():
    # More cached than input tokens, or negative counts: never a negative or inflated cost.
    assert cost(TokenUsage(10, -5, 50, True), PRICING) == pytest.approx(10 * 0.5 / 1e6)
    assert cost(TokenUsage(), PRICING) == 0.0


@pytest.mark.parametrize("value", [-1, "1", True, math.nan, math.inf, 1e7, None])
def test_pricing_refuses_bad_prices_naming_the_field(value):
    with pytest.raises(ValidationError) as info:
        Pricing.model_validate({"input_per_million": value, "output_per_million": 1})
    assert [e["loc"] for e in info.value.errors()] == [("input_per_million",)]


def test_pricing_is_usd_and_optional_on_targets():
    with pytest.raises(ValidationError):
        Pricing.model_validate({"input_per_million": 1, "output_per_million": 1, "currency": "EUR"})
    assert Target.model_validate({"provider": "openai"}).pricing is None
    target = Target.model_validate({"provider": "openai", "pricing": {"input_per_million": 1, "output_per_million": 2}})
    assert target.pricing == Pricing(input_per_million=1.0, output_per_million=2.0)


# -- the book -----------------------------------------------------------------------------------------------------


def test_rows_sum_per_day_gateway_key_target_and_model(book):
    book.add(record(tokens=(100, 10, 40)))
    book.add(record(tokens=(50, 5, 0), status=502))
    book.add(record(model="gpt-4o", tokens=(1, 1, 0), price=None))
    book.add(record(model=None, requested="asked-for", tokens=(0, 0, 0), stream_error="idle timeout"))
    rows = book.totals()["2026-03-01"]
    first = rows[("g1", "k1", "t1", "gpt-4")]
    assert (first.requests, first.errors, first.input_tokens, first.output_tokens, first.cached_tokens) == \
        (2, 1, 150, 15, 40)
    assert first.cost == pytest.approx((60 * 2 + 40 * 0.5 + 10 * 8 + 50 * 2 + 5 * 8) / 1e6)
    assert rows[("g1", "k1", "t1", "gpt-4o")].unpriced_requests == 1  # tokens reported, no pricing
    asked = rows[("g1", "k1", "t1", "asked-for")]  # served model unknown: the requested one
    assert (asked.errors, asked.unpriced_requests, asked.cost) == (1, 0, 0.0)


def test_requests_without_a_gateway_are_not_counted(book):
    book.add(record(gateway=None))
    assert book.totals() == {} and book.flush() is False


def test_day_rollover_is_utc(book):
    midnight = datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()
    book.add(record(started=midnight - 0.5))
    book.add(record(started=midnight + 0.5))
    assert sorted(book.totals()) == ["2026-03-01", "2026-03-02"]
    assert utc_day(midnight) == "2026-03-02"


def test_old_days_are_dropped_as_the_clock_moves(path):
    clock = Clock(DAY2)
    book = UsageBook(path, clock=clock, retain_days=2)
    book.add(record(started=DAY1))
    book.add(record(started=DAY2))
    assert book.flush() is True
    clock.now = DAY2 + 86400  # 2026-03-03: keep 03-02 and 03-03
    assert book.flush() is True  # nothing added, but a day went: the file shrinks
    assert sorted(load_usage(path).days) == ["2026-03-02"]
    assert book.flush() is False


def test_model_names_are_bounded(path):
    book = UsageBook(path, clock=Clock(), max_rows_per_day=2)
    for model in ("a", "b", "c", "d", "a"):
        book.add(record(model=model))
    book.add(record(model="x" * 1000, key="k2"))
    rows = book.totals()["2026-03-01"]
    assert {key[3] for key in rows} == {"a", "b", OTHER_MODEL}
    assert rows[("g1", "k1", "t1", OTHER_MODEL)].requests == 2 and rows[("g1", "k1", "t1", "a")].requests == 2
    assert ("g1", "k2", "t1", OTHER_MODEL) in rows  # the cap folds models only; keys and targets are config


def test_flush_writes_only_when_something_changed(book, path):
    assert book.flush() is False and not os.path.exists(path)
    book.add(record())
    assert book.flush() is True
    inode = os.stat(path).st_ino
    assert book.flush() is False and os.stat(path).st_ino == inode
    book.add(record())
    assert book.flush() is True and os.stat(path).st_ino != inode


def test_durable_writes(book, monkeypatch):
    writes = []
    real = usage_module.atomic_write_bytes
    monkeypatch.setattr(usage_module, "atomic_write_bytes",
                        lambda path, data, durable: writes.append(durable) or real(path, data, durable=durable))
    book.add(record())
    book.flush()
    assert book.flush(durable=True) is True  # nothing new, but the last write was not fsynced
    assert book.flush(durable=True) is False
    assert writes == [False, True]


def test_counts_survive_a_restart(path):
    first = UsageBook(path, clock=Clock())
    first.add(record(tokens=(100, 10, 0)))
    first.add(record(started=DAY2, key="k2"))
    first.flush()
    second = UsageBook(path, clock=Clock())
    assert second.totals() == first.totals()
    assert second.flush() is False  # loading is not a change
    second.add(record(tokens=(1, 1, 0)))
    second.flush()
    row = UsageBook(path, clock=Clock()).totals()["2026-03-01"][("g1", "k1", "t1", "gpt-4")]
    assert (row.requests, row.input_tokens, row.output_tokens) == (2, 101, 11)


def test_stop_flushes_and_the_thread_flushes_on_its_own(path):
    book = UsageBook(path, interval=0.01, clock=Clock())
    book.start()
    book.start()  # idempotent
    book.add(record())
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert os.path.exists(path)
    book.add(record())
    book.stop()
    book.stop()
    assert load_usage(path).days["2026-03-01"][("g1", "k1", "t1", "gpt-4")].requests == 2


@pytest.mark.parametrize("content", [
    b"{half", b"[]", b"\xff\xfe", b"[" * 100_000,
    json.dumps({"version": 2, "written_at": 1, "columns": [], "days": {}}).encode(),
])
def test_a_corrupt_file_starts_empty_and_is_kept(path, caplog, content):
    with open(path, "wb") as handle:
        handle.write(content)
    with caplog.at_level(logging.WARNING, logger="aigw.usage"):
        book = UsageBook(path, clock=Clock())
    assert book.totals() == {}
    assert len(caplog.records) == 1 and "unreadable" in caplog.text
    with open(path + ".corrupt", "rb") as handle:
        assert handle.read() == content
    book.add(record())
    assert book.flush() is True and load_usage(path).days


def good_document():
    return {"version": 1, "written_at": DAY2, "columns": list(usage_module.COLUMNS),
            "days": {"2026-03-01": [["g1", "k1", "t1", "m", 1, 0, 10, 5, 0, 0.25, 0]]}}


@pytest.mark.parametrize("breakage", [
    lambda d: d["days"].update({"2026-3-1": []}),
    lambda d: d["days"]["2026-03-01"][0].__setitem__(4, -1),
    lambda d: d["days"]["2026-03-01"][0].__setitem__(4, True),
    lambda d: d["days"]["2026-03-01"][0].__setitem__(9, "0.25"),
    lambda d: d["days"]["2026-03-01"][0].__setitem__(0, None),
    lambda d: d["days"]["2026-03-01"][0].pop(),
    lambda d: d.update(written_at="now"),
])
def test_decode_refuses_anything_but_a_usage_document(breakage):
    doc = good_document()
    assert decode_usage(json.dumps(doc).encode())[1]["2026-03-01"][("g1", "k1", "t1", "m")].cost == 0.25
    breakage(doc)
    with pytest.raises(ValueError):
        decode_usage(json.dumps(doc).encode())


def test_missing_file_starts_empty_and_orphans_are_removed(tmp_path, path):
    orphan = tmp_path / ".aigw.json.usage.json.tmp-abc"
    orphan.write_text("half")
    store_orphan = tmp_path / ".aigw.json.tmp-abc"  # the store's own temp files are the store's business
    store_orphan.write_text("half")
    assert UsageBook(path).totals() == {}
    assert not orphan.exists() and store_orphan.exists()


def test_a_failed_write_is_retried(tmp_path, caplog):
    path = usage_path_for(tmp_path / "later" / "aigw.json")
    book = UsageBook(path, clock=Clock())
    book.add(record())
    with pytest.raises(OSError):
        book.flush()
    with caplog.at_level(logging.WARNING, logger="aigw.usage"):
        book.stop()  # never raises; logs once
        book.stop()
    assert len(caplog.records) == 1
    os.makedirs(tmp_path / "later")
    assert book.flush() is True
    assert load_usage(path).days["2026-03-01"][("g1", "k1", "t1", "gpt-4")].requests == 1


def test_concurrent_adds_and_flushes_lose_nothing(book, path):
    threads, per_thread = 8, 2000
    done = threading.Event()

    def flusher():
        while not done.is_set():
            book.flush()

    def adder(n):
        for i in range(per_thread):
            book.add(record(key=f"k{n % 3}", model=f"m{i % 5}", tokens=(3, 2, 1)))

    flushing = threading.Thread(target=flusher)
    flushing.start()
    adders = [threading.Thread(target=adder, args=(n,)) for n in range(threads)]
    for thread in adders:
        thread.start()
    for thread in adders:
        thread.join()
    done.set()
    flushing.join()
    book.flush()
    rows = load_usage(path).days["2026-03-01"]
    assert rows == book.totals()["2026-03-01"]
    assert sum(t.requests for t in rows.values()) == threads * per_thread
    assert sum(t.input_tokens for t in rows.values()) == 3 * threads * per_thread


def test_parse_day_is_strict():
    assert parse_day("2026-02-28") == date(2026, 2, 28)
    for text in ("2026-02-30", "20260228", "2026-W09-6", "2026-2-8", " 2026-02-28", "2026-02-28T00:00"):
        with pytest.raises(ValueError):
            parse_day(text)


# -- reading it back ----------------------------------------------------------------------------------------------


def test_load_usage_without_a_file(tmp_path):
    assert load_usage(None) == UsageData() and load_usage(tmp_path / "none.json") == UsageData()
    (tmp_path / "bad.json").write_text("{")
    assert load_usage(tmp_path / "bad.json") == UsageData()


def test_reader_parses_again_only_when_the_file_changed(book, path):
    reader = UsageReader(path)
    assert reader.read().written_at is None
    book.add(record())
    book.flush()
    first = reader.read()
    assert first.written_at == DAY2 and reader.read() is first
    book.add(record())
    book.flush()
    assert reader.read().days["2026-03-01"][("g1", "k1", "t1", "gpt-4")].requests == 2


@pytest.fixture
def data(book, path):
    book.add(record(key="k1", target="t1", model="gpt-4", tokens=(100, 10, 0)))
    book.add(record(key="k1", target="t2", model="claude", tokens=(10, 1, 0), started=DAY2))
    book.add(record(key="k2", target="t1", model="gpt-4", tokens=(1, 1, 0)))
    book.add(record(key="k2", target="t1", model="gpt-4", tokens=(1, 1, 0)))
    book.add(record(key=None, target=None, model=None, status=401, tokens=(0, 0, 0)))
    book.add(record(gateway="g2", tokens=(999, 999, 0)))
    book.flush()
    return load_usage(path)


def test_gateway_usage_grouped(data):
    march = date(2026, 3, 1), date(2026, 3, 2)
    by_key = gateway_usage(data, "g1", "key", *march)
    assert [(g.group, g.requests) for g in by_key.groups] == [("k1", 2), ("k2", 2), (None, 1)]
    assert by_key.totals.requests == 5 and by_key.totals.errors == 1 and by_key.totals.input_tokens == 112
    assert [g.group for g in gateway_usage(data, "g1", "target", *march).groups] == ["t1", "t2", None]
    models = {g.group: g.input_tokens for g in gateway_usage(data, "g1", "model", *march).groups}
    assert models == {"gpt-4": 102, "claude": 10, None: 0}
    days = gateway_usage(data, "g1", "day", *march)
    assert [(g.group, g.requests) for g in days.groups] == [("2026-03-01", 4), ("2026-03-02", 1)]
    assert days.as_of == "2026-03-02T12:00:00.000Z" and days.from_ == "2026-03-01" and days.to == "2026-03-02"


def test_ranges_are_inclusive_days(data):
    only_day2 = gateway_usage(data, "g1", "key", date(2026, 3, 2), date(2026, 3, 2))
    assert [(g.group, g.requests) for g in only_day2.groups] == [("k1", 1)]
    assert gateway_usage(data, "g1", "key", date(2026, 4, 1), date(2026, 4, 30)).totals.requests == 0
    assert gateway_usage(data, "nobody", "key", date(2026, 3, 1), date(2026, 3, 2)).groups == []


def test_key_usage_per_day(data):
    report = key_usage(data, "g1", "k1", date(2026, 2, 1), date(2026, 3, 31))
    assert report.key_id == "k1" and report.group_by == "day"
    assert [(g.group, g.input_tokens) for g in report.groups] == [("2026-03-01", 100), ("2026-03-02", 10)]
    assert report.totals.cost == round((100 * 2 + 10 * 8 + 10 * 2 + 1 * 8) / 1e6, 6)
    assert report.model_dump(mode="json", by_alias=True)["from"] == "2026-02-01"


def test_odd_records_never_make_the_file_unloadable(book, path):
    assert Tally.of(record(price=None)).cost == 0.0
    rec = record(started=math.nan, tokens=(1, 1, 0))
    rec.cost = math.inf
    rec.usage.input_tokens = 2.5  # a provider-layer bug: counted as 0, not written as a float
    book.add(rec)
    assert book.flush() is True
    [row] = UsageBook(path, clock=Clock()).totals()["2026-03-02"].values()  # counted on the clock's day
    assert (row.requests, row.input_tokens, row.output_tokens, row.cost) == (1, 0, 1, 0.0)
