"""The interface every family implements, over the canonical hub (canonical.py).

A family has up to three parts, each a small object the registry (registry.py) names:

- `Client`: the ingress side, a format clients speak (OpenAI Chat Completions, Anthropic Messages).
  Parses a request body into a CanonicalRequest, renders a CanonicalResponse, makes the stream *sink*
  that turns canonical stream calls into the format's SSE, and renders a GatewayError as an error body.
- `Backend`: the provider side, one per provider name. Where a target without host goes, the path for
  a request and model, the auth headers for its credentials, the body (`build_body`, one signature for
  every backend), parsing a response into canonical, the stream *source* that reads the provider's SSE
  into canonical calls, and parsing an error body.
- `Passthrough`: the same family on both sides. The client's own body goes upstream with the edits the
  target needs, and answers pass near-verbatim (a round trip through the hub would lose fields). A backend holds
  one per client format it serves natively (`Backend.passthroughs`: the OpenAI backend serves both Chat
  Completions and Responses clients so).

The split follows the life of a request as a translator sees it (request body → upstream headers and
body; response body, complete or stream events up to end of stream; error body), with the hub in the
middle so that no code is written for a pair of families.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .canonical import CanonicalRequest, CanonicalResponse, Clock, IdFactory, Usage
from .errors import GatewayError, parse_error_body
from .streaming import Sink, Source


@dataclass
class TargetSpec:
    provider: str
    model: str | None
    path: str | None = None
    credentials: Any = None          # {"header_name", "header_value"} | {"api_key"} | model with those attrs
    headers: dict = field(default_factory=dict)
    api_version: str | None = None
    max_tokens_default: int | None = None


@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict
    body: bytes
    stream: bool


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes
    usage: Usage | None = None   # the usage the provider reported, canonical; None: none (or an error answer)
    model: str | None = None     # the model the provider says served the answer; None: it named none


class Client(ABC):
    """The ingress side of a family."""

    name: str                          # the ingress name (CanonicalRequest.ingress)
    path_suffix: str                   # request paths served in this format end with it
    # Client headers that carry request semantics and go on to a target of the client's own family.
    forwarded_headers: tuple[str, ...] = ()

    @abstractmethod
    def parse_request(self, obj: dict) -> CanonicalRequest:
        """A request body (a JSON object) → canonical; a malformed field is a GatewayError(400)."""

    @abstractmethod
    def render_response(self, resp: CanonicalResponse, req: CanonicalRequest, now: Clock,
                        new_id: IdFactory) -> dict:
        """A canonical answer → the response object this format's clients expect."""

    @abstractmethod
    def stream_sink(self, req: CanonicalRequest, now: Clock, new_id: IdFactory) -> Sink:
        """The sink that renders canonical stream calls as this format's SSE events."""

    @abstractmethod
    def error_body(self, err: GatewayError) -> bytes:
        """A GatewayError as this format's error body."""

    def check_translatable(self, req: CanonicalRequest, provider: str) -> None:
        """Raise GatewayError(400) when `req` asks what a `provider` target served through the hub cannot do
        (called only on the hub's path; a pass-through target gets the client's body as it is)."""


