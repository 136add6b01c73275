"""The caller's keys kept out of what a flow stores, and the caller's real request rebuilt for the dispatcher.

mitmweb shows a flow and `-w` saves it, so the key headers (masking.KEY_HEADERS) and key-like query parameters are
masked in the flow itself at `requestheaders` (a flow mitmproxy ends before the request hook is saved as it
stands); what was replaced is kept aside by the addon (never in the flow) and handed back to the dispatcher.
"""

from __future__ import annotations

from mitmproxy import http

from addon.ingress import mask_query
from addon.masking import KEY_HEADERS, mask_header_value, mask_once

# The key headers (masking.KEY_HEADERS) as the lower-case bytes of header fields.
_KEY_FIELDS = {name.encode(): name for name in KEY_HEADERS}


def redact(flow: http.HTTPFlow) -> dict | None:
    """Keep no usable key in what the flow stores (mitmweb shows it, `-w` saves it): the key headers
    (KEY_HEADERS) and key-like query parameters (`?key=`, ingress.SECRET_QUERY_PARAMS — the gateway reads
    its key only from headers, but a caller may put one, or a provider key, in the URL).

    Returns what it replaced ({"path": …, header name: [values]}), None when nothing was."""
    req = flow.request
    original: dict = {}
    if "?" in req.path:
        masked = mask_query(req.path, mask_once)
        if masked != req.path:
            original["path"] = req.path
            req.path = masked
    # One pass over the fields (each Headers.get_all/set_all rescans them all): a key header's values are
    # kept in full, in order, when any of them is masked.
    fields = req.headers.fields
    found: dict[str, list[tuple[int, str, str]]] = {}
    for i, (name, value) in enumerate(fields):
        lname = name.lower()
        if lname in _KEY_FIELDS:
            key_name = _KEY_FIELDS[lname]
            text = value.decode("utf-8", "surrogateescape")
            found.setdefault(key_name, []).append((i, text, mask_header_value(key_name, text)))
    if found:
        new_fields = None
        for key_name, entries in found.items():
            if all(text == masked for _, text, masked in entries):
                continue
            original[key_name] = [text for _, text, _ in entries]
            new_fields = new_fields or list(fields)
            for i, _, masked in entries:
                new_fields[i] = (fields[i][0], masked.encode("utf-8", "surrogateescape"))
        if new_fields is not None:
            req.headers.fields = tuple(new_fields)
    return original or None

def caller_view(req: http.Request, original: dict | None) -> tuple[str, http.Headers]:
    """The path and headers the caller sent, from the masked request and what `redact` replaced; the
    flow itself stays masked."""
    if not original:
        return req.path, req.headers
    pending = {name.encode(): iter(values) for name, values in original.items() if name != "path"}
    fields = []
    for name, value in req.headers.fields:
        values = pending.get(name.lower())
        if values is not None:
            real = next(values, None)
            if real is not None:
                value = real.encode("utf-8", "surrogateescape")
        fields.append((name, value))
    return original.get("path", req.path), http.Headers(fields)
