"""The mitmproxy `Response` for an answer the gateway made itself (mitmproxy glue, no logic).

`http.Response.make` runs a dict of headers through a generic conversion, then sets the body through
`set_content`, which looks up Content-Encoding to re-encode the body and rewrites Content-Length in a second
pass over the headers. A gateway answer never carries a Content-Encoding (providers.FRAMING_HEADERS: the body is
always decoded), so the header fields are built once, Content-Length included, and the body is the raw content.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from mitmproxy import http
from mitmproxy.net.http import status_codes

# The reason phrase of every status, as bytes (mitmproxy's own table; "" for an unknown status).
_REASONS: dict[int, bytes] = {code: phrase.encode() for code, phrase in status_codes.RESPONSES.items()}
_FRAMING = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def make_response(status: int, body: bytes, headers: Mapping[str, str]) -> http.Response:
    """A complete HTTP/1.1 response with `headers` and a Content-Length for `body`. The gateway's own framing
    headers win: a Content-Length, Content-Encoding or Transfer-Encoding in `headers` is not copied."""
    fields = [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
              for k, v in headers.items() if k.lower() not in _FRAMING]
    fields.append((b"content-length", str(len(body)).encode()))
    now = time.time()
    return http.Response(b"HTTP/1.1", status, _REASONS.get(status, b""), http.Headers(fields), body, None, now, now)
