"""Validation rules of reference/api.md and docs/CONTRACTS.md, one behaviour per test."""

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from store.models import (
    ApiKeyCreate,
    Credentials,
    Failover,
    Gateway,
    HealthChecks,
    Rule,
    Service,
    Target,
    Upstream,
    format_rfc3339,
)

OPENAI = {"provider": "openai"}


def error_locs(exc_info):
    return [".".join(str(p) for p in e["loc"]) for e in exc_info.value.errors()]


# --- Gateway -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdomain", ["a", "your-subdomain", "a1-b2", "x" * 63])
def test_gateway_accepts_dns_labels(subdomain):
    assert Gateway.from_payload({"name": "g", "subdomain": subdomain}).subdomain == subdomain


@pytest.mark.parametrize("subdomain", ["", "-a", "a-", "a_b", "a.b", "x" * 64, "ü", 5])
def test_gateway_rejects_non_dns_labels(subdomain):
    with pytest.raises(ValidationError) as exc_info:
        Gateway.from_payload({"name": "g", "subdomain": subdomain})
    assert error_locs(exc_info) == ["subdomain"]


def test_gateway_subdomain_is_lowercased():
    assert Gateway.from_payload({"name": "g", "subdomain": "Your-Sub"}).subdomain == "your-sub"


def test_gateway_name_required_and_non_empty():
    for payload in ({"subdomain": "a"}, {"name": "", "subdomain": "a"}):
        with pytest.raises(ValidationError) as exc_info:
            Gateway.from_payload(payload)
        assert error_locs(exc_info) == ["name"]


def test_gateway_defaults_and_ignored_fields():
    gateway = Gateway.from_payload(
        {"name": "g", "subdomain": "a", "id": "chosen", "created_at": "2000-01-01T00:00:00Z", "provider_options": {}}
    )
    assert gateway.status == "active"
    assert gateway.id != "chosen"  # server-owned
    assert gateway.created_at.year != 2000
    assert not hasattr(gateway, "provider_options")


def test_gateway_status_values():
    assert Gateway.from_payload({"name": "g", "subdomain": "a", "status": "inactive"}).status == "inactive"
    with pytest.raises(ValidationError):
        Gateway.from_payload({"name": "g", "subdomain": "a", "status": "paused"})


def test_timestamps_are_rfc3339_utc():
    gateway = Gateway.from_payload({"name": "g", "subdomain": "a"})
    text = gateway.model_dump(mode="json")["created_at"]
    assert text.endswith("Z") and datetime.fromisoformat(text).tzinfo is not None
    assert format_rfc3339(datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-01-02T03:04:05.000Z"
    )


def test_models_are_frozen():
    gateway = Gateway.from_payload({"name": "g", "subdomain": "a"})
    with pytest.raises(ValidationError):
        gateway.name = "other"


# --- Target ---------------------------------------------------------------------------------------------------


def test_target_defaults_and_generated_id():
    a, b = Target.model_validate(OPENAI), Target.model_validate(OPENAI)
    assert (a.weight, a.priority, a.models, a.headers) == (1, 1, [], {})
    assert a.id and a.id != b.id


def test_target_keeps_given_id():
    assert Target.model_validate({**OPENAI, "id": "primary-1"}).id == "primary-1"


@pytest.mark.parametrize("target_id", ["", "a/b", "has space", "x" * 65])
def test_target_id_must_be_safe_for_health_keys(target_id):
    with pytest.raises(ValidationError):
        Target.model_validate({**OPENAI, "id": target_id})


@pytest.mark.parametrize(
    "field, value",
    [("weight", -1), ("priority", 0), ("port", 0), ("port", 65536), ("protocol", "ftp"), ("provider", "cohere"),
     ("weight", "5"), ("weight", True), ("weight", 1.5), ("max_tokens_default", 0), ("path", "v1/messages")],
)
def test_target_rejects(field, value):
    with pytest.raises(ValidationError) as exc_info:
        Target.model_validate({**OPENAI, "host": "h", "port": 1, "protocol": "http", field: value})
    assert error_locs(exc_info) == [field]


def test_target_weight_zero_and_port_bounds_allowed():
    target = Target.model_validate({**OPENAI, "weight": 0, "port": 65535, "protocol": "HTTPS", "provider": "OpenAI"})
    assert (target.weight, target.port, target.protocol, target.provider) == (0, 65535, "https", "openai")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "azure", "openai-compatible"])
