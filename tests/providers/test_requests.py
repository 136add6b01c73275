"""Request translation: protocols.md TV-1, TV-2, TV-3, TV-9, TV-12 and the §4 mapping rules."""
import json

import pytest

import providers as P
from providers import GatewayError, TargetSpec


def up(ingress, body, provider, **target):
    req = P.parse_request(ingress, json.dumps(body).encode())
    u = P.build_upstream_request(req, TargetSpec(provider, target.pop("model", None), **target))
    return u, json.loads(u.body)


# ------------------------------------------------------------------ TV-1
TV1_IN = {"model": "m", "messages": [
    {"role": "system", "content": "You are terse."}, {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": "Hi"}, {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
    "max_completion_tokens": 100, "temperature": 1.5, "top_p": 0.9, "stop": "END", "user": "u-123", "n": 1,
    "seed": 7, "presence_penalty": 0.1}


def test_tv1_system_hoist_merge_params():
    _, body = up("openai", TV1_IN, "anthropic")
    assert body == {"model": "m", "max_tokens": 100,
                    "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                              {"type": "text", "text": "What is 2+2?"}]}],
                    "temperature": 1, "top_p": 0.9, "stop_sequences": ["END"], "metadata": {"user_id": "u-123"}}


def test_tv1_variants_n2_and_default_max_tokens():
    with pytest.raises(GatewayError) as e:
        up("openai", {**TV1_IN, "n": 2}, "anthropic")
    assert e.value.status == 400 and e.value.param == "n"
    body = dict(TV1_IN)
    del body["max_completion_tokens"]
    assert up("openai", body, "anthropic")[1]["max_tokens"] == 4096
    assert up("openai", body, "anthropic", max_tokens_default=999)[1]["max_tokens"] == 999
    body["max_tokens"] = 55
    assert up("openai", body, "anthropic")[1]["max_tokens"] == 55


# ------------------------------------------------------------------ TV-2
TV2_IN = {"model": "m", "max_tokens": 50, "tool_choice": "required", "parallel_tool_calls": False,
          "tools": [{"type": "function", "function": {
              "name": "get_weather", "description": "Get weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
              "strict": True}}],
          "messages": [{"role": "user", "content": "Weather in Paris and Rome?"},
                       {"role": "assistant", "content": None, "tool_calls": [
                           {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                           {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
                       {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                       {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
                       {"role": "user", "content": "Which is warmer?"}]}
TV2_OUT = {"model": "m", "max_tokens": 50,
           "tools": [{"name": "get_weather", "description": "Get weather",
                      "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
           "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
           "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
                        {"role": "assistant", "content": [
                            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
                                                     {"type": "text", "text": "Which is warmer?"}]}]}


def test_tv2_tool_round_trip():
    assert up("openai", TV2_IN, "anthropic")[1] == TV2_OUT


@pytest.mark.parametrize("choice,expected", [
    ("none", {"type": "none"}), ("auto", {"type": "auto"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"})])
def test_tv2_tool_choice_variants(choice, expected):
    body = {**TV2_IN, "tool_choice": choice}
    del body["parallel_tool_calls"]
    assert up("openai", body, "anthropic")[1]["tool_choice"] == expected


def test_tv2_empty_and_invalid_arguments_become_empty_object():
    body = json.loads(json.dumps(TV2_IN))
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = ""
    body["messages"][1]["tool_calls"][1]["function"]["arguments"] = "{not json"
    msgs = up("openai", body, "anthropic")[1]["messages"]
    assert [b["input"] for b in msgs[1]["content"]] == [{}, {}]


def test_tool_result_first_even_when_text_precedes_it():
    body = {"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c.1/x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "note first"}, {"role": "tool", "tool_call_id": "c.1/x", "content": "r"}]}
    msgs = up("openai", body, "anthropic")[1]["messages"]
    assert msgs[2]["content"][0] == {"type": "tool_result", "tool_use_id": "c_1_x", "content": "r"}
    assert msgs[2]["content"][1] == {"type": "text", "text": "note first"}
    # ids crossing into Anthropic are rewritten consistently in tool_use and tool_result
    assert msgs[1]["content"][0]["id"] == "c_1_x"


# ------------------------------------------------------------------ TV-3
def test_tv3_images_and_pdf():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERi0="}}]}]}
    content = up("openai", body, "anthropic")[1]["messages"][0]["content"]
    assert content == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]


def test_unsupported_part_refused_for_foreign_target_but_passed_to_openai():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}]}
    with pytest.raises(GatewayError) as e:
        up("openai", body, "anthropic")
    assert e.value.status == 400 and "input_audio" in e.value.message
    assert up("openai", body, "openai")[1]["messages"] == body["messages"]


# ------------------------------------------------------------------ more OpenAI → Anthropic rules
def test_dropped_fields_and_whitespace_stops_and_temperature_clamp():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["\n", " ", "###"],
            "temperature": -1, "logprobs": True, "logit_bias": {"1": 2}, "metadata": {"a": "b"}, "store": True,
            "response_format": {"type": "text"}, "frequency_penalty": 1, "service_tier": "auto",
            "stream_options": {"include_usage": True}}
    out = up("openai", body, "anthropic")[1]
    assert out == {"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                   "stop_sequences": ["###"], "temperature": 0}


def test_json_mode_emulated_with_system_instruction_for_anthropic():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = up("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}},
             "anthropic")[1]
    assert "JSON schema" in out["system"][-1]["text"] and '"a"' in out["system"][-1]["text"]
    assert "response_format" not in out


def test_trustgate_mixed_body_on_openai_ingress():
    body = {"model": "m", "system": "Be kind.", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    out = up("openai", body, "anthropic")[1]
    assert out["system"] == [{"type": "text", "text": "Be kind."}] and out["max_tokens"] == 10
    out = up("openai", body, "openai")[1]
    assert "system" not in out and out["messages"][0] == {"role": "system", "content": "Be kind."}
    out = up("openai", {**body, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]}, "gemini")[1]
    assert out["systemInstruction"] == {"parts": [{"text": "A"}, {"text": "B"}]}


def test_legacy_functions_to_anthropic():
    body = {"model": "m", "functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
            "function_call": {"name": "f"},
            "messages": [{"role": "user", "content": "go"},
                         {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{\"a\":1}"}},
                         {"role": "function", "name": "f", "content": "done"}]}
    out = up("openai", body, "anthropic")[1]
    assert out["tool_choice"] == {"type": "tool", "name": "f"}
    call = out["messages"][1]["content"][0]
    assert call["type"] == "tool_use" and call["input"] == {"a": 1}
    assert out["messages"][2]["content"][0]["tool_use_id"] == call["id"]


def test_prefill_trailing_whitespace_stripped_and_empty_assistant_skipped():
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
                                       {"role": "user", "content": "b"}, {"role": "assistant", "content": "Sure: "}]}
    msgs = up("openai", body, "anthropic")[1]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[-1]["content"] == [{"type": "text", "text": "Sure:"}]


def test_anthropic_headers_and_version_override():
    u, _ = up("openai", TV1_IN, "anthropic", credentials={"api_key": "sk"})
    assert u.path == "/v1/messages" and u.headers["x-api-key"] == "sk"
    assert u.headers["anthropic-version"] == "2023-06-01" and u.headers["content-type"] == "application/json"
    u, _ = up("openai", TV1_IN, "anthropic", headers={"Anthropic-Version": "2024-01-01", "anthropic-beta": "x"})
    assert "anthropic-version" not in u.headers and u.headers["Anthropic-Version"] == "2024-01-01"
    u, _ = up("openai", TV1_IN, "anthropic", credentials={"header_name": "Authorization", "header_value": "Bearer t"})
    assert u.headers["Authorization"] == "Bearer t" and "x-api-key" not in u.headers
    u, body = up("openai", {**TV1_IN, "stream": True}, "anthropic", model="claude-x", path="/custom/messages")
    assert body["stream"] is True and body["model"] == "claude-x" and u.path == "/custom/messages" and u.stream
    assert u.headers["accept"] == "text/event-stream" and u.headers["accept-encoding"] == "identity"


# ------------------------------------------------------------------ TV-9
TV9_IN = {"model": "m", "max_tokens": 256, "system": "Be brief.", "stop_sequences": ["###"], "temperature": 0.2, "top_k": 5,
          "metadata": {"user_id": "u1"}, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
          "tools": [{"name": "calc", "description": "math", "input_schema": {"type": "object", "properties": {"e": {"type": "string"}}}}],
          "messages": [{"role": "user", "content": "2*3?"},
                       {"role": "assistant", "content": [{"type": "text", "text": "Let me compute."},
                                                         {"type": "tool_use", "id": "toolu_9", "name": "calc", "input": {"e": "2*3"}}]},
                       {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": [{"type": "text", "text": "6"}]},
                                                    {"type": "text", "text": "Thanks"}]}]}
TV9_OUT = {"model": "m", "max_tokens": 256, "stop": ["###"], "temperature": 0.2, "user": "u1", "tool_choice": "auto",
           "parallel_tool_calls": False,
           "tools": [{"type": "function", "function": {"name": "calc", "description": "math",
                                                       "parameters": {"type": "object", "properties": {"e": {"type": "string"}}}}}],
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2*3?"},
                        {"role": "assistant", "content": "Let me compute.",
                         "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "calc", "arguments": "{\"e\": \"2*3\"}"}}]},
                        {"role": "tool", "tool_call_id": "toolu_9", "content": "6"},
                        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}]}


def test_tv9_anthropic_to_openai_compatible():
    u, body = up("anthropic", TV9_IN, "openai-compatible", credentials={"api_key": "k"})
    assert body == TV9_OUT
    assert u.headers["authorization"] == "Bearer k" and u.path == "/v1/chat/completions"


def test_tv9_openai_uses_max_completion_tokens_and_stream_asks_usage():
    _, body = up("anthropic", {**TV9_IN, "stream": True}, "openai")
    assert body["max_completion_tokens"] == 256 and "max_tokens" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_anthropic_images_to_openai_and_gemini():
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}
    content = up("anthropic", body, "openai")[1]["messages"][0]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                       {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    parts = up("anthropic", body, "gemini")[1]["contents"][0]["parts"]
    assert parts == [{"inlineData": {"mimeType": "image/png", "data": "AAA"}},
                     {"fileData": {"mimeType": "image/png", "fileUri": "https://x/y.png"}}]


def test_anthropic_to_anthropic_keeps_everything_but_model():
    body = {**TV9_IN, "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1024}, "extra_field": 1}
    out = up("anthropic", body, "anthropic", model="claude-real")[1]
    assert out == {**body, "model": "claude-real"}
    nomax = dict(TV9_IN)
    del nomax["max_tokens"]
    assert up("anthropic", nomax, "anthropic", max_tokens_default=77)[1]["max_tokens"] == 77


# ------------------------------------------------------------------ OpenAI → OpenAI family
def test_openai_passthrough_keeps_fields_and_forces_usage_on_streams():
    body = {"model": "gpt", "messages": [{"role": "user", "content": "x", "name": "bob"}], "logprobs": True,
            "stream": True, "max_completion_tokens": 9}
    _, out = up("openai", body, "openai", model="gpt-real")
    assert out == {**body, "model": "gpt-real", "stream_options": {"include_usage": True}}
    _, out = up("openai", {**body, "stream": False, "stream_options": {"include_usage": True}}, "openai")
    assert "stream_options" not in out


def test_openai_compatible_sends_only_widely_accepted_fields():
    body = {"model": "gpt", "messages": [{"role": "user", "content": "x", "name": "bob"}], "logprobs": True,
            "logit_bias": {}, "store": True, "max_completion_tokens": 9, "temperature": 0.5, "stream": True}
    _, out = up("openai", body, "openai-compatible")
    assert out == {"model": "gpt", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9,
                   "temperature": 0.5, "stream": True}


def test_azure_path_header_and_api_version():
    u, _ = up("openai", TV1_IN, "azure", model="dep1", credentials={"api_key": "az"})
    assert u.path == "/openai/deployments/dep1/chat/completions?api-version=2024-10-21"
    assert u.headers["api-key"] == "az" and "authorization" not in u.headers
    u, _ = up("openai", TV1_IN, "azure", model="dep1", api_version="2025-01-01-preview",
              path="/openai/deployments/{model}/chat/completions")
    assert u.path == "/openai/deployments/dep1/chat/completions?api-version=2025-01-01-preview"
    u, _ = up("anthropic", TV9_IN, "azure", model="dep2")
    assert u.path.startswith("/openai/deployments/dep2/")


# ------------------------------------------------------------------ TV-12 (Gemini request)
def test_tv12_gemini_request():
    body = {"model": "gemini-x", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Yo"}], "max_tokens": 10, "stop": ["x"]}
    u, out = up("openai", body, "gemini", credentials={"api_key": "g"})
    assert out == {"systemInstruction": {"parts": [{"text": "S"}]},
                   "contents": [{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Yo"}]}],
                   "generationConfig": {"maxOutputTokens": 10, "stopSequences": ["x"]}}
    assert u.path == "/v1beta/models/gemini-x:generateContent" and u.headers["x-goog-api-key"] == "g"
    u, _ = up("openai", {**body, "stream": True}, "gemini")
    assert u.path == "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    u, _ = up("openai", body, "gemini", path="/v1/models/{model}:generateContent", model="g2")
    assert u.path == "/v1/models/g2:generateContent"


def test_gemini_tools_results_schema_and_json_mode():
    body = {"model": "g", "n": 1, "seed": 3, "temperature": 2.5, "top_p": 0.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
                "type": "object", "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#",
                "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]}}},
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
                "type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": False}}},
                      {"type": "function", "function": {"name": "g"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"z\"}"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "res"}]}
    out = up("openai", body, "gemini")[1]
    assert out["contents"][1] == {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "z"}}}]}
    assert out["contents"][2] == {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"content": "res"}}}]}
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
        {"name": "g"}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}
    gc = out["generationConfig"]
    assert gc["temperature"] == 2 and gc["topP"] == 0.5 and gc["seed"] == 3
    assert gc["responseMimeType"] == "application/json"
    assert gc["responseSchema"] == {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}, "required": ["a"]}
    with pytest.raises(GatewayError):
        up("openai", {**body, "n": 2}, "gemini")


