"""Google Gemini (generateContent / streamGenerateContent?alt=sse), backend side: request encoding, response
parsing and the stream source. Gemini is never an ingress format, so there is no client side here."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .canonical import (
    CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, RefusalPart, TextPart, ThinkingPart, ToolCallPart,
    ToolResultPart, Usage, put_settings, token_counts,
)
from .errors import GatewayError, invalid, parse_error_body
from .interface import Backend, TargetSpec, add_query, fill_model
from .sse import SSEEvent
from .streaming import INVALID, Sink, Source

_FILTERED = ("SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY")
FINISH_IN = {"STOP": "stop", "MAX_TOKENS": "length", **{k: "content_filter" for k in _FILTERED}}

# Gemini's Schema is an OpenAPI subset and rejects unknown keywords ($schema, additionalProperties,
# strict, $defs...), so JSON schemas are filtered to what it documents.
_SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
))


def clean_schema(schema: Any, _root: Any = None, _refs: tuple = ()) -> Any:
    """A JSON schema → Gemini's Schema subset. `$ref`s into `$defs`/`definitions` (what pydantic and the
    openai SDK's pydantic tools produce for nested models) are inlined, since Gemini has no references;
    a recursive reference becomes a bare object. `anyOf` with a `null` branch becomes `nullable`, and
    `const` becomes a one-value `enum`."""
    if isinstance(schema, list):
        return [clean_schema(s, _root, _refs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    root = schema if _root is None else _root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _lookup_ref(root, ref)
        if target is None or ref in _refs:
            resolved: dict = {"type": "object"}
        else:
            resolved = clean_schema(target, root, _refs + (ref,))
        siblings = clean_schema({k: v for k, v in schema.items() if k != "$ref"}, root, _refs)
        return {**resolved, **siblings}
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "const":
            if isinstance(v, str) and "enum" not in schema:
                out["enum"] = [v]
            continue
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: clean_schema(s, root, _refs) for name, s in v.items()}
        elif k == "anyOf" and isinstance(v, list):
            branches = [b for b in v if not (isinstance(b, dict) and b.get("type") == "null")]
            if len(branches) < len(v):
                out["nullable"] = True
            if len(branches) == 1:
                for bk, bv in clean_schema(branches[0], root, _refs).items():
                    out.setdefault(bk, bv)
            elif branches:
                out[k] = clean_schema(branches, root, _refs)
        elif k == "items":
            out[k] = clean_schema(v, root, _refs)
        elif k == "type" and isinstance(v, list):  # ["string","null"] → nullable string
            types = [t for t in v if t != "null"]
            out[k] = types[0] if types else "string"
            if "null" in v:
                out["nullable"] = True
        else:
            out[k] = v
    return out


def _lookup_ref(root: Any, ref: str) -> Any:
    """'#/$defs/Name' (or any local JSON pointer) inside `root`; None when it cannot be followed."""
    if not ref.startswith("#/"):
        return None
    node = root
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            return None
        node = node[token]
    return node if isinstance(node, dict) else None


# A fixed table instead of the mimetypes module, which reads the system's mime.types files (I/O).
_EXT_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
             "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
             "txt": "text/plain", "mp3": "audio/mpeg", "wav": "audio/wav", "mp4": "video/mp4"}


def _mime_for(url: str, kind: str) -> str:
    name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXT_MIME.get(ext) or ("image/jpeg" if kind == "image" else "application/pdf")


# FunctionDeclaration.name: letters, digits, underscores, dots, colons and dashes, starting with a letter or an
# underscore, at most 64 characters. Anthropic allows 128 characters.
_GM_NAME_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")


def gemini_name(name: str, names: dict) -> str:
    """A tool name Gemini accepts: valid names are kept, others become a stable prefix + hash recorded in
    `names` (short → original) so that answers and streams carry the client's name back."""
    if _GM_NAME_OK.match(name):
        return name
    short = "_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)[:54] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    names[short] = name
    return short


