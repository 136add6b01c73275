"""The usage endpoints read the file a real UsageBook writes; target pricing goes through the admin API."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from addon.record import RequestRecord, TokenUsage
from admin import create_app
from store.upstream import Pricing
from store.usage import UsageBook, cost, usage_path_for

API = "/api/v1"
MARCH_1 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
MARCH_2 = MARCH_1 + 86400
PRICING = {"input_per_million": 2.5, "output_per_million": 10, "cached_input_per_million": 1.25}
COUNT_FIELDS = {"requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost", "unpriced_requests"}


@pytest.fixture
def usage_path(store):
    return usage_path_for(store.path)


@pytest.fixture
def app(store, health_path, usage_path):
    return create_app(store, health_path=health_path, usage_path=usage_path)


@pytest.fixture
def kid(client, gid):
    return client.post(f"{API}/gateways/{gid}/keys", json={"name": "k"}).json["id"]


@pytest.fixture
def book(usage_path):
    return UsageBook(usage_path, clock=lambda: MARCH_2)


def record(gid, key, *, target="t1", model="gpt-4", started=MARCH_1, tokens=(1000, 100, 0), status=200):
    usage = TokenUsage(*tokens, reported=True)
    return RequestRecord(request_id="r", started=started, gateway_id=gid, key_id=key, target_id=target,
                         served_model=model, status=status, usage=usage, cost=cost(usage, Pricing(**PRICING)))


def get(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, response.json
    return response.json


def test_key_usage_totals_and_days(client, gid, kid, book):
    book.add(record(gid, kid, tokens=(1000, 100, 400)))
    book.add(record(gid, kid, started=MARCH_2, status=500, tokens=(10, 0, 0)))
    book.add(record(gid, "another-key"))
    book.stop()
    body = get(client, f"{API}/gateways/{gid}/keys/{kid}/usage?from=2026-03-01&to=2026-03-31")
    assert {k: body[k] for k in ("gateway_id", "key_id", "group_by", "from", "to", "currency", "as_of")} == {
        "gateway_id": gid, "key_id": kid, "group_by": "day", "from": "2026-03-01", "to": "2026-03-31",
        "currency": "USD", "as_of": "2026-03-02T12:00:00.000Z"}
    totals = body["totals"]
    assert set(totals) == COUNT_FIELDS
    assert (totals["requests"], totals["errors"], totals["input_tokens"], totals["cached_tokens"]) == (2, 1, 1010, 400)
    assert totals["cost"] == round((600 * 2.5 + 400 * 1.25 + 100 * 10 + 10 * 2.5) / 1e6, 6)
    assert [(g["group"], g["requests"]) for g in body["groups"]] == [("2026-03-01", 1), ("2026-03-02", 1)]


def test_gateway_usage_grouped(client, gid, kid, book):
    book.add(record(gid, kid, target="t1", model="gpt-4"))
    book.add(record(gid, kid, target="t2", model="claude"))
    book.add(record(gid, None, target=None, model=None, status=401, tokens=(0, 0, 0)))
    book.add(record("other-gateway", kid))
    book.flush()
    url = f"{API}/gateways/{gid}/usage?from=2026-03-01&to=2026-03-01"
    assert [(g["group"], g["requests"]) for g in get(client, url)["groups"]] == [(kid, 2), (None, 1)]  # by key
    assert [g["group"] for g in get(client, url + "&group_by=target")["groups"]] == ["t1", "t2", None]
    assert {g["group"] for g in get(client, url + "&group_by=model")["groups"]} == {"gpt-4", "claude", None}
    days = get(client, url + "&group_by=day")
    assert [g["group"] for g in days["groups"]] == ["2026-03-01"]
    assert days["totals"]["requests"] == 3 and days["key_id"] is None


def test_usage_survives_a_restart(client, gid, kid, usage_path):
    first = UsageBook(usage_path, clock=lambda: MARCH_2)
    first.start()
    first.add(record(gid, kid))
    first.stop()
    second = UsageBook(usage_path, clock=lambda: MARCH_2)  # the proxy restarted
    second.start()
    second.add(record(gid, kid))
    second.stop()
    body = get(client, f"{API}/gateways/{gid}/keys/{kid}/usage?from=2026-03-01&to=2026-03-01")
    assert body["totals"]["requests"] == 2 and body["totals"]["input_tokens"] == 2000


def test_default_range_is_the_last_30_days(client, gid, kid, usage_path):
    now = time.time()
    book = UsageBook(usage_path, clock=lambda: now)
    book.add(record(gid, kid, started=now))
    book.add(record(gid, kid, started=now - 29 * 86400))
    book.add(record(gid, kid, started=now - 31 * 86400))
    book.flush()
    body = get(client, f"{API}/gateways/{gid}/keys/{kid}/usage")
    today = datetime.fromtimestamp(now, timezone.utc).date()
    assert body["to"] == today.isoformat() and body["from"] == (today - timedelta(days=29)).isoformat()
    assert body["totals"]["requests"] == 2
    to_only = get(client, f"{API}/gateways/{gid}/usage?to=2026-03-31")
    assert to_only["from"] == "2026-03-02"
    from_only = get(client, f"{API}/gateways/{gid}/usage?from={today - timedelta(days=3)}")
    assert from_only["to"] == today.isoformat()


def test_nothing_written_yet_is_zero(client, gid, kid):
    body = get(client, f"{API}/gateways/{gid}/usage?group_by=day")
    assert body["as_of"] is None and body["groups"] == [] and body["totals"]["requests"] == 0


def test_corrupt_or_unconfigured_usage_file_is_zero(client, store, gid, kid, usage_path):
    with open(usage_path, "w") as handle:
        handle.write("{half")
    assert get(client, f"{API}/gateways/{gid}/keys/{kid}/usage")["totals"]["requests"] == 0
    plain = create_app(store).test_client()
    assert get(plain, f"{API}/gateways/{gid}/usage")["as_of"] is None


@pytest.mark.parametrize("query, loc", [
    ("from=2026-3-1", "query.from"),
    ("from=20260301", "query.from"),
    ("to=2026-02-30", "query.to"),
    ("to=yesterday", "query.to"),
    ("from=2026-03-02&to=2026-03-01", "query.from"),
    ("from=2025-01-01&to=2026-01-02", "query.to"),
    ("group_by=week", "query.group_by"),
])
def test_bad_parameters_are_400_naming_them(client, gid, kid, query, loc):
    for url in (f"{API}/gateways/{gid}/usage?{query}", f"{API}/gateways/{gid}/keys/{kid}/usage?{query}"):
        if "group_by" in query and "/keys/" in url:
            continue  # a key's usage is always per day
        body = get(client, url, status=400)
        assert body["details"] == [{"loc": loc, "msg": body["error"]}]
        assert loc.split(".")[1] in body["error"]


def test_a_full_year_is_allowed(client, gid):
    body = get(client, f"{API}/gateways/{gid}/usage?from=2024-01-01&to=2024-12-31")  # a leap year: 366 days
    assert body["from"] == "2024-01-01"


def test_unknown_gateway_or_key_is_404(client, gid, kid, guide):
    get(client, f"{API}/gateways/nope/usage", status=404)
    get(client, f"{API}/gateways/nope/keys/{kid}/usage", status=404)
    get(client, f"{API}/gateways/{gid}/keys/nope/usage", status=404)
    other = client.post(f"{API}/gateways", json={"name": "o", "subdomain": "other"}).json["id"]
    get(client, f"{API}/gateways/{other}/keys/{kid}/usage", status=404)  # a key of another gateway


def test_openapi_documents_usage(client):
    doc = get(client, f"{API}/openapi.json")
    gateway_usage = doc["paths"][f"{API}/gateways/{{gateway_id}}/usage"]["get"]
    assert {p["name"] for p in gateway_usage["parameters"]} == {"from", "to", "group_by"}
    key_usage = doc["paths"][f"{API}/gateways/{{gateway_id}}/keys/{{key_id}}/usage"]
    assert [p["name"] for p in key_usage["parameters"]] == ["gateway_id", "key_id"]
    assert key_usage["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageReport"}
    schemas = doc["components"]["schemas"]
    assert "from" in schemas["UsageReport"]["properties"] and "UsageGroup" in schemas
    assert schemas["Pricing"]["properties"]["input_per_million"]["minimum"] == 0
    assert {"$ref": "#/components/schemas/Pricing"} in schemas["Target"]["properties"]["pricing"]["anyOf"]


# -- pricing through the admin API ---------------------------------------------------------------------------------


def test_pricing_round_trips(client, gid, guide):
    guide.upstream["targets"][0]["pricing"] = {"input_per_million": 2.5, "output_per_million": 10}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert created.status_code == 201, created.json
    first, second = created.json["targets"]
    assert first["pricing"] == {"input_per_million": 2.5, "output_per_million": 10.0,
                                "cached_input_per_million": None, "currency": "USD"}
    assert second["pricing"] is None
    upstream = get(client, f"{API}/gateways/{gid}/upstreams/{created.json['id']}")
    assert upstream["targets"][0]["pricing"] == first["pricing"]
    upstream["targets"][1]["pricing"] = PRICING  # GET -> edit -> PUT (masked credentials come back as they were)
    replaced = client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=upstream)
    assert replaced.status_code == 200, replaced.json
    assert replaced.json["targets"][1]["pricing"] == {**PRICING, "output_per_million": 10.0, "currency": "USD"}


@pytest.mark.parametrize("pricing, loc", [
    ({"input_per_million": -1, "output_per_million": 1}, "targets.0.pricing.input_per_million"),
    ({"input_per_million": "1", "output_per_million": 1}, "targets.0.pricing.input_per_million"),
    ({"input_per_million": 1, "output_per_million": True}, "targets.0.pricing.output_per_million"),
    ({"input_per_million": 1}, "targets.0.pricing.output_per_million"),
    ({"input_per_million": 1, "output_per_million": 1, "cached_input_per_million": -0.5},
     "targets.0.pricing.cached_input_per_million"),
    ({"input_per_million": 1, "output_per_million": 1, "currency": "EUR"}, "targets.0.pricing.currency"),
    ("cheap", "targets.0.pricing"),
])
def test_bad_pricing_is_400_naming_the_field(client, gid, pricing, loc):
    payload = {"name": "u", "targets": [{"provider": "openai", "pricing": pricing}]}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert response.status_code == 400
    assert [d["loc"] for d in response.json["details"]] == [loc]
    assert loc in response.json["error"]


def test_non_finite_pricing_is_400(client, gid):
    for price, words in (("NaN", "NaN is not valid JSON"), ("1e400", "finite number")):
        body = '{"name": "u", "targets": [{"provider": "openai", "pricing": {"input_per_million": %s, ' \
               '"output_per_million": 1}}]}' % price
        response = client.post(f"{API}/gateways/{gid}/upstreams", data=body, content_type="application/json")
        assert response.status_code == 400 and words in response.json["error"], response.json
