"""Gemini generateContent / streamGenerateContent on the mock, driven by a raw aiohttp client."""

from __future__ import annotations

import json

import aiohttp
import pytest

from .conftest import KEY

CONTENTS = [{"role": "user", "parts": [{"text": "Hi there"}]}]
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": {
    "type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}]


async def _post(mock, path: str, body, *, key: str | None = KEY, query: str = "") -> tuple[int, str, dict]:
    headers = {"x-goog-api-key": key} if key else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{mock.base_url}{path}{query}", json=body, headers=headers) as r:
            return r.status, await r.text(), dict(r.headers)


def _sse(text: str) -> list[dict]:
    assert text.endswith("\r\n\r\n")
    return [json.loads(e[len("data: "):]) for e in text.split("\r\n\r\n") if e]


async def test_generate_content(amock):
    st, text, _ = await _post(amock, "/v1beta/models/gemini-2.0-flash:generateContent",
                              {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "Be brief"}]}})
    assert st == 200
    body = json.loads(text)
    cand = body["candidates"][0]
    assert cand["content"] == {"parts": [{"text": "Hello from g"}], "role": "model"} and cand["finishReason"] == "STOP"
    assert body["usageMetadata"]["candidatesTokenCount"] == 3
    assert body["usageMetadata"]["totalTokenCount"] == body["usageMetadata"]["promptTokenCount"] + 3
    assert body["modelVersion"] == "gemini-2.0-flash" and body["responseId"]


async def test_stream_sse(amock):
    st, text, headers = await _post(amock, "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                                    {"contents": CONTENTS}, query="?alt=sse")
    assert st == 200 and headers["Content-Type"].startswith("text/event-stream")
    chunks = _sse(text)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Hello from g"
    assert len(chunks) == 3 and all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    assert len({c["responseId"] for c in chunks}) == 1


async def test_stream_without_alt_sse_is_one_json_array(amock):
    st, text, headers = await _post(amock, "/v1beta/models/m:streamGenerateContent", {"contents": CONTENTS},
                                    query=f"?key={KEY}")
    assert st == 200 and headers["Content-Type"].startswith("application/json")
    arr = json.loads(text)
    assert isinstance(arr, list) and arr[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_function_call_and_response_round_trip(amock):
    ask = [{"role": "user", "parts": [{"text": "weather in Paris?"}]}]
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent", {"contents": ask, "tools": TOOLS})
    parts = json.loads(text)["candidates"][0]["content"]["parts"]
    assert parts == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]
    st, text, _ = await _post(amock, "/v1beta/models/m:streamGenerateContent",
                              {"contents": [{"role": "user", "parts": [{"text": "parallel weather"}]}],
                               "tools": TOOLS}, query="?alt=sse")
    (chunk,) = _sse(text)
    assert [p["functionCall"]["args"]["city"] for p in chunk["candidates"][0]["content"]["parts"]] == ["Paris", "Rome"]
    follow = ask + [{"role": "model", "parts": parts},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                     "response": {"temp": "18C"}}}]}]
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent", {"contents": follow, "tools": TOOLS})
    assert st == 200 and json.loads(text)["candidates"][0]["content"]["parts"] == [{"text": "Hello from g"}]


async def test_max_output_tokens(amock):
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent",
                              {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 1, "candidateCount": 2}})
    body = json.loads(text)
    assert [c["finishReason"] for c in body["candidates"]] == ["MAX_TOKENS", "MAX_TOKENS"]
    assert body["candidates"][1]["content"]["parts"][0]["text"] == "Hello"


async def test_auth(amock):
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent", {"contents": CONTENTS}, key="wrong")
    err = json.loads(text)["error"]
    assert st == 400 and err["status"] == "INVALID_ARGUMENT" and err["code"] == 400
    assert err["details"][0]["reason"] == "API_KEY_INVALID"
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent", {"contents": CONTENTS}, key=None)
    assert st == 403 and json.loads(text)["error"]["status"] == "PERMISSION_DENIED"


