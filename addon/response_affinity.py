"""Which target holds a stored OpenAI response: conversations of the Responses API stay where their state is.

OpenAI keeps a response (`store`, on by default) on the account that made it, and a later request naming it —
`previous_response_id`, or `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
`GET /v1/responses/{id}/input_items` — only works there. The gateway records, for every Responses answer an
OpenAI target served, response id → target key (`store.health_file.target_key`: "<upstream id>/<target id>"), and
reduces the plan of a request naming an id to that one target:

- owner known and in the plan: the plan is that target alone (no failover: another target has no such state);
- owner known but not in the plan (its circuit is open, or it is out of quota): 503 naming the target and its
  state; owner no longer configured: 409. Never a silent new context elsewhere;
- owner unknown (made before a restart, by another gateway process, or evicted): the plan restricted to the
  targets that can hold state — provider `openai` and untranslated (provider-less) targets, which get the body as
  it is; none of them in the plan: 400 for `previous_response_id` (naming the field), 404 for the id paths.

`store: true` on a plan without such targets is ignored (nothing is stored; the answer says `store: false`).

The map is in memory, per process, bounded: at most `MAX_ENTRIES` ids (least recently used evicted first), each
kept `TTL_S` (OpenAI's own retention of stored responses is 30 days). See docs/translation.md, "Responses API".
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import providers
from addon.attempt import Answer, Inbound, Opened, Outcome
from providers import CanonicalRequest, GatewayError
from store.health_file import target_key
from store.models import Target, Upstream

# 100,000 ids × about 150 bytes: some 15 MB at most.
MAX_ENTRIES = 100_000
# OpenAI deletes stored responses after 30 days; an id older than that has nothing left to find.
TTL_S = 30 * 24 * 3600.0

RESPONSES_INGRESS = providers.RESPONSES_INGRESS
# /…/responses/{id}, /…/responses/{id}/cancel, /…/responses/{id}/input_items
_ID_PATH = re.compile(r"/responses/([^/?]+)(?:/(?:cancel|input_items))?/?(?:\?|$)")


class Health(Protocol):
    def state(self, key: str) -> str: ...


class ResponseAffinity:
    """A bounded LRU map of response id → target key, entries expiring after `ttl` seconds."""

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._map: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def remember(self, response_id: str, key: str) -> None:
        self._map[response_id] = (key, self._clock() + self.ttl)
        self._map.move_to_end(response_id)
        while len(self._map) > self.max_entries:
            self._map.popitem(last=False)

    def owner(self, response_id: str) -> str | None:
        entry = self._map.get(response_id)
        if entry is None:
            return None
        key, expires = entry
        if self._clock() >= expires:
            del self._map[response_id]
            return None
        self._map.move_to_end(response_id)
        return key

    def forget(self, response_id: str) -> None:
        self._map.pop(response_id, None)

    def clear(self) -> None:
        self._map.clear()


AFFINITY = ResponseAffinity()


def referenced_id(method: str, path: str, canon: CanonicalRequest | None) -> tuple[str, str] | None:
    """(response id, what names it: "previous_response_id" | "path") of a request that refers to a stored
    response; None for any other request."""
    if canon is not None:
        if canon.ingress == RESPONSES_INGRESS:
            prev = canon.raw.get("previous_response_id")
            return (prev, "previous_response_id") if isinstance(prev, str) and prev else None
        return None
    m = _ID_PATH.search(path)
    return (m.group(1), "path") if m else None


def _stateful(t: Target) -> bool:
    """Whether a target can hold Responses state: it serves the Responses API by pass-through (the registry
    says which providers do), or it is untranslated and gets the body as it is."""
    return not t.provider or providers.serves_natively(RESPONSES_INGRESS, t.provider)


def restrict(targets: list[Target], *, upstream: Upstream | None, scope: str, method: str, path: str,
             canon: CanonicalRequest | None, health: Health,
             affinity: ResponseAffinity = AFFINITY) -> list[Target]:
    """The plan of a request that names a stored response, reduced to the target holding it (see the module
    docstring); any other request's plan unchanged. Raises the caller's GatewayError when no target can serve."""
    ref = referenced_id(method, path, canon) if upstream is not None else None
    if ref is None:
        return targets
    response_id, named_by = ref
    key = affinity.owner(response_id)
    if key is not None and key.startswith(scope + "/"):
        owner = next((t for t in targets if target_key(scope, t.id) == key), None)
        if owner is not None:
            return [owner]
        configured = next((t for t in upstream.targets if target_key(scope, t.id) == key), None)
        tid = key.split("/", 1)[1]
        if configured is None:
            raise GatewayError(409, "invalid_request",
                               f"Response '{response_id}' is held by target '{tid}', which is no longer configured "
                               "in this upstream; start a new conversation without it.",
                               param=named_by if named_by != "path" else None, code="response_target_gone")
        state = health.state(key)
        why = f"circuit {state}" if state != "closed" else "out of quota"
        raise GatewayError(503, "unavailable",
                           f"Response '{response_id}' is held by target '{tid}', which is unavailable now ({why}); "
                           "retry later.", code="response_target_unavailable")
    capable = [t for t in targets if _stateful(t)]
    if capable:
        return capable
    if any(_stateful(t) for t in upstream.targets):
        raise GatewayError(503, "unavailable",
                           f"Response '{response_id}' can only be served by an OpenAI target, and none is available "
                           "now; retry later.", code="response_target_unavailable")
    if named_by == "path":
        raise GatewayError(404, "not_found", f"Response '{response_id}' not found: this upstream has no OpenAI "
                           "target to hold stored responses.", code="response_not_found")
    raise GatewayError(400, "invalid_request", "'previous_response_id' needs an OpenAI target (stored state), and "
                       "this upstream has none; send the conversation in 'input' instead.",
                       param="previous_response_id")


def answered(inbound: Inbound, key: str, target: Target, outcome: Outcome,
             affinity: ResponseAffinity = AFFINITY) -> None:
    """Note which target holds the response an attempt produced (a Responses answer from a target that keeps
    state), and forget an id a successful DELETE removed. Never raises."""
    if not _stateful(target) or isinstance(outcome, Answer) and outcome.status >= 300:
        return
    canon = inbound.canon
    if canon is None:
        ref = referenced_id(inbound.method, inbound.path, None)
        if ref is not None and inbound.method == "DELETE":
            affinity.forget(ref[0])
        if ref is not None or providers.ingress_for_path(inbound.path) != RESPONSES_INGRESS:
            return
    elif canon.ingress != RESPONSES_INGRESS or canon.raw.get("store") is False:
        return
    response_id = _id_of(outcome)
    if response_id:
        affinity.remember(response_id, key)


def _id_of(outcome: Outcome) -> str | None:
    if isinstance(outcome, Opened):
        return providers.response_id_in_events(outcome.buffered) if outcome.buffered else None
    if isinstance(outcome, Answer):
        if outcome.events:
            return providers.response_id_in_events(outcome.body)
        return providers.response_id_in_body(outcome.body)
    return None