def _parts(parts: list, names: dict | None = None) -> list[dict]:
    names = {} if names is None else names
    out: list[dict] = []
    for p in parts:
        if isinstance(p, (TextPart, RefusalPart)):
            if p.text:
                out.append({"text": p.text})
        elif isinstance(p, MediaPart):
            if p.url:
                out.append({"fileData": {"mimeType": p.media_type or _mime_for(p.url, p.kind), "fileUri": p.url}})
            else:
                out.append({"inlineData": {"mimeType": p.media_type, "data": p.data}})
        elif isinstance(p, ToolCallPart):
            out.append({"functionCall": {"name": gemini_name(p.name, names), "args": p.input}})
        elif isinstance(p, ToolResultPart):
            if not p.name:
                raise invalid(f"tool result '{p.tool_call_id}' has no matching tool call; "
                              "gemini needs the function name", param="messages")
            # Gemini reads an "error" key as the function's failure (Anthropic's is_error).
            response = {"error": p.text} if p.is_error else {"content": p.text}
            out.append({"functionResponse": {"name": gemini_name(p.name, names), "response": response}})
            out.extend(_parts([c for c in p.content if isinstance(c, MediaPart)]))
        elif isinstance(p, tuple):
            raise invalid(f"content of type '{p[1]}' cannot be sent to a gemini target", param="messages")
    return out


def encode(req: CanonicalRequest) -> dict:
    if req.n is not None and req.n > 1:
        raise invalid("n > 1 is not supported by the gemini target", param="n")
    body: dict[str, Any] = {}
    system = [t for t in req.system if t]
    if system:
        body["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    contents = []
    for m in req.messages:
        parts = _parts(m.parts, req.tool_names)
        if not parts:
            continue
        role = "model" if m.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        # A system-only request (valid for OpenAI): Gemini needs at least one turn.
        contents.append({"role": "user", "parts": [{"text": "."}]})
    body["contents"] = contents
    gc: dict[str, Any] = {}
    put_settings(gc, req, {"max_tokens": "maxOutputTokens", "temperature": "temperature", "top_p": "topP",
                           "top_k": "topK"}, temperature_max=2)
    if req.stop:
        gc["stopSequences"] = req.stop[:5]
    put_settings(gc, req, {"seed": "seed", "presence_penalty": "presencePenalty",
                           "frequency_penalty": "frequencyPenalty"})
    rf = req.response_format or {}
    if rf.get("type") in ("json_object", "json_schema"):
        gc["responseMimeType"] = "application/json"
        schema = (rf.get("json_schema") or {}).get("schema") if rf["type"] == "json_schema" else None
        if isinstance(schema, dict):
            gc["responseSchema"] = clean_schema(schema)
    thinking = _thinking_config(req)
    if thinking:
        gc["thinkingConfig"] = thinking
    if gc:
        body["generationConfig"] = gc
    if req.tools:
        decls = []
        for t in req.tools:
            d: dict[str, Any] = {"name": gemini_name(t.name, req.tool_names)}
            if t.description:
                d["description"] = t.description
            if isinstance(t.parameters, dict) and t.parameters.get("properties"):
                d["parameters"] = clean_schema(t.parameters)
            decls.append(d)
        body["tools"] = [{"functionDeclarations": decls}]
        tc = req.tool_choice
        if tc is not None:
            fcc: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[tc.mode]}
            if tc.mode == "tool":
                fcc["allowedFunctionNames"] = [gemini_name(tc.name or "", req.tool_names)]
            body["toolConfig"] = {"functionCallingConfig": fcc}
    return body


def _thinking_config(req: CanonicalRequest) -> dict[str, Any]:
    """The caller's reasoning as `thinkingConfig`: the budget of the effort table (0: off, -1: dynamic, a caller's
    budget as is) and `includeThoughts` when the caller will see the reasoning (an Anthropic caller that asked for
    thinking, or a gateway that exposes reasoning_content). Nothing asked: Gemini's default."""
    budget = req.reasoning.tokens if req.reasoning is not None else None
    out: dict[str, Any] = {}
    if budget is not None:
        out["thinkingBudget"] = budget
    if budget != 0 and ((req.reasoning is not None and req.reasoning.include) or req.expose_reasoning):
        out["includeThoughts"] = True
    return out


