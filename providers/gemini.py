"""Google Gemini (generateContent / streamGenerateContent?alt=sse): request encoding, response
parsing and the stream source. Gemini is never an ingress format, so there is no sink here."""
from __future__ import annotations

import json
from typing import Any

from .canonical import (
    CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, RefusalPart, TextPart, ToolCallPart,
    ToolResultPart, Usage,
)
from .errors import GatewayError, invalid, parse_error_body
from .sse import SSEEvent
from .streaming import Sink, Source

_FILTERED = ("SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY")
FINISH_IN = {"STOP": "stop", "MAX_TOKENS": "length", **{k: "content_filter" for k in _FILTERED}}

# Gemini's Schema is an OpenAPI subset and rejects unknown keywords ($schema, additionalProperties,
# strict, $defs...), so JSON schemas are filtered to what it documents.
_SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
))


def clean_schema(schema: Any) -> Any:
    if isinstance(schema, list):
        return [clean_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: clean_schema(s) for name, s in v.items()}
        elif k in ("items", "anyOf"):
            out[k] = clean_schema(v)
        elif k == "type" and isinstance(v, list):  # ["string","null"] → nullable string
            types = [t for t in v if t != "null"]
            out[k] = types[0] if types else "string"
            if "null" in v:
                out["nullable"] = True
        else:
            out[k] = v
    return out


# A fixed table instead of the mimetypes module, which reads the system's mime.types files (I/O).
_EXT_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
             "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
             "txt": "text/plain", "mp3": "audio/mpeg", "wav": "audio/wav", "mp4": "video/mp4"}


def _mime_for(url: str, kind: str) -> str:
    name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXT_MIME.get(ext) or ("image/jpeg" if kind == "image" else "application/pdf")


def _parts(parts: list) -> list[dict]:
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
            out.append({"functionCall": {"name": p.name, "args": p.input}})
        elif isinstance(p, ToolResultPart):
            if not p.name:
                raise invalid(f"tool result '{p.tool_call_id}' has no matching tool call; "
                              "gemini needs the function name", param="messages")
            out.append({"functionResponse": {"name": p.name, "response": {"content": p.text}}})
            out.extend(_parts([c for c in p.content if isinstance(c, MediaPart)]))
        elif isinstance(p, tuple):
            raise invalid(f"content of type '{p[1]}' cannot be sent to a gemini target", param="messages")
    return out