def test_target_known_providers(provider):
    assert Target.model_validate({"provider": provider}).provider == provider


def test_default_model_must_be_listed():
    with pytest.raises(ValidationError) as exc_info:
        Target.model_validate({**OPENAI, "models": ["gpt-4"], "default_model": "gpt-5"})
    assert error_locs(exc_info) == ["default_model"]
    # Either alone is fine.
    assert Target.model_validate({**OPENAI, "default_model": "gpt-5"}).default_model == "gpt-5"
    assert Target.model_validate({**OPENAI, "models": ["gpt-4"], "default_model": "gpt-4"}).default_model == "gpt-4"


def test_target_without_provider_needs_origin():
    with pytest.raises(ValidationError) as exc_info:
        Target.model_validate({"host": "localhost"})
    assert "port, protocol" in str(exc_info.value)
    target = Target.model_validate({"host": "localhost", "port": 8000, "protocol": "http"})
    assert target.provider is None


def test_target_aigw_extras():
    target = Target.model_validate({"provider": "azure", "api_version": "2024-06-01", "max_tokens_default": 512})
    assert (target.api_version, target.max_tokens_default) == ("2024-06-01", 512)


# --- Credentials ----------------------------------------------------------------------------------------------


def test_credentials_forms():
    assert Credentials.model_validate({"header_name": "x-api-key", "header_value": "s"}).secret() == "s"
    assert Credentials.model_validate({"api_key": "k"}).secret() == "k"


@pytest.mark.parametrize(
    "payload",
    [{}, {"header_name": "x"}, {"header_value": "v"}, {"api_key": "k", "header_name": "x", "header_value": "v"},
     {"api_key": ""}],
)
def test_credentials_rejects(payload):
    with pytest.raises(ValidationError):
        Credentials.model_validate(payload)


# --- Upstream -------------------------------------------------------------------------------------------------


def upstream(**overrides):
    return Upstream.from_payload({"name": "u", "targets": [OPENAI], **overrides})


@pytest.mark.parametrize(
    "given, stored",
    [("round-robin", "round-robin"), ("weighted-round-robin", "weighted-round-robin"), ("random", "random"),
     ("least-connections", "least-connections"), ("least-conn", "least-connections"),
     ("LEAST_CONN", "least-connections"), ("latency-aware", "latency-aware"), ("sticky", "sticky")],
)
def test_algorithms(given, stored):
    assert upstream(algorithm=given).algorithm == stored


def test_unknown_algorithm_rejected():
    with pytest.raises(ValidationError) as exc_info:
        upstream(algorithm="fastest")
    assert error_locs(exc_info) == ["algorithm"]


def test_upstream_needs_targets_and_name():
    with pytest.raises(ValidationError) as exc_info:
        Upstream.from_payload({"name": "u", "targets": []})
    assert error_locs(exc_info) == ["targets"]
    with pytest.raises(ValidationError) as exc_info:
        Upstream.from_payload({"targets": [OPENAI]})
    assert error_locs(exc_info) == ["name"]


def test_duplicate_target_ids_rejected():
    with pytest.raises(ValidationError, match="duplicate target id"):
        upstream(targets=[{**OPENAI, "id": "a"}, {**OPENAI, "id": "a"}])


def test_health_check_defaults_and_bounds():
    checks = upstream().health_checks
    assert (checks.passive, checks.threshold, checks.interval, checks.min_requests) == (True, 3, 60, 10)
    assert checks.error_ratio is None and checks.active is None
    for field, value in [("threshold", 0), ("interval", 0), ("error_ratio", 0), ("error_ratio", 1.5),
                         ("min_requests", 0), ("passive", "yes")]:
        with pytest.raises(ValidationError):
            HealthChecks.model_validate({field: value})
    active = HealthChecks.model_validate({"active": {"enabled": True}}).active
    assert (active.enabled, active.path, active.interval) == (True, "/v1/models", 30)