def test_gemini_schema_refs_inlined_and_null_branches_nullable():
    from providers.gemini import clean_schema
    schema = {"$defs": {"Loc": {"type": "object", "additionalProperties": False, "title": "Loc",
                                "properties": {"city": {"type": "string"},
                                               "country": {"anyOf": [{"type": "string"}, {"type": "null"}],
                                                           "title": "Country"}},
                                "required": ["city", "country"]},
                        "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
              "type": "object", "title": "Q",
              "properties": {"where": {"$ref": "#/$defs/Loc", "description": "place"},
                             "also": {"type": "array", "items": {"$ref": "#/$defs/Loc"}},
                             "kind": {"const": "fixed"},
                             "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                             "tree": {"$ref": "#/$defs/Node"},
                             "dangling": {"$ref": "#/$defs/Missing"}},
              "required": ["where"]}
    loc = {"type": "object", "title": "Loc", "properties": {
        "city": {"type": "string"}, "country": {"nullable": True, "type": "string", "title": "Country"}},
        "required": ["city", "country"]}
    out = clean_schema(schema)
    assert out["properties"]["where"] == {**loc, "description": "place"}
    assert out["properties"]["also"] == {"type": "array", "items": loc}
    assert out["properties"]["kind"] == {"enum": ["fixed"]}
    assert out["properties"]["either"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    # a recursive reference cannot be inlined forever: the second level becomes a bare object
    assert out["properties"]["tree"] == {"type": "object", "properties": {"next": {"type": "object"}}}
    assert out["properties"]["dangling"] == {"type": "object"}
    assert "$defs" not in out and out["required"] == ["where"]
    # the same through a request: OpenAI pydantic tool → Gemini declaration
    body = {"model": "g", "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": schema}}]}
    decl = up("openai", body, "gemini")[1]["tools"][0]["functionDeclarations"][0]
    assert decl["parameters"]["properties"]["where"]["properties"]["city"] == {"type": "string"}