def build_body(req: CanonicalRequest) -> dict:
    if req.n is not None and req.n > 1:
        raise invalid("n > 1 is not supported by the gemini target", param="n")
    body: dict[str, Any] = {}
    system = [t for t in req.system if t]
    if system:
        body["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    contents = []
    for m in req.messages:
        parts = _parts(m.parts)
        if not parts:
            continue
        role = "model" if m.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body["contents"] = contents
    gc: dict[str, Any] = {}
    if req.max_tokens is not None:
        gc["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        gc["temperature"] = min(max(req.temperature, 0), 2)
    if req.top_p is not None:
        gc["topP"] = req.top_p
    if req.top_k is not None:
        gc["topK"] = req.top_k
    if req.stop:
        gc["stopSequences"] = req.stop[:5]
    if req.seed is not None:
        gc["seed"] = req.seed
    if req.presence_penalty is not None:
        gc["presencePenalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        gc["frequencyPenalty"] = req.frequency_penalty
    rf = req.response_format or {}
    if rf.get("type") in ("json_object", "json_schema"):
        gc["responseMimeType"] = "application/json"
        schema = (rf.get("json_schema") or {}).get("schema") if rf["type"] == "json_schema" else None
        if isinstance(schema, dict):
            gc["responseSchema"] = clean_schema(schema)
    if gc:
        body["generationConfig"] = gc
    if req.tools:
        decls = []
        for t in req.tools:
            d: dict[str, Any] = {"name": t.name}
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
                fcc["allowedFunctionNames"] = [tc.name]
            body["toolConfig"] = {"functionCallingConfig": fcc}
    return body


def usage_from(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    thoughts = int(u.get("thoughtsTokenCount") or 0)
    return Usage(prompt_tokens=int(u.get("promptTokenCount") or 0),
                 completion_tokens=int(u.get("candidatesTokenCount") or 0) + thoughts,
                 cache_read=int(u.get("cachedContentTokenCount") or 0),
                 reasoning=thoughts if "thoughtsTokenCount" in u else None)


def _finish(reason: str | None, has_calls: bool) -> str:
    out = FINISH_IN.get(reason or "STOP", "stop")
    return "tool_calls" if has_calls and out == "stop" else out


def parse_response(obj: Any, new_id: IdFactory) -> CanonicalResponse:
    if isinstance(obj, list):  # the non-SSE stream endpoint answers with an array of responses
        obj = obj[-1] if obj else {}
    if not isinstance(obj, dict):
        raise GatewayError(502, "api_error", "upstream returned a malformed gemini response")
    if isinstance(obj.get("error"), dict):
        raise parse_error_body(int(obj["error"].get("code") or 502), obj)
    cands = obj.get("candidates") or []
    parts: list = []
    reason = None
    if cands and isinstance(cands[0], dict):
        c = cands[0]
        for p in (c.get("content") or {}).get("parts") or []:
            if not isinstance(p, dict) or p.get("thought"):
                continue
            if isinstance(p.get("text"), str):
                if parts and isinstance(parts[-1], TextPart):
                    parts[-1] = TextPart(parts[-1].text + p["text"])
                else:
                    parts.append(TextPart(p["text"]))
            elif isinstance(p.get("functionCall"), dict):
                fc = p["functionCall"]
                args = fc.get("args")
                parts.append(ToolCallPart(fc.get("id") or new_id("call"), str(fc.get("name") or ""),
                                          arguments_obj=args if isinstance(args, dict) else {}))
        reason = c.get("finishReason")
    elif (obj.get("promptFeedback") or {}).get("blockReason"):
        reason = "SAFETY"
    elif not cands:
        raise GatewayError(502, "api_error", "upstream returned a gemini response without candidates")
    has_calls = any(isinstance(p, ToolCallPart) for p in parts)
    return CanonicalResponse(id=str(obj.get("responseId") or new_id("chatcmpl")),
                             model=str(obj.get("modelVersion") or ""), parts=parts,
                             finish=_finish(reason, has_calls), usage=usage_from(obj.get("usageMetadata")))


class GeminiSource(Source):
    """Each SSE data line is a whole GenerateContentResponse with only the new parts (§3.1).
    Function calls arrive whole: tool_start + one tool_args with the serialised arguments."""

    def __init__(self, sink: Sink, new_id: IdFactory, model: str | None) -> None:
        super().__init__(sink)
        self._new_id = new_id
        self._model = model or ""
        self._started = False
        self._tools = 0
        self._usage: Usage | None = None

    def on_event(self, ev: SSEEvent) -> None:
        try:
            obj = json.loads(ev.data)
        except ValueError:
            self.invalid_event()
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
        if not self._started:
            self._started = True
            sink.start(str(obj.get("responseId") or self._new_id("chatcmpl")),
                       str(obj.get("modelVersion") or self._model))
        if isinstance(obj.get("usageMetadata"), dict):
            self._usage = usage_from(obj["usageMetadata"])  # cumulative: the last one wins
        cands = obj.get("candidates") or []
        reason = None
        if cands and isinstance(cands[0], dict):
            c = cands[0]
            for p in (c.get("content") or {}).get("parts") or []:
                if not isinstance(p, dict) or p.get("thought"):
                    continue
                if isinstance(p.get("text"), str):
                    sink.text(p["text"])
                elif isinstance(p.get("functionCall"), dict):
                    fc = p["functionCall"]
                    args = fc.get("args")
                    sink.tool_start(self._tools, fc.get("id") or self._new_id("call"), str(fc.get("name") or ""))
                    sink.tool_args(self._tools, json.dumps(args if isinstance(args, dict) else {},
                                                           ensure_ascii=False, separators=(",", ":")))
                    self._tools += 1
            reason = c.get("finishReason")
        elif (obj.get("promptFeedback") or {}).get("blockReason"):
            reason = "SAFETY"
        if reason:
            if self._usage is not None:
                sink.usage(self._usage)
            sink.finish(_finish(reason, self._tools > 0))
            self.done = True
            sink.end()