class Passthrough(ABC):
    """Serving a client from a backend of its own family."""

    ingress: str                       # the client format it serves

    @abstractmethod
    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        """The upstream body, made from the client's own (req.raw)."""

    @abstractmethod
    def verbatim_error(self, body: bytes) -> bool:
        """True when an upstream error body is already in the client's format (it then goes as it is)."""

    @abstractmethod
    def response_body(self, obj: Any, body: bytes, now: Clock) -> bytes:
        """A successful answer (`obj` parsed from `body`), with only the edits the client needs."""

    @abstractmethod
    def relay(self, req: CanonicalRequest) -> Source:
        """A stream relay: a Source that is its own Sink, re-framing events without re-encoding them."""

    def path(self, backend: "Backend", req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        """The upstream path: the backend's own, unless this format has an endpoint of its own there."""
        return backend.path(req, target, model)

    def usage_of(self, backend: "Backend", obj: Any) -> Usage | None:
        """The usage a successful answer (parsed JSON) of this format reports (never raises)."""
        return backend.usage_of(obj)


class Backend(ABC):
    """The provider side of a family, configured for one provider name."""

    name: str                                  # the provider name targets carry
    origin: tuple[str, str, int] | None = None  # where a target without host goes
    key_header: str = "authorization"          # how an `api_key` credential is sent
    key_prefix: str = "Bearer "
    # Sent on every request; a target header of the same name (any case) replaces it.
    version_headers: Mapping[str, str] = {}
    # The client formats this backend serves natively, one pass-through each (the others go through the hub).
    passthroughs: tuple[Passthrough, ...] = ()

    def passthrough_for(self, ingress: str) -> Passthrough | None:
        """The pass-through serving clients of `ingress` here; None: they are served through the hub."""
        for pt in self.passthroughs:
            if pt.ingress == ingress:
                return pt
        return None

    def default_origin(self) -> tuple[str, str, int]:
        if self.origin is None:
            raise GatewayError(503, "unavailable", f"{self.name} target needs host")
        return self.origin

    def auth_headers(self, credentials: Any) -> dict[str, str]:
        """An explicit `{header_name, header_value}` wins; else `api_key` in this provider's own header."""
        name, value = cred(credentials, "header_name"), cred(credentials, "header_value")
        if name and value is not None:
            return {str(name): str(value)}
        key = cred(credentials, "api_key")
        if not key:
            return {}
        return {self.key_header: f"{self.key_prefix}{key}" if self.key_prefix else key}

    @abstractmethod
    def path(self, req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        """The request path (with query) for this request and model."""

    @abstractmethod
    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        """The upstream body, encoded from the canonical request."""

    @abstractmethod
    def parse_response(self, obj: Any, req: CanonicalRequest, new_id: IdFactory) -> CanonicalResponse:
        """A successful answer (parsed JSON) → canonical."""

    @abstractmethod
    def stream_source(self, sink: Sink, req: CanonicalRequest, new_id: IdFactory) -> Source:
        """The source that reads this provider's stream events into canonical calls on `sink`."""

    def usage_of(self, obj: Any) -> Usage | None:
        """The usage a successful answer (parsed JSON) reports; None when it reports none or a malformed one.
        Never raises (any shape)."""
        return None

    def model_of(self, obj: Any) -> str | None:
        """The model a successful answer (parsed JSON) says served it: a non-empty `model` string, else None."""
        m = obj.get("model") if isinstance(obj, dict) else None
        return m if isinstance(m, str) and m else None

    def parse_error(self, status: int, body: bytes) -> GatewayError:
        """An error answer → GatewayError. Any shape is understood (compatible servers answer in others')."""
        return parse_error_body(status, body)


def cred(credentials: Any, key: str) -> Any:
    if credentials is None:
        return None
    if isinstance(credentials, Mapping):
        return credentials.get(key)
    return getattr(credentials, key, None)


# A model id that becomes one path segment (Gemini model, Azure deployment): no "/", "?", "#", "%", no dot segment.
_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+~-]{0,255}")


def fill_model(path: str, model: str, provider: str) -> str:
    """`{model}` in `path` replaced by the model as one percent-escaped path segment; a model that is no
    plausible id is the caller's 400."""
    if "{model}" not in path:
        return path
    if not _MODEL_SEGMENT.fullmatch(model):
        raise GatewayError(400, "invalid_request",
                           f"model {model[:80]!r} is not a valid {provider} model id (letters, digits and "
                           "'.', '_', '-', ':', '@', '+', '~'; no '/'; at most 256 characters)", param="model",
                           code="invalid_model")
    return path.replace("{model}", quote(model, safe=":@+~"))


def add_query(path: str, param: str) -> str:
    return path + ("&" if "?" in path else "?") + param
