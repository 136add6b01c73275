"""OpenAI Chat Completions, client side: parse a client's request into canonical, render canonical answers
and streams (`chat.completion` / `chat.completion.chunk`) and errors in OpenAI's format."""
from __future__ import annotations

import json
from typing import Any

from .canonical import (
    NUM, REASONING_EFFORTS, REASONING_OFF, CanonicalRequest, CanonicalResponse, Clock, IdFactory, MediaPart,
    Message, Reasoning, RefusalPart, TextPart, ThinkingPart, Tool, ToolCallPart, ToolChoice, ToolResultPart, Usage,
    dumps, fill_tool_result_names, media_kind, merge_messages, split_data_url, want,
)
from .errors import GatewayError, invalid
from .interface import Client
from .openai_wire import FINISH_OUT, error_event, error_obj, usage_obj
from .streaming import Sink

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _text_of(content: Any, where: str, allowed=("text",)) -> list[str]:
    """System/developer/tool content: a string or an array of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in allowed:
            raise invalid(f"'{where}.content[{j}]' must be a text content part", param=where)
        t = part.get("text", part.get("refusal"))
        if not isinstance(t, str):
            raise invalid(f"'{where}.content[{j}].text' must be a string", param=where)
        texts.append(t)
    return texts


def _user_parts(content: Any, where: str) -> list:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param=where)
    parts: list = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid(f"'{where}.content[{j}]' must be an object", param=where)
        ptype = part.get("type")
        if ptype == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"'{where}.content[{j}].text' must be a string", param=where)
            parts.append(TextPart(part["text"]))
        elif ptype == "image_url":
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img if isinstance(img, str) else None
            if not isinstance(url, str):
                raise invalid(f"'{where}.content[{j}].image_url.url' must be a string", param=where)
            parts.append(_media_from_url(url))
        elif ptype == "file" and isinstance(part.get("file"), dict):
            f = part["file"]
            data = f.get("file_data")
            if isinstance(data, str):
                parts.append(_media_from_url(data, default_type="application/pdf"))
            else:
                parts.append(("opaque", "file (file_id)"))
        else:
            # input_audio and future part types: fine for OpenAI targets (served from the raw body),
            # refused with a 400 by encoders of families that cannot carry them.
            parts.append(("opaque", str(ptype)))
    return parts


def _media_from_url(url: str, default_type: str = "image/jpeg") -> MediaPart:
    split = split_data_url(url)
    if split:
        mt, data = split
        return MediaPart(media_kind(mt), mt, data=data)
    if url.startswith(("http://", "https://", "gs://")):
        return MediaPart("image" if default_type.startswith("image/") else "document", None, url=url)
    # Bare base64 (some clients send file_data without the data: prefix).
    return MediaPart(media_kind(default_type), default_type, data=url)


def parse_request(obj: dict) -> CanonicalRequest:
    model = want(obj, "model", (str,), "a string", required=True)
    raw_messages = want(obj, "messages", (list,), "an array", required=True)
    if not raw_messages:
        raise invalid("'messages' must contain at least one message", param="messages")
    req = CanonicalRequest(ingress="openai", model=model, raw=obj)
    req.stream = bool(want(obj, "stream", (bool,), "a boolean"))
    so = want(obj, "stream_options", (dict,), "an object")
    req.include_usage = bool(so and so.get("include_usage"))

    # TrustGate's guide sends Anthropic-style top-level `system` with OpenAI messages.
    top_system = obj.get("system")
    if top_system is not None:
        if isinstance(top_system, str):
            req.system.append(top_system)
        elif isinstance(top_system, list):
            req.system.extend(_text_of(top_system, "system"))
        else:
            raise invalid("'system' must be a string or an array of text blocks", param="system")

    legacy_ids: dict[str, str] = {}
    messages: list[Message] = []
    for i, m in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{where}' must be an object", param="messages")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(f"'{where}.role' must be one of {', '.join(_ROLES)}", param="messages")
        content = m.get("content")
        if role in ("system", "developer"):
            req.system.extend(_text_of(content, where))
        elif role == "user":
            if content is None:
                raise invalid(f"'{where}.content' is required for user messages", param="messages")
            messages.append(Message("user", _user_parts(content, where), isinstance(content, str)))
        elif role == "assistant":
            parts: list = [TextPart(t) for t in _text_of(content, where, ("text", "refusal")) if t]
            if isinstance(m.get("refusal"), str) and m["refusal"]:
                parts.append(RefusalPart(m["refusal"]))
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise invalid(f"'{where}.tool_calls' must be an array", param="messages")
                for k, tc in enumerate(calls):
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
                        raise invalid(f"'{where}.tool_calls[{k}]' needs an id and function.name", param="messages")
                    args = fn.get("arguments")
                    parts.append(ToolCallPart(tc["id"], fn["name"],
                                              arguments_json=args if isinstance(args, str) else None,
                                              arguments_obj=args if isinstance(args, dict) else None))
            fc = m.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("name"), str):
                fid = f"call_fn{len(legacy_ids)}"
                legacy_ids[fc["name"]] = fid
                args = fc.get("arguments")
                parts.append(ToolCallPart(fid, fc["name"], arguments_json=args if isinstance(args, str) else None))
            messages.append(Message("assistant", parts, isinstance(content, str)))
        elif role == "tool":
            tcid = m.get("tool_call_id")
            if not isinstance(tcid, str):
                raise invalid(f"'{where}.tool_call_id' must be a string", param="messages")
            texts = _text_of(content, where)
            messages.append(Message("user", [ToolResultPart(tcid, [TextPart("\n".join(texts))],
                                                            text_form=True)]))
        else:  # legacy "function" role answers the last function_call of that name
            name = m.get("name")
            if not isinstance(name, str):
                raise invalid(f"'{where}.name' must be a string", param="messages")
            texts = _text_of(content, where)
            messages.append(Message("user", [ToolResultPart(legacy_ids.get(name, f"call_{name}"),
                                                            [TextPart("\n".join(texts))], name=name)]))
    req.messages = merge_messages(messages)
    fill_tool_result_names(req.messages)

    mct = want(obj, "max_completion_tokens", (int,), "an integer")
    req.max_tokens = mct if mct is not None else want(obj, "max_tokens", (int,), "an integer")
    req.temperature = want(obj, "temperature", NUM, "a number")
    req.top_p = want(obj, "top_p", NUM, "a number")
    req.top_k = want(obj, "top_k", (int,), "an integer")
    stop = obj.get("stop")
    if isinstance(stop, str):
        req.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = list(stop)
    elif stop is not None:
        raise invalid("'stop' must be a string or an array of strings", param="stop")
    req.n = want(obj, "n", (int,), "an integer")
    req.seed = want(obj, "seed", (int,), "an integer")
    req.presence_penalty = want(obj, "presence_penalty", NUM, "a number")
    req.frequency_penalty = want(obj, "frequency_penalty", NUM, "a number")
    req.user = want(obj, "user", (str,), "a string")
    req.response_format = want(obj, "response_format", (dict,), "an object")
    req.parallel_tool_calls = want(obj, "parallel_tool_calls", (bool,), "a boolean")
    req.reasoning = _reasoning(obj)

    tools = want(obj, "tools", (list,), "an array")
    for k, t in enumerate(tools or []):
        if not isinstance(t, dict):
            raise invalid(f"'tools[{k}]' must be an object", param="tools")
        if t.get("type", "function") != "function":
            continue  # custom tools only exist on OpenAI itself, which is served from the raw body
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'tools[{k}].function.name' must be a string", param="tools")
        req.tools.append(Tool(fn["name"], fn.get("description"), fn.get("parameters")))
    functions = want(obj, "functions", (list,), "an array")
    for k, fn in enumerate(functions or []):
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'functions[{k}].name' must be a string", param="functions")
        req.tools.append(Tool(fn["name"], fn.get("description"), fn.get("parameters")))
        req.legacy_functions = True

    tc = obj.get("tool_choice", obj.get("function_call"))
    if isinstance(tc, str):
        if tc not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be 'auto', 'none', 'required' or a function choice", param="tool_choice")
        req.tool_choice = ToolChoice(tc)
    elif isinstance(tc, dict):
        name = (tc.get("function") or {}).get("name") if isinstance(tc.get("function"), dict) else tc.get("name")
        if isinstance(name, str):
            req.tool_choice = ToolChoice("tool", name)
        elif tc.get("type") == "allowed_tools":
            req.tool_choice = ToolChoice("required" if (tc.get("allowed_tools") or {}).get("mode") == "required" else "auto")
        else:
            raise invalid("'tool_choice.function.name' must be a string", param="tool_choice")
    elif tc is not None:
        raise invalid("'tool_choice' must be a string or an object", param="tool_choice")
    return req


_EFFORTS = (REASONING_OFF, *REASONING_EFFORTS)


def _reasoning(obj: dict) -> Reasoning | None:
    """`reasoning_effort` → Reasoning; a value outside OpenAI's enum is refused as OpenAI does."""
    effort = obj.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        shown = f"'{effort}'" if isinstance(effort, str) else json.dumps(effort)
        raise invalid(f"Invalid value: {shown}. Supported values are: "
                      + ", ".join(f"'{e}'" for e in _EFFORTS) + ".", param="reasoning_effort")
    return Reasoning(effort=effort)