def test_gemini_tool_result_without_call_is_a_400():
    body = {"model": "g", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "zz", "content": "r"}]}
    with pytest.raises(GatewayError) as e:
        up("openai", body, "gemini")
    assert e.value.status == 400


# ------------------------------------------------------------------ parse_request validation
@pytest.mark.parametrize("ingress,body,fragment", [
    ("openai", b"{not json", "not valid JSON"),
    ("openai", b"[1]", "JSON object"),
    ("openai", b'{"messages":[]}', "'model' is a required property"),
    ("openai", b'{"model":"m"}', "'messages' is a required property"),
    ("openai", b'{"model":"m","messages":[]}', "at least one message"),
    ("openai", b'{"model":3,"messages":[{"role":"user","content":"x"}]}', "'model' must be a string"),
    ("openai", b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', "messages[0].role"),
    ("openai", b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}', "'stream' must be a boolean"),
    ("openai", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"5"}', "'max_tokens' must be an integer"),
    ("openai", b'{"model":"m","messages":[{"role":"tool","content":"x"}]}', "tool_call_id"),
    ("openai", b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":true}', "'temperature' must be a number"),
    ("anthropic", b'{"model":"m","max_tokens":1}', "'messages' is a required property"),
    ("anthropic", b'{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}', "'user' or 'assistant'"),
    ("anthropic", b'{"model":"m","max_tokens":"1","messages":[]}', "'max_tokens' must be an integer"),
    ("anthropic", b'{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}', "content[0].text"),
])
def test_parse_request_errors(ingress, body, fragment):
    with pytest.raises(GatewayError) as e:
        P.parse_request(ingress, body)
    assert e.value.status == 400 and e.value.kind == "invalid_request"
    assert fragment in e.value.message


def test_parse_request_exposes_model_stream_ingress():
    r = P.parse_request("anthropic", b'{"model":"c","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"x"}]}')
    assert (r.model, r.stream, r.ingress) == ("c", True, "anthropic")
    r = P.parse_request("openai", b'{"model":"g","messages":[{"role":"user","content":"x"}]}')
    assert (r.model, r.stream, r.ingress) == ("g", False, "openai")


def test_ingress_for_path_and_default_origin():
    assert P.ingress_for_path("/v1/chat/completions?x=1") == "openai"
    assert P.ingress_for_path("/openai/deployments/d/chat/completions") == "openai"
    assert P.ingress_for_path("/v1/messages") == "anthropic"
    assert P.ingress_for_path("/v1/models") is None
    assert P.default_origin("openai") == ("https", "api.openai.com", 443)
    assert P.default_origin("anthropic") == ("https", "api.anthropic.com", 443)
    assert P.default_origin("gemini") == ("https", "generativelanguage.googleapis.com", 443)
    with pytest.raises(GatewayError) as e:
        P.default_origin("azure")
    assert e.value.status == 503 and e.value.kind == "unavailable"


def test_providers_package_is_pure():
    import ast
    import pathlib
    banned = {"aiohttp", "httpx", "requests", "flask", "tinydb", "mitmproxy", "socket", "asyncio", "urllib.request"}
    for f in pathlib.Path(P.__file__).parent.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned and n not in banned, f"{f.name} imports {n}"


def test_anthropic_ingress_to_gemini_resolves_function_names():
    _, out = up("anthropic", TV9_IN, "gemini")
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert out["contents"][1] == {"role": "model", "parts": [{"text": "Let me compute."},
                                                             {"functionCall": {"name": "calc", "args": {"e": "2*3"}}}]}
    assert out["contents"][2]["parts"][0] == {"functionResponse": {"name": "calc", "response": {"content": "6"}}}
    assert out["generationConfig"] == {"maxOutputTokens": 256, "temperature": 0.2, "topK": 5, "stopSequences": ["###"]}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_credentials_object_and_header_pair():
    class Creds:  # the store hands over pydantic models, not dicts
        header_name = None
        header_value = None
        api_key = "obj-key"
    req = P.parse_request("openai", json.dumps(TV1_IN).encode())
    u = P.build_upstream_request(req, TargetSpec("gemini", "g", credentials=Creds()))
    assert u.headers["x-goog-api-key"] == "obj-key"
    u = P.build_upstream_request(req, TargetSpec("openai", None, credentials={"header_name": "X-Key", "header_value": "v"},
                                                 headers={"X-Extra": "1"}))
    assert u.headers["X-Key"] == "v" and u.headers["X-Extra"] == "1" and "authorization" not in u.headers
    assert u.method == "POST" and not u.stream and "accept" not in u.headers


def test_anthropic_tool_result_images_and_errors_to_openai():
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]}]}]}
    msgs = up("anthropic", body, "openai")[1]["messages"]
    assert msgs[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]}
    assert msgs[2] == {"role": "tool", "tool_call_id": "t1", "content": "a\nb"}
    # and back into Anthropic the structured content survives
    out = up("anthropic", body, "anthropic")[1]
    assert out["messages"] == body["messages"]


