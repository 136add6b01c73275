"""Mock AI provider: one loopback HTTP server speaking OpenAI, Anthropic and Gemini, with fault injection.

Used by the end-to-end tests, the demo and the benchmark. Each endpoint validates requests as strictly as the
real provider does (so gateway translation bugs show up as 400s) and answers with byte-shapes copied from real
recordings (tests/fixtures/*), so the real SDKs accept them under ``_strict_response_validation``.

Endpoints (one port serves all of them):

* OpenAI    ``POST /v1/chat/completions`` and any path ending in ``/chat/completions``; Azure
  ``/openai/deployments/{d}/chat/completions?api-version=…`` (``api-key`` header; 404 without api-version;
  answers carry Azure's ``prompt_filter_results``/``content_filter_results``, and streams open with the
  prompt-filter chunk: ``choices: []`` and empty ``id``/``model``/``object``).
* Anthropic ``POST /v1/messages`` (``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` required).
* Gemini    ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse`` → SSE,
  otherwise one streamed JSON array); key in ``x-goog-api-key`` or ``?key=``.
* ``GET /v1/models`` (OpenAI shape, Anthropic shape when ``anthropic-version`` is sent), ``GET /v1beta/models``,
  ``GET /healthz`` (never faulted, no auth).
* Control: ``GET /_mock/requests``, ``POST /_mock/reset``, ``GET|POST /_mock/faults``, ``GET /_mock/stats``.

Behaviour: the reply text is fixed per server (``reply``, default ``"Hello from <name>"``); its words are the
completion tokens (``max_tokens`` truncates at a word, ``stop``/``stop_sequences`` cut before the match), prompt
tokens are ``ceil(chars of prompt text / 4)``. OpenAI and Gemini cache prompts automatically: the same prompt
(messages/contents and tools) of at least 1024 tokens sent again reports its tokens, rounded down to a multiple of
128, as cached (``prompt_tokens_details.cached_tokens`` / ``cachedContentTokenCount``). A tool call is answered when tools are given and either the tool
choice forces one, or the last turn is a plain user turn whose text mentions "weather"; "parallel" in that text
gives two calls. Arguments are ``{"city": "Paris"}`` (second call ``{"city": "Rome"}``).

Fault rules (``set_faults([...])`` / ``POST /_mock/faults``) make it fail the way real providers do: error
statuses, dropped connections, hangs, slow or stalled or cut streams, in-stream errors; their format is in
:mod:`aigw.mock.faults`.

Run one from a shell with ``python -m aigw.mock --port 0 --api-key KEY [--faults JSON|@file]`` (prints the port).

Modules: ``server`` (MockProvider: the app, recording, fault handling, streaming, ``/_mock/``), ``thread``
(MockProviderThread), ``faults``, ``errors`` (provider-shaped errors), ``plan`` (the reply), ``openai``,
``anthropic``, ``gemini`` (each family's validation, answers, streams and endpoint), ``common``, ``cli``.
"""

from .cli import main
from .faults import FaultRule, parse_fault, parse_faults
from .server import MockProvider
from .thread import MockProviderThread

__all__ = ["MockProvider", "MockProviderThread", "FaultRule", "parse_fault", "parse_faults", "main"]
