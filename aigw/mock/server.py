"""The mock provider server: the aiohttp app, recording, fault handling, streaming and the /_mock/ control API.

The provider endpoints themselves live with their provider (openai.py, anthropic.py, gemini.py) as mixins.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

from aiohttp import web

from .anthropic import AnthropicEndpoint
from .common import ANTHROPIC, GEMINI, MAX_BODY, OPENAI, _BAD_JSON, Answer, StreamBody, _dumps
from .embeddings import EmbeddingsEndpoint
from .errors import OVERLOADED_STATUS, ApiError, error_response, status_error
from .faults import FaultRule, parse_fault, parse_faults
from .gemini import GeminiEndpoint
from .openai import OpenAIEndpoint
from .plan import _WORD

# Automatic prompt caching (OpenAI, Gemini): from 1024 prompt tokens, in 128-token steps.
CACHE_MIN_TOKENS, CACHE_STEP = 1024, 128


class MockProvider(OpenAIEndpoint, AnthropicEndpoint, GeminiEndpoint, EmbeddingsEndpoint):
    """The mock provider server (asyncio). ``await start()`` → port; ``await stop()``."""

    def __init__(self, *, api_key: str | None = None, name: str = "mock", reply: str | None = None,
                 tokens_per_chunk: int = 1, chunk_delay: float = 0.0, models: Sequence[str] | None = None,
                 max_records: int = 1000) -> None:
        reply = f"Hello from {name}" if reply is None else reply
        if not reply.strip():
            raise ValueError("reply must contain non-whitespace text")
        if tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be >= 1")
        self.api_key = api_key
        self.name = name
        self.reply = reply
        self.tokens_per_chunk = tokens_per_chunk
        self.chunk_delay = chunk_delay
        self.models = list(models) if models else None
        self._pieces = _WORD.findall(reply)
        self._records: collections.deque[dict] = collections.deque(maxlen=max_records)
        self._seq = 0
        self._status_counts: collections.Counter[str] = collections.Counter()
        self._faults: list[FaultRule] = []
        self._prompts_seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        r = app.router
        r.add_post("/v1/chat/completions", self._openai)
        from .responses import ResponsesApi  # the Responses API: POST /v1/responses, GET/DELETE /v1/responses/{id}
        ResponsesApi(self).add_routes(r)
        r.add_post("/v1/messages", self._anthropic)
        r.add_post("/v1/embeddings", self._openai_embeddings)
        r.add_post("/openai/deployments/{deployment}/embeddings", self._openai_embeddings)
        r.add_post("/v1beta/models/{target}", self._gemini)
        r.add_post("/v1/models/{target}", self._gemini)
        r.add_get("/v1/models", self._models)
        r.add_get("/v1beta/models", self._gemini_models)
        r.add_get("/healthz", self._healthz)
        r.add_get("/_mock/requests", self._ctl_requests)
        r.add_post("/_mock/reset", self._ctl_reset)
        r.add_get("/_mock/faults", self._ctl_get_faults)
        r.add_post("/_mock/faults", self._ctl_set_faults)
        r.add_get("/_mock/stats", self._ctl_stats)
        r.add_route("*", "/{tail:.*}", self._fallback)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "MockProvider":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- control (call from the server's loop; MockProviderThread wraps these thread-safely) ----------------

    def set_faults(self, rules: Iterable[Any]) -> None:
        """Replace the fault rules (dicts as in aigw.mock.faults, or FaultRule objects)."""
        self._faults = [r if isinstance(r, FaultRule) else parse_fault(r) for r in rules] \
            if isinstance(rules, (list, tuple)) else parse_faults(rules)

    def faults(self) -> list[dict]:
        return [f.to_dict() for f in self._faults]

    def requests(self, path_contains: str | None = None) -> list[dict]:
        """The recorded requests, oldest first (at most ``max_records``): seq, time, method, path, query,
        headers (lower-case names), body (parsed JSON; ``raw`` text when it was not JSON), provider, status
        (int, or "closed"), and ``outcome`` ("cut", "error_event", "client_closed") when a stream ended early."""
        return [dict(r) for r in self._records if path_contains is None or path_contains in r["path"]]

    def stats(self) -> dict:
        return {"total": self._seq, "by_status": dict(self._status_counts)}

    def reset(self) -> None:
        """Forget recorded requests, counters, fault rules and the prompt cache."""
        self._prompts_seen.clear()
        self._records.clear()
        self._status_counts.clear()
        self._seq = 0
        self._faults = []

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _record(self, request: web.Request, provider: str, body: Any, raw: bytes) -> dict:
        self._seq += 1
        rec = {"seq": self._seq, "time": time.time(), "method": request.method, "path": request.path,
               "query": dict(request.query), "headers": {k.lower(): v for k, v in request.headers.items()},
               "body": None if body is _BAD_JSON else body, "provider": provider, "status": None}
        if body is _BAD_JSON:
            rec["raw"] = raw.decode("utf-8", "replace")
        self._records.append(rec)
        return rec

    def _finish(self, rec: dict, status: int | str) -> None:
        rec["status"] = status
        self._status_counts[str(status)] += 1

    def _take_fault(self, provider: str, path: str, stream: bool, model: Any) -> FaultRule | None:
        for rule in self._faults:
            if rule.matches(provider, path, stream, model):
                if rule.times is not None:
                    rule.times -= 1
                return rule
        return None

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    def _cached_tokens(self, provider: str, prompt: Any, prompt_tokens: int) -> int:
        """Automatic prompt caching as OpenAI and Gemini (2.5, implicit) do it: a prompt of at least 1024 tokens
        sent again is served from the cache in 128-token steps (the answer's usage reports them)."""
        if prompt_tokens < CACHE_MIN_TOKENS:
            return 0
        key = provider + _dumps(prompt)
        if key not in self._prompts_seen:
            self._prompts_seen.add(key)
            return 0
        return prompt_tokens - prompt_tokens % CACHE_STEP

    def _check_model(self, model: Any) -> bool:
        return self.models is None or model in self.models

    async def _serve(self, request: web.Request, provider: str, stream_of: Callable[[Any], bool],
                     answer: Callable[[web.Request, Any, dict], Awaitable[Answer]]) -> web.StreamResponse:
        """Common path of every provider endpoint: read, record, faults, answer, stream (with stream faults)."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _BAD_JSON
        rec = self._record(request, provider, body, raw)
        stream = stream_of(body)
        fault = self._take_fault(provider, request.path, stream, body.get("model") if isinstance(body, dict)
                                 else None) if self._faults else None
        try:
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.close:
                    self._finish(rec, "closed")
                    self._drop(request)
                    return web.Response(status=499)  # never reaches the client
                if fault.status:
                    err = status_error(provider, fault.status)
                    err.body = fault.body
                    err.headers = dict(fault.headers)
                    if fault.retry_after is not None:
                        err.headers["retry-after"] = fault.retry_after
                    raise err
                if fault.error_event_after is not None and not stream:
                    raise status_error(provider, OVERLOADED_STATUS[provider])
            result = await answer(request, body, rec)
        except ApiError as e:
            self._finish(rec, e.status)
            return error_response(provider, e)
        if fault is not None and fault.headers and not fault.status:
            # Headers alone: added to the normal answer (e.g. a provider's x-ratelimit-remaining-* headers).
            result.headers.update(fault.headers)
        if isinstance(result, StreamBody):
            return await self._send_stream(request, rec, result, fault)
        if fault is not None and result.status == 200 and (
                fault.first_token_delay or fault.cut_after is not None or fault.stall_after is not None):
            return await self._send_body(request, rec, result, fault)
        self._finish(rec, result.status)
        return result

    async def _send_body(self, request: web.Request, rec: dict, result: web.Response,
                         fault: FaultRule) -> web.StreamResponse:
        """A JSON answer under a stream fault: slow start, a stall in the middle, or a cut in the middle."""
        body = result.body if isinstance(result.body, bytes) else b""
        resp = web.StreamResponse(status=200, headers={k: v for k, v in result.headers.items()
                                                       if k.lower() != "content-length"})
        resp.content_length = len(body)
        self._finish(rec, 200)
        await resp.prepare(request)
        if fault.first_token_delay:
            await asyncio.sleep(fault.first_token_delay)
        half = len(body) // 2
        if fault.cut_after is not None:
            await resp.write(body[:half])
            rec["outcome"] = "cut"
            self._drop(request)
            return resp
        if fault.stall_after is not None:
            await resp.write(body[:half])
            await asyncio.sleep(fault.stall)
            body = body[half:]
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def _send_stream(self, request: web.Request, rec: dict, sb: StreamBody,
                           fault: FaultRule | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": sb.content_type, "cache-control": "no-cache",
                                                       **sb.headers})
        self._finish(rec, 200)
        await resp.prepare(request)
        events = sb.events
        limit, ending = len(events), "eof"
        stall_at = stall = None
        if fault is not None:
            if fault.cut_after is not None:
                limit, ending = min(fault.cut_after, len(events) - 1), "cut"
            elif fault.error_event_after is not None:
                limit, ending = min(fault.error_event_after, len(events) - 1), "error"
            elif fault.trickle_after is not None:
                limit, ending = min(fault.trickle_after, len(events) - 1), "trickle"
            stall_at, stall = fault.stall_after, fault.stall
            if fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
        delay = self.chunk_delay
        try:
            for i in range(limit):
                if i == stall_at:
                    await asyncio.sleep(stall)
                elif i and delay:
                    await asyncio.sleep(delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError  # aiohttp drops writes to a closed peer silently
                await resp.write(events[i])
            if ending == "trickle":
                await self._trickle(request, resp, fault)
                rec["outcome"] = "trickle"
                self._drop(request)
                return resp
        except ConnectionError:  # the client went away mid-stream
            rec["outcome"] = "client_closed"
            return resp
        except asyncio.CancelledError:  # aiohttp cancels the handler when the peer disconnects
            rec["outcome"] = "client_closed"
            raise
        if ending == "cut":
            rec["outcome"] = "cut"
            self._drop(request)
            return resp
        if ending == "error":
            rec["outcome"] = "error_event"
            await resp.write(sb.error_event)
        await resp.write_eof()
        return resp

    @staticmethod
    async def _trickle(request: web.Request, resp: web.StreamResponse, fault: FaultRule) -> None:
        """Bytes that never complete an SSE line: a stream that is alive on the wire yet says nothing."""
        chunk = b"x" * fault.trickle_chunk
        sent = 0
        while fault.trickle_bytes is None or sent < fault.trickle_bytes:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError
            await resp.write(chunk)
            sent += len(chunk)
            if fault.trickle_interval:
                await asyncio.sleep(fault.trickle_interval)

    def _auth_ok(self, *candidates: str | None) -> bool:
        return self.api_key is None or self.api_key in candidates

    # ---- request helpers of the provider endpoints ----------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        auth = request.headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    @staticmethod
    def _stream_flag(body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    # ---- model lists, health, fallback ----------------------------------------------------------------------

    def _model_names(self) -> list[str]:
        return self.models or ["mock-model"]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        provider = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
        return await self._serve(request, provider, lambda _b: False, self._models_answer)

    async def _models_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        if rec["provider"] == ANTHROPIC:
            self._anthropic_auth(request)
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z",
                     "lifecycle": "active"}
                    for m in self._model_names()]
            return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"],
                                      "last_id": data[-1]["id"]})
        if not self._auth_ok(self._bearer(request)):
            raise ApiError(401, "Incorrect API key provided.", etype="invalid_request_error", code="invalid_api_key")
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1735689600, "owned_by": self.name} for m in self._model_names()]})

    async def _gemini_models(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, GEMINI, lambda _b: False, self._gemini_models_answer)

    async def _gemini_models_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._gemini_auth(request)
        return web.json_response({"models": [
            {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": ["generateContent",
                                                                                     "streamGenerateContent"]}
            for m in self._model_names()]})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name})

    async def _fallback(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            return await self._openai(request)
        # Recorded too, so a test can see where a misrouted request went.
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _BAD_JSON
        self._finish(self._record(request, "unknown", body, raw), 404)
        return web.json_response({"error": {"message": f"Invalid URL ({request.method} {request.path})",
                                            "type": "invalid_request_error", "param": None, "code": None}},
                                 status=404)

    # ---- control endpoints ----------------------------------------------------------------------------------

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests(request.query.get("path_contains")))

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults())

    async def _ctl_set_faults(self, request: web.Request) -> web.Response:
        try:
            self.set_faults(parse_faults(await request.json()))
        except ValueError as e:  # includes JSONDecodeError
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"ok": True, "faults": self.faults()})

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())