def test_auth_headers_shorthand():
    assert P.auth_headers("openai", "k") == {"authorization": "Bearer k"}
    assert P.auth_headers("openai-compatible", "k") == {"authorization": "Bearer k"}
    assert P.auth_headers("azure", "k") == {"api-key": "k"}
    assert P.auth_headers("anthropic", "k") == {"x-api-key": "k"}
    assert P.auth_headers("gemini", "k") == {"x-goog-api-key": "k"}


def test_long_tool_names_shortened_for_openai_and_mapped_back():
    long = "mcp__server__" + "x" * 100
    body = {"model": "m", "max_tokens": 5, "tool_choice": {"type": "tool", "name": long},
            "tools": [{"name": long, "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": long, "input": {}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]}]}
    req = P.parse_request("anthropic", json.dumps(body).encode())
    out = json.loads(P.build_upstream_request(req, TargetSpec("openai", None)).body)
    short = out["tools"][0]["function"]["name"]
    assert len(short) <= 64 and short.startswith("mcp__server__")
    assert out["tool_choice"]["function"]["name"] == short
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == short
    resp = {"id": "c", "object": "chat.completion", "created": 1, "model": "g", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": short, "arguments": "{}"}}]}}]}
    reply = P.translate_response(req, "openai", 200, {}, json.dumps(resp).encode())
    assert json.loads(reply.body)["content"][0]["name"] == long
    req.stream = True
    t = P.open_stream(req, "openai")
    chunk = {**resp, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": short, "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}
    out = t.feed(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n") + t.finish()
    assert long.encode() in out and t.done


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
@pytest.mark.parametrize("patch", [
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
    {"messages": [{"role": "assistant", "content": "x", "tool_calls": ["x"]}]},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 1}]}]},
    {"tools": ["x"]}, {"tools": [{"function": "f"}]}, {"tool_choice": {"function": "f"}}, {"tool_choice": 5},
    {"stop": [1]}, {"stop_sequences": [1]}, {"system": 5}, {"metadata": "x"}, {"stream_options": "x"},
    {"messages": [{"role": "tool", "tool_call_id": "a", "content": [{"type": "image_url"}]}]},
])
def test_malformed_requests_are_400_never_500(ingress, patch):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **patch}
    try:
        req = P.parse_request(ingress, json.dumps(body).encode())
    except GatewayError as e:
        assert e.status == 400
        return
    for provider in ("openai", "openai-compatible", "anthropic", "gemini"):
        try:
            P.build_upstream_request(req, TargetSpec(provider, None))
        except GatewayError as e:
            assert e.status == 400


