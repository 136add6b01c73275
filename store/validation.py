"""What a configured host, path or header may be: pure checks shared by the models (admin input) and the proxy
(which refuses a record stored before a check existed). Each ``*_problem`` returns why a value is refused, or None.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from providers import is_framing_header

#: An HTTP header name (RFC 9110 token).
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Control characters that must never reach a header value (CR/LF would inject headers).
HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
def check_header(name: str, value: str | None, what: str) -> None:
    """ValueError unless `name` is a token the gateway does not own and `value` has no control characters."""
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a valid HTTP header name")
    # A configured framing header would corrupt the upstream request (a Content-Length cuts the body short, a
    # Host sends it to another virtual host): the gateway sets those itself.
    if is_framing_header(name):
        raise ValueError(f"{what} {name!r} is a framing or hop-by-hop header the gateway sets itself; "
                         "it cannot be configured")
    if value is not None and HEADER_VALUE_FORBIDDEN.search(value):
        raise ValueError(f"{what} value of {name!r} contains control characters (CR, LF, NUL, ...)")


#: A DNS label (RFC 1123; "_" tolerated, as container and service-discovery names use it).
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_HINT = ("host must be a bare host name or IP address: no scheme, port, path, user info or spaces "
              "(port and protocol are fields of their own)")


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a bare DNS name (labels of at most 63 characters, at most 253 in all), IPv4 address or
    IPv6 literal (with or without brackets), or None. Shared with the proxy, which refuses such a stored host."""
    if not isinstance(host, str) or not host:
        return "host must be a non-empty string"
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if ":" in inner:
        try:
            if "%" in inner:  # a zone id (fe80::1%eth0) has no place in a URL host
                raise ValueError(inner)
            ipaddress.IPv6Address(inner)
        except ValueError:
            return _HOST_HINT
        return None
    if bracketed:
        return f"{_HOST_HINT}; brackets are for IPv6 literals only"
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: a fully qualified name
    if len(name) > 253:
        return "host is longer than 253 characters"
    labels = name.split(".")
    for label in labels:
        if len(label) > 63:
            return "host has a label longer than 63 characters"
        if not _HOST_LABEL.fullmatch(label):
            return f"{_HOST_HINT}; a name is labels of letters, digits and '-', separated by '.'"
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return "host looks like an IPv4 address but is not a valid one (four numbers 0-255)"
    return None


_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)


def path_problem(path: str) -> str | None:
    """Why a configured upstream path (a target's or endpoint service's, query allowed) cannot be sent as is, or
    None. Shared with the proxy, which refuses such a stored path."""
    if not path.startswith("/"):
        return "path must start with '/'"
    if not re.fullmatch(r"[\x21-\x7e]+", path):
        return "path must be visible ASCII: no spaces or control characters (percent-encode the rest)"
    if "#" in path or "\\" in path:
        return "path must not contain '#' or '\\'"
    base = path.split("?", 1)[0]
    if _DOT_SEGMENT.search(base):
        return "path must not contain '.' or '..' segments"
    if re.search(r"%(2f|5c|00)", base, re.IGNORECASE):
        return "path must not contain an encoded '/', '\\' or NUL"
    return None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object_pairs_hook: an object with a key given twice is ambiguous (parsers disagree on which
    one wins), so it is refused (admin API bodies, configuration files)."""
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {duplicate!r} in an object")
    return body