FC = {"functionCall": {"name": "f", "args": {}}}
FR = {"functionResponse": {"name": "f", "response": {}}}


@pytest.mark.parametrize("body,needle", [
    ({"contents": CONTENTS, "temperature": 1}, 'Unknown name "temperature"'),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role: user, model"),
    ({"contents": [{"role": "user", "parts": []}]}, "parts must not be empty"),
    ({"contents": [{"role": "user", "parts": [{}]}]}, "required oneof field 'data'"),
    ({"contents": [*CONTENTS, {"role": "user", "parts": [FR]}]}, "function response turn comes immediately after"),
    ({"contents": [*CONTENTS, {"role": "model", "parts": [FC, FC]}, {"role": "user", "parts": [FR]}]},
     "number of function response parts is equal"),
    ({"contents": [*CONTENTS, {"role": "model", "parts": [{"text": "a"}]}, {"role": "model", "parts": [FC]}]},
     "function call turn comes immediately after a user turn"),
    ({"contents": CONTENTS, "generationConfig": {"temperature": 3}}, "temperature"),
])
async def test_validation_rejections(amock, body, needle):
    st, text, _ = await _post(amock, "/v1beta/models/m:generateContent", body)
    err = json.loads(text)["error"]
    assert st == 400 and err["status"] == "INVALID_ARGUMENT" and needle in err["message"], err


async def test_snake_case_fields_accepted(amock):
    st, _, _ = await _post(amock, "/v1beta/models/m:generateContent",
                           {"contents": CONTENTS, "generation_config": {"max_output_tokens": 5},
                            "system_instruction": {"parts": [{"text": "s"}]}})
    assert st == 200


def test_schema_keywords_outside_gemini_subset_are_refused(mock):
    import httpx2
    url = f"{mock.base_url}/v1beta/models/gemini-2.0-flash:generateContent"
    base = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    bad_params = {"type": "object", "properties": {"loc": {"$ref": "#/$defs/Loc"}}, "$defs": {"Loc": {"type": "string"}}}
    with httpx2.Client() as c:
        for body in ({**base, "tools": [{"functionDeclarations": [{"name": "f", "parameters": bad_params}]}]},
                     {**base, "generationConfig": {"responseMimeType": "application/json", "responseSchema": {
                         "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}}):
            r = c.post(url, headers={"x-goog-api-key": KEY}, json=body)
            assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
            assert "Cannot find field" in r.json()["error"]["message"]
        ok = {**base, "generationConfig": {"responseMimeType": "application/json", "responseSchema": {
            "type": "OBJECT", "properties": {"a": {"type": "string", "nullable": True}}, "required": ["a"]}}}
        assert c.post(url, headers={"x-goog-api-key": KEY}, json=ok).status_code == 200


def test_function_names_outside_gemini_rules_are_refused(mock):
    import httpx2
    url = f"{mock.base_url}/v1beta/models/gemini-2.0-flash:generateContent"
    base = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with httpx2.Client() as c:
        for name in ("x" * 65, "1abc", "has space"):
            r = c.post(url, headers={"x-goog-api-key": KEY},
                       json={**base, "tools": [{"functionDeclarations": [{"name": name}]}]})
            assert r.status_code == 400 and "Invalid function name" in r.json()["error"]["message"]
        r = c.post(url, headers={"x-goog-api-key": KEY},
                   json={**base, "tools": [{"functionDeclarations": [{"name": "_ns.tool:v1-x"}]}]})
        assert r.status_code == 200


def test_automatic_prompt_caching(mock):
    import httpx2
    url = f"{mock.base_url}/v1beta/models/gemini-2.0-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "word " * 1000}]}]}
    with httpx2.Client() as c:
        first = c.post(url, headers={"x-goog-api-key": KEY}, json=body).json()["usageMetadata"]
        again = c.post(url, headers={"x-goog-api-key": KEY}, json=body).json()["usageMetadata"]
    assert "cachedContentTokenCount" not in first
    assert again["cachedContentTokenCount"] == 1152 and again["promptTokenCount"] == 1250