def test_anthropic_beta_header_goes_to_anthropic_targets_only():
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
    hdrs = {"Anthropic-Beta": "token-efficient-tools-2025-02-19", "X-Api-Key": "client-key", "User-Agent": "x"}
    req = P.parse_request("anthropic", body, headers=hdrs)
    u = P.build_upstream_request(req, TargetSpec("anthropic", "c", credentials={"api_key": "k"}))
    assert u.headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
    assert u.headers["x-api-key"] == "k" and "user-agent" not in u.headers
    for provider in ("openai", "gemini"):
        u = P.build_upstream_request(req, TargetSpec(provider, "x"))
        assert "anthropic-beta" not in u.headers
    # OpenAI-format clients have no beta header to forward; the target's own headers still win.
    u = P.build_upstream_request(req, TargetSpec("anthropic", "c", headers={"anthropic-beta": "mine"}))
    assert u.headers["anthropic-beta"] == "mine"
    assert P.parse_request("anthropic", body).client_headers == {}


def test_gemini_long_tool_names_shortened_and_mapped_back():
    long = "lookup_the_current_weather_conditions_for_a_given_city_name_in_the_world_now"
    body = {"model": "m", "max_tokens": 10, "tools": [{"name": long, "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": long},
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": long, "input": {}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}]}
    req = P.parse_request("anthropic", json.dumps(body).encode())
    out = json.loads(P.build_upstream_request(req, TargetSpec("gemini", "g")).body)
    short = out["tools"][0]["functionDeclarations"][0]["name"]
    assert len(short) <= 64 and short != long and short[0] == "_"
    assert out["contents"][1]["parts"][0]["functionCall"]["name"] == short
    assert out["contents"][2]["parts"][0]["functionResponse"]["name"] == short
    assert out["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == [short]
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": short, "args": {}}}]},
                              "finishReason": "STOP"}]}
    reply = P.translate_response(req, "gemini", 200, {}, json.dumps(answer).encode())
    assert json.loads(reply.body)["content"][0]["name"] == long
    st = P.open_stream(req, "gemini")
    events = st.feed(b"data: " + json.dumps(answer).encode() + b"\r\n\r\n") + st.finish()
    assert f'"name":"{long}"'.encode() in events
    # valid names are left alone
    from providers.gemini import gemini_name
    assert gemini_name("get_weather", {}) == "get_weather" and gemini_name("ns.tool:v1-x", {}) == "ns.tool:v1-x"
    assert gemini_name("9lives", {})[0] == "_"


