"""The gateway's own model list: `GET /v1/models` and `GET /v1/models/{id}`, answered without any provider.

A caller's gateway can serve the union of `models` and `default_model` of every target of every upstream its
active rules lead to (rule order, then target order, then the target's list; each id once, owned by the first
target naming it). That list depends only on the config, so it is worked out once per config snapshot (cached by
the snapshot's identity) and per gateway, never per request. Answers are OpenAI's shape, or Anthropic's when the
request carries `anthropic-version` (with its `limit` / `after_id` / `before_id` paging). Pure: no I/O.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import parse_qs, unquote

from addon.ingress import header_values
from providers import GatewayError
from store.models import Gateway
from store.snapshot import Snapshot

MODELS_PATH = "/v1/models"
# What a model list says when nothing is known: Anthropic documents an epoch value for an unknown release date.
CREATED = 0
CREATED_AT = "1970-01-01T00:00:00Z"
ANTHROPIC_PAGE = (20, 1, 1000)  # default, min and max `limit`, as Anthropic's API
OWNER_WITHOUT_PROVIDER = "aigw"  # a provider-less (forwarded) target's models
_JSON = MappingProxyType({"content-type": "application/json"})


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    owned_by: str  # the provider of the first target naming it


@dataclass(frozen=True, slots=True)
class ModelsRequest:
    """A request the catalog answers: the list (`model_id` None) or one model, in a client format."""
    model_id: str | None
    ingress: str | None  # "anthropic" when it carries anthropic-version; None: OpenAI's format
    query: str


def models_request(method: str, path: str, headers: Mapping[str, str]) -> ModelsRequest | None:
    """The catalog request `method path` is, or None when it is none (any other request)."""
    if method != "GET":
        return None
    base, _, query = path.partition("?")
    if base.rstrip("/") == MODELS_PATH:
        model_id = None
    elif base.startswith(MODELS_PATH + "/"):
        # The SDKs percent-encode the id as one segment ("org/model" → "org%2Fmodel"): never forwarded, so decoded.
        model_id = unquote(base[len(MODELS_PATH) + 1:])
    else:
        return None  # any other request: its headers are not read here
    ingress = "anthropic" if header_values(headers, ("anthropic-version",))[0] is not None else None
    return ModelsRequest(model_id, ingress, query)


def gateway_models(snapshot: Snapshot, gateway: Gateway) -> tuple[ModelEntry, ...]:
    """Every model the gateway's active rules can reach, in a stable order."""
    seen: dict[str, ModelEntry] = {}
    for rule in snapshot.rules_by_gateway.get(gateway.id, ()):
        service = snapshot.service(rule.service_id)
        upstream = snapshot.upstream(service.upstream_id) if service is not None and service.upstream_id else None
        if service is None or service.type != "upstream" or upstream is None:
            continue
        for target in upstream.targets:
            owner = target.provider or OWNER_WITHOUT_PROVIDER
            for model in (*target.models, target.default_model):
                if model and model not in seen:
                    seen[model] = ModelEntry(model, owner)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _openai_model(m: ModelEntry) -> dict:
    return {"id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by}


def _anthropic_model(m: ModelEntry) -> dict:
    return {"type": "model", "id": m.id, "display_name": m.id, "created_at": CREATED_AT, "lifecycle": "active"}


def _anthropic_page(models: tuple[ModelEntry, ...], query: str) -> dict:
    """Anthropic's paging: `limit` items after `after_id` (or before `before_id`)."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    default, low, high = ANTHROPIC_PAGE
    raw_limit = params.get("limit", str(default))
    if not raw_limit.isdigit() or not low <= int(raw_limit) <= high:
        raise GatewayError(400, "invalid_request", f"limit: must be an integer from {low} to {high}", param="limit")
    limit = int(raw_limit)
    ids = [m.id for m in models]
    start, end = 0, len(models)
    if "after_id" in params:
        start = ids.index(params["after_id"]) + 1 if params["after_id"] in ids else len(models)
    if "before_id" in params:
        end = ids.index(params["before_id"]) if params["before_id"] in ids else 0
    window = models[start:end]
    page = window[-limit:] if "before_id" in params and "after_id" not in params else window[:limit]
    data = [_anthropic_model(m) for m in page]
    return {"data": data, "has_more": len(page) < len(window), "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


class Catalog:
    """The model lists of the current config snapshot, per gateway; rebuilt when the snapshot is another one."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lists: dict[str, tuple[ModelEntry, ...]] = {}

    def models(self, snapshot: Snapshot, gateway: Gateway) -> tuple[ModelEntry, ...]:
        if snapshot is not self._snapshot:
            self._snapshot, self._lists = snapshot, {}
        found = self._lists.get(gateway.id)
        if found is None:
            found = self._lists[gateway.id] = gateway_models(snapshot, gateway)
        return found

    def answer(self, snapshot: Snapshot, gateway: Gateway, req: ModelsRequest) -> Answer:
        """The list or the one model in the caller's format; GatewayError(404) for a model the gateway lacks."""
        models = self.models(snapshot, gateway)
        anthropic = req.ingress == "anthropic"
        if req.model_id is None:
            obj = _anthropic_page(models, req.query) if anthropic else \
                {"object": "list", "data": [_openai_model(m) for m in models]}
        else:
            entry = next((m for m in models if m.id == req.model_id), None)
            if entry is None:
                raise GatewayError(404, "not_found", f"The model '{req.model_id[:200]}' does not exist on this "
                                   "gateway.", param="model", code="model_not_found")
            obj = _anthropic_model(entry) if anthropic else _openai_model(entry)
        return Answer(200, _JSON, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