_USAGE_KEYS = ("promptTokenCount", "candidatesTokenCount", "cachedContentTokenCount", "thoughtsTokenCount")


def usage_from(u: Any) -> Usage | None:
    """`usageMetadata` → canonical; None when there is none, it has no token count, or a count is malformed."""
    counts = token_counts(u, _USAGE_KEYS) if isinstance(u, dict) else None
    if counts is None or counts == [None, None, None, None]:
        return None
    prompt, candidates, cached, thoughts = counts
    return Usage(prompt_tokens=prompt or 0, completion_tokens=(candidates or 0) + (thoughts or 0),
                 cache_read=cached or 0, reasoning=thoughts)


def reported_model(obj: Any) -> str | None:
    """The model a response (or the last of a non-SSE stream array) names: `modelVersion`."""
    if isinstance(obj, list):
        obj = obj[-1] if obj else None
    m = obj.get("modelVersion") if isinstance(obj, dict) else None
    return m if isinstance(m, str) and m else None


def _finish(reason: str | None, has_calls: bool) -> str:
    out = FINISH_IN.get(reason or "STOP", "stop")
    return "tool_calls" if has_calls and out == "stop" else out


def parse_response(obj: Any, new_id: IdFactory, names: dict | None = None,
                   single_call: bool = False) -> CanonicalResponse:
    """`single_call`: the client disabled parallel tool calls, which Gemini cannot be told; only the first
    function call of the answer is kept."""
    names = names or {}
    if isinstance(obj, list):  # the non-SSE stream endpoint answers with an array of responses
        obj = obj[-1] if obj else {}
    if not isinstance(obj, dict):
        raise GatewayError(502, "api_error", "upstream returned a malformed gemini response")
    if isinstance(obj.get("error"), dict):
        raise parse_error_body(int(obj["error"].get("code") or 502), obj)
    parts_in, reason, answered = _first_candidate(obj)
    if not answered:
        raise GatewayError(502, "api_error", "upstream returned a gemini response without candidates")
    parts: list = []
    for p in parts_in:
        if p.get("thought"):
            if isinstance(p.get("text"), str):
                if parts and isinstance(parts[-1], ThinkingPart):
                    parts[-1].text += p["text"]
                else:
                    parts.append(ThinkingPart(p["text"]))
        elif isinstance(p.get("text"), str):
            if parts and isinstance(parts[-1], TextPart):
                parts[-1] = TextPart(parts[-1].text + p["text"])
            else:
                parts.append(TextPart(p["text"]))
        elif isinstance(p.get("functionCall"), dict):
            if single_call and any(isinstance(q, ToolCallPart) for q in parts):
                continue
            call_id, name, args = _function_call(p["functionCall"], names, new_id)
            parts.append(ToolCallPart(call_id, name, arguments_obj=args))
    has_calls = any(isinstance(p, ToolCallPart) for p in parts)
    return CanonicalResponse(id=str(obj.get("responseId") or new_id("chatcmpl")),
                             model=str(obj.get("modelVersion") or ""), parts=parts,
                             finish=_finish(reason, has_calls), usage=usage_from(obj.get("usageMetadata")))


def _first_candidate(obj: dict) -> tuple[list[dict], str | None, bool]:
    """The first candidate's parts (thoughts, `thought: true`, included) and finish reason, shared by the JSON and
    stream readers; a blocked prompt finishes as SAFETY. The flag is False when the answer holds nothing at all."""
    cands = obj.get("candidates") or []
    if cands and isinstance(cands[0], dict):
        c = cands[0]
        raw = (c.get("content") or {}).get("parts") or []
        parts = [p for p in raw if isinstance(p, dict)]
        return parts, c.get("finishReason"), True
    if (obj.get("promptFeedback") or {}).get("blockReason"):
        return [], "SAFETY", True
    return [], None, bool(cands)