def test_gemini_tool_result_is_error_uses_the_error_key():
    body = {"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [
                             {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                             {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
                             {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "ok"}]}]}]}
    out = up("anthropic", body, "gemini")[1]
    assert [p["functionResponse"]["response"] for p in out["contents"][2]["parts"]] == [{"error": "boom"},
                                                                                       {"content": "ok"}]


def test_data_url_media_type_normalised_for_anthropic():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/JPG;base64,AAAA"}}]}]}
    out = up("openai", body, "anthropic")[1]
    assert out["messages"][0]["content"][0]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}


def test_anthropic_conversation_opens_with_a_user_turn():
    body = {"model": "m", "messages": [{"role": "system", "content": "s"},
                                       {"role": "assistant", "content": "Hi, how can I help?"},
                                       {"role": "user", "content": "x"}]}
    out = up("openai", body, "anthropic")[1]
    assert out["messages"][0] == {"role": "user", "content": [{"type": "text", "text": "."}]}
    assert out["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "Hi, how can I help?"}]}
    assert out["system"] == [{"type": "text", "text": "s"}]
    # an empty first user message is dropped (Anthropic rejects empty text), then the placeholder opens
    body = {"model": "m", "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"},
                                       {"role": "user", "content": "x"}]}
    assert up("openai", body, "anthropic")[1]["messages"][0]["role"] == "user"
    # a system-only request still has one (placeholder) user turn
    body = {"model": "m", "messages": [{"role": "system", "content": "Say hi."}]}
    assert up("openai", body, "anthropic")[1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "."}]}]
    # a normal conversation is untouched
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert up("openai", body, "anthropic")[1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "x"}]}]


def test_gemini_system_only_request_gets_a_turn():
    body = {"model": "m", "messages": [{"role": "system", "content": "Say hi."}]}
    out = up("openai", body, "gemini")[1]
    assert out["systemInstruction"] == {"parts": [{"text": "Say hi."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "."}]}]