def test_failover_defaults_and_validation():
    failover = upstream().failover
    assert failover.retry_on == ["connect", "timeout", "5xx", "429", "401", "403"]
    timeouts = (failover.connect_timeout, failover.headers_timeout, failover.first_token_timeout,
                failover.idle_timeout, failover.max_attempts, failover.total_timeout)
    assert timeouts == (5.0, 300.0, 60.0, 60.0, None, 600.0)
    assert Failover.model_validate({"retry_on": ["5XX", "connect"]}).retry_on == ["5xx", "connect"]
    for payload in ({"retry_on": ["500"]}, {"connect_timeout": 0}, {"max_attempts": 0}):
        with pytest.raises(ValidationError):
            Failover.model_validate(payload)


def test_sticky_defaults_for_sticky_algorithm():
    assert upstream().sticky is None
    sticky = upstream(algorithm="sticky").sticky
    assert (sticky.hash_on, sticky.ttl) == ("api_key", 300)
    assert upstream(algorithm="sticky", sticky={"hash_on": "header:X-Session-Id"}).sticky.hash_on == (
        "header:X-Session-Id"
    )
    with pytest.raises(ValidationError):
        upstream(sticky={"hash_on": "cookie"})


# --- Service --------------------------------------------------------------------------------------------------


def test_service_types():
    assert Service.from_payload({"name": "s", "upstream_id": "u1"}).type == "upstream"
    with pytest.raises(ValidationError, match="needs upstream_id"):
        Service.from_payload({"name": "s", "type": "upstream"})
    with pytest.raises(ValidationError, match="needs host, port, protocol"):
        Service.from_payload({"name": "s", "type": "endpoint"})
    endpoint = Service.from_payload(
        {"name": "s", "type": "endpoint", "host": "h", "port": 80, "protocol": "http", "path": "/x"}
    )
    assert endpoint.type == "endpoint"
    with pytest.raises(ValidationError):
        Service.from_payload({"name": "s", "type": "lambda", "upstream_id": "u"})


# --- Rule -----------------------------------------------------------------------------------------------------


def rule(**overrides):
    return Rule.from_payload({"path": "/v1", "service_id": "s", **overrides})


def test_rule_defaults():
    r = rule()
    assert (r.strip_path, r.active, r.retry_attempts) == (False, True, None)
    assert r.methods == ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def test_rule_methods_normalised():
    assert rule(methods=["post", "Get", "POST"]).methods == ["POST", "GET"]


@pytest.mark.parametrize("methods", [[], ["FETCH"], "POST", [1]])
def test_rule_methods_rejected(methods):
    with pytest.raises(ValidationError) as exc_info:
        rule(methods=methods)
    assert all(loc.startswith("methods") for loc in error_locs(exc_info))


@pytest.mark.parametrize("path", ["v1", "", "*"])
def test_rule_path_must_start_with_slash(path):
    with pytest.raises(ValidationError) as exc_info:
        rule(path=path)
    assert error_locs(exc_info) == ["path"]


def test_rule_path_trailing_slash_normalised():
    assert rule(path="/v1/").path == "/v1"
    assert rule(path="/").path == "/"


def test_rule_requires_service_id():
    with pytest.raises(ValidationError) as exc_info:
        Rule.from_payload({"path": "/v1"})
    assert error_locs(exc_info) == ["service_id"]


@pytest.mark.parametrize(
    "rule_path, request_path, expected",
    [("/v1", "/v1", True), ("/v1", "/v1/chat/completions", True), ("/v1", "/v1x", False), ("/v1", "/v", False),
     ("/", "/anything/at/all", True), ("/v1/chat", "/v1/messages", False)],
)
def test_rule_segment_boundary(rule_path, request_path, expected):
    assert rule(path=rule_path, methods=["POST"]).matches(request_path, "post") is expected


def test_rule_method_must_be_listed():
    assert rule(methods=["POST"]).matches("/v1", "GET") is False


# --- Keys -----------------------------------------------------------------------------------------------------


def test_key_expiry_must_be_future():
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert ApiKeyCreate.model_validate({"name": "k", "expires_at": future.isoformat()}).expires_at == (
        future.replace(microsecond=future.microsecond)
    )
    with pytest.raises(ValidationError) as exc_info:
        ApiKeyCreate.model_validate({"name": "k", "expires_at": "2001-01-01T00:00:00Z"})
    assert error_locs(exc_info) == ["expires_at"]
    with pytest.raises(ValidationError):
        ApiKeyCreate.model_validate({"name": "k", "expires_at": "next week"})
    with pytest.raises(ValidationError):
        ApiKeyCreate.model_validate({})