def _function_call(fc: dict, names: dict, new_id: IdFactory) -> tuple[str, str, dict]:
    """(id, the client's tool name, arguments) of a Gemini functionCall; Gemini gives no id, so one is made."""
    args = fc.get("args")
    name = str(fc.get("name") or "")
    return fc.get("id") or new_id("call"), names.get(name, name), args if isinstance(args, dict) else {}


class GeminiSource(Source):
    """Each SSE data line is a whole GenerateContentResponse with only the new parts (§3.1).
    Function calls arrive whole: tool_start + one tool_args with the serialised arguments."""

    def __init__(self, sink: Sink, new_id: IdFactory, model: str | None, names: dict | None = None,
                 single_call: bool = False) -> None:
        super().__init__(sink)
        self._names = names or {}
        self._single_call = single_call
        self._new_id = new_id
        self._model = model or ""
        self._started = False
        self._tools = 0

    def on_event(self, ev: SSEEvent) -> None:
        obj = self.event_json(ev.data)
        if obj is INVALID:
            return
        for item in obj if isinstance(obj, list) else (obj,):
            if self.sink.closed:
                return
            self._chunk(item)

    def _chunk(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("error"), dict):
            err = parse_error_body(int(obj["error"].get("code") or 500), obj)
            self.fail(err)
            return
        sink = self.sink
        if self.reported_model is None:
            self.reported_model = reported_model(obj)
        if not self._started:
            self._started = True
            sink.start(str(obj.get("responseId") or self._new_id("chatcmpl")),
                       str(obj.get("modelVersion") or self._model))
        if "usageMetadata" in obj:
            u = usage_from(obj["usageMetadata"])  # cumulative: the last one wins
            if u is not None:
                self.reported_usage = u
        parts_in, reason, _ = _first_candidate(obj)
        for p in parts_in:
            if p.get("thought"):
                if isinstance(p.get("text"), str):
                    sink.thinking(p["text"])
            elif isinstance(p.get("text"), str):
                sink.text(p["text"])
            elif isinstance(p.get("functionCall"), dict):
                if self._single_call and self._tools:
                    continue  # parallel calls were disabled by the client (see parse_response)
                call_id, name, args = _function_call(p["functionCall"], self._names, self._new_id)
                sink.tool_start(self._tools, call_id, name)
                sink.tool_args(self._tools, json.dumps(args, ensure_ascii=False, separators=(",", ":")))
                self._tools += 1
        if reason:
            if self.reported_usage is not None:
                sink.usage(self.reported_usage)
            sink.finish(_finish(reason, self._tools > 0))
            self.done = True
            sink.end()


class GeminiBackend(Backend):
    name = "gemini"
    origin = ("https", "generativelanguage.googleapis.com", 443)
    key_header, key_prefix = "x-goog-api-key", ""

    def path(self, req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        path = target.path or "/v1beta/models/{model}:generateContent"
        if req.stream and ":generateContent" in path:
            path = path.replace(":generateContent", ":streamGenerateContent")
        if req.stream and ":streamGenerateContent" in path and "alt=sse" not in path:
            path = add_query(path, "alt=sse")
        return fill_model(path, model, self.name)

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        return encode(req)  # the model is in the path

    def parse_response(self, obj: Any, req: CanonicalRequest, new_id: IdFactory) -> CanonicalResponse:
        resp = parse_response(obj, new_id, req.tool_names, single_call=req.parallel_tool_calls is False)
        if req.model and not resp.model:
            resp.model = req.model
        return resp

    def stream_source(self, sink: Sink, req: CanonicalRequest, new_id: IdFactory) -> Source:
        return GeminiSource(sink, new_id, req.model, req.tool_names, single_call=req.parallel_tool_calls is False)

    def usage_of(self, obj: Any) -> Usage | None:
        if isinstance(obj, list):  # the non-SSE stream endpoint: the last response carries the totals
            obj = obj[-1] if obj else None
        return usage_from(obj.get("usageMetadata")) if isinstance(obj, dict) else None

    def model_of(self, obj: Any) -> str | None:
        return reported_model(obj)