def thinking_text(parts: list) -> str:
    """The visible reasoning of an answer's parts, joined (redacted blocks have none)."""
    return "".join(p.text for p in parts if isinstance(p, ThinkingPart))


# =============================================================== responses
def render_response(resp: CanonicalResponse, req: CanonicalRequest, created: int) -> dict:
    text = "".join(p.text for p in resp.parts if isinstance(p, TextPart))
    refusal = "".join(p.text for p in resp.parts if isinstance(p, RefusalPart))
    calls = [p for p in resp.parts if isinstance(p, ToolCallPart)]
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not (calls or refusal) else None}
    if refusal:
        msg["refusal"] = refusal
    reasoning = thinking_text(resp.parts) if req.expose_reasoning else ""
    if reasoning:
        msg["reasoning_content"] = reasoning
    finish = FINISH_OUT.get(resp.finish, "stop")
    if calls:
        if req.legacy_functions:
            msg["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
            finish = "function_call" if finish == "tool_calls" else finish
        else:
            msg["tool_calls"] = [{"id": p.id, "type": "function",
                                  "function": {"name": p.name, "arguments": p.arguments}} for p in calls]
    out: dict[str, Any] = {"id": resp.id, "object": "chat.completion", "created": created, "model": resp.model,
                           "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}]}
    if resp.usage is not None:
        out["usage"] = usage_obj(resp.usage)
    return out


# =============================================================== stream sink
class OpenAISink(Sink):
    """Canonical stream calls → `chat.completion.chunk` events (§1.5, pitfalls §4.7)."""

    error_event = staticmethod(error_event)

    def __init__(self, req: CanonicalRequest, created: int, new_id: IdFactory) -> None:
        super().__init__()
        self._include_usage = req.include_usage
        self._legacy = req.legacy_functions
        self._expose_reasoning = req.expose_reasoning
        self._created = created
        self._new_id = new_id
        self._head = b""
        self._usage: Usage | None = None
        self._started = False
        self._finished = False
        self._done_sent = False

    def start(self, id: str, model: str) -> None:
        if self._started:
            return
        self._started = True
        if not id.startswith(("chatcmpl", "msg_")):
            id = "chatcmpl-" + id  # Gemini responseIds etc.: keep the recognisable OpenAI prefix
        self._id, self._model = id, model
        # Everything before the delta is constant for the stream: render it once.
        self._head = (b'{"id":' + dumps(id) + b',"object":"chat.completion.chunk","created":'
                      + str(self._created).encode() + b',"model":' + dumps(model)
                      + b',"choices":[{"index":0,"delta":')
        self._delta({"role": "assistant", "content": ""})

    def _delta(self, delta: dict, finish: str | None = None) -> None:
        if self.closed:
            return
        tail = b',"logprobs":null,"finish_reason":null}]}' if finish is None else (
            b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]}')
        self.out.append(b"data: " + self._head + dumps(delta) + tail + b"\n\n")

    def _ensure_started(self) -> None:
        if not self._started:
            self.start(self._new_id("chatcmpl"), "")

    def _content(self, delta: dict) -> None:
        """A delta with content: the stream is committed from here on."""
        self._ensure_started()
        self.committed = True
        self._delta(delta)

    def text(self, s: str) -> None:
        if s:
            self._content({"content": s})

    def refusal(self, s: str) -> None:
        if s:
            self._content({"refusal": s})

    def thinking(self, s: str) -> None:
        # Reasoning is shown (when the gateway exposes it) but is not content: it does not commit the stream.
        if s and self._expose_reasoning:
            self._ensure_started()
            self._delta({"reasoning_content": s})

    def tool_start(self, index: int, id: str, name: str) -> None:
        if self._legacy:
            self._content({"function_call": {"name": name, "arguments": ""}})
        else:
            self._content({"tool_calls": [{"index": index, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": ""}}]})

    def tool_args(self, index: int, fragment: str) -> None:
        if fragment:
            if self._legacy:
                self._content({"function_call": {"arguments": fragment}})
            else:
                self._content({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def usage(self, u: Usage) -> None:
        self._usage = u

    def finish(self, reason: str, stop_sequence: str | None = None) -> None:
        if self._finished:
            return
        self._ensure_started()
        self._finished = True
        fr = FINISH_OUT.get(reason, "stop")
        if self._legacy and fr == "tool_calls":
            fr = "function_call"
        self._delta({}, fr)

    def end(self) -> None:
        if self.closed:
            return
        if not self._finished:
            self.finish("stop")
        if self._include_usage:
            u = self._usage or Usage()
            self.out.append(b"data: " + self._head[:self._head.index(b'"choices":')] + b'"choices":[],"usage":'
                            + dumps(usage_obj(u)) + b"}\n\n")
        self.trailer()
        self.closed = True

    def trailer(self) -> None:
        if not self._done_sent:
            self._done_sent = True
            self.out.append(b"data: [DONE]\n\n")

    def error(self, err: GatewayError) -> None:
        if not self.closed:
            self._done_sent = True  # never follow an error with [DONE]
        super().error(err)


class OpenAIClient(Client):
    """Clients of the OpenAI Chat Completions API (`POST …/chat/completions`)."""

    name = "openai"
    path_suffix = "/chat/completions"

    def parse_request(self, obj: dict) -> CanonicalRequest:
        return parse_request(obj)

    def render_response(self, resp: CanonicalResponse, req: CanonicalRequest, now: Clock,
                        new_id: IdFactory) -> dict:
        created = int(now())
        if not resp.id.startswith(("chatcmpl", "msg_")):
            resp.id = "chatcmpl-" + resp.id
        return render_response(resp, req, created)

    def stream_sink(self, req: CanonicalRequest, now: Clock, new_id: IdFactory) -> Sink:
        return OpenAISink(req, int(now()), new_id)

    def error_body(self, err: GatewayError) -> bytes:
        return json.dumps({"error": error_obj(err)}, ensure_ascii=False, separators=(",", ":")).encode()
