"""The addon's options: their registration (mitmproxy `load`) and how their values are read and checked.

Every option is `aigw_*`; README.md ("Running under mitmdump or mitmweb directly") and docs/observability.md list
them. A bad value raises `OptionsError`, which mitmproxy reports while keeping the old value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mitmproxy import ctx, exceptions

from addon.ingress import Limits


def register(loader) -> None:
    loader.add_option("aigw_data", str, os.environ.get("AIGW_DATA", "data/aigw.json"),
                      "aigw: path of the configuration store (TinyDB JSON file) written by the admin API.")
    loader.add_option("aigw_config", str, os.environ.get("AIGW_CONFIG", ""),
                      "aigw: a configuration file (YAML, docs/config.md) to serve instead of the store: no "
                      "database; edits are reloaded live. Health and usage files stay next to aigw_data.")
    loader.add_option("aigw_base_domain", str, os.environ.get("AIGW_BASE_DOMAIN", ""),
                      "aigw: base domain; the Host label before it names the gateway (empty: first label).")
    loader.add_option("aigw_max_body", int, 10 * 1024 * 1024,
                      "aigw: largest request body accepted, in bytes (larger: 413), also once decoded.")
    loader.add_option("aigw_max_headers", int, 256,
                      "aigw: most request header fields accepted (more: 431).")
    loader.add_option("aigw_max_header_bytes", int, 64 * 1024,
                      "aigw: largest total size of the request header fields, in bytes (larger: 431).")
    loader.add_option("aigw_attempt_flows", str, "auto",
                      "aigw: show every upstream attempt as its own flow, as sent and as answered, credentials "
                      "masked: on, off, or auto (on under mitmweb or with a flow file, -w).")
    loader.add_option("aigw_metrics_listen", str, os.environ.get("AIGW_METRICS_LISTEN", "127.0.0.1:9464"),
                      "aigw: host:port of the Prometheus metrics listener (/metrics, /livez, /readyz), never the "
                      "proxy port; port 0 picks a free one; empty: no listener.")
    loader.add_option("aigw_access_log", str, os.environ.get("AIGW_ACCESS_LOG", ""),
                      "aigw: one JSON line per request: '-' for stdout, a file path, or empty for none.")
    loader.add_option("aigw_log_bodies", bool, False,
                      "aigw: debug only — also put request and answer bodies (prompts!) in the access log.")
    loader.add_option("aigw_redis", str, os.environ.get("AIGW_REDIS", ""),
                      "aigw: redis:// URL of the storage that rate limits, concurrency and budgets share with every "
                      "other proxy process; empty: this process's memory.")
    loader.add_option("aigw_redis_timeout", str, "0.25",
                      "aigw: seconds a limit-storage (Redis) call may take before the on-error policy applies.")
    loader.add_option("aigw_limits_on_error", str, "open",
                      "aigw: when the limit storage cannot be reached: open (serve without limits) or closed "
                      "(refuse with 503). Logged once per outage and counted in aigw_limit_storage_errors_total.")
    loader.add_option("aigw_worker", str, "",
                      "aigw: this process's worker id under `aigw up --workers` (letters, digits, '-', '_'; at most "
                      "32): its health and usage files are <data>.health.<id>.json and <data>.usage.<id>.json.")
    # A string holding a number: mitmproxy's --set parses no float options.
    loader.add_option("aigw_client_timeout", str, "60",
                      "aigw: seconds (e.g. 60, 0.5) a client connection has to send a complete request head "
                      "(from connect or from the end of its previous answer) and then its body; 0: no limit.")


def config_file(opts) -> str | None:
    """The aigw_config file (absolute), or None when the store file is the configuration."""
    value = opts.aigw_config.strip()
    return os.path.abspath(value) if value else None


def worker_id(opts) -> str | None:
    """The aigw_worker id, None when unset; OptionsError unless it is a valid one (store/workers.py)."""
    from store.workers import check_worker_id

    value = opts.aigw_worker.strip()
    if not value:
        return None
    try:
        return check_worker_id(value)
    except ValueError as err:
        raise exceptions.OptionsError(f"aigw_worker: {err}") from None


def attempt_flows(opts) -> bool:
    mode = opts.aigw_attempt_flows.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise exceptions.OptionsError("aigw_attempt_flows must be on, off or auto")
    if mode == "auto":
        return bool(opts.save_stream_file) or under_mitmweb()
    return mode == "on"


def under_mitmweb() -> bool:
    try:
        return ctx.master.addons.get("webaddon") is not None
    except AttributeError:
        return False


LIMITER_OPTIONS = frozenset({"aigw_redis", "aigw_redis_timeout", "aigw_limits_on_error"})


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    redis: str | None
    timeout: float
    on_error: str


def limiter_settings(opts) -> LimiterSettings:
    """Where limits are kept and what happens when that storage is down; OptionsError naming a bad value."""
    from addon.limit_store import redis_url
    from addon.limiter import ON_ERROR_POLICIES

    on_error = opts.aigw_limits_on_error.strip().lower()
    if on_error not in ON_ERROR_POLICIES:
        raise exceptions.OptionsError(f"aigw_limits_on_error must be one of {', '.join(ON_ERROR_POLICIES)}")
    try:
        timeout = float(opts.aigw_redis_timeout)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 60:
        raise exceptions.OptionsError("aigw_redis_timeout must be a number of seconds above 0, at most 60")
    url = opts.aigw_redis.strip() or None
    if url is not None:
        try:
            redis_url(url)
        except ValueError as err:
            raise exceptions.OptionsError(f"aigw_redis: {err}") from None
    return LimiterSettings(redis=url, timeout=timeout, on_error=on_error)


LIMIT_OPTIONS = frozenset({"aigw_max_headers", "aigw_max_header_bytes", "aigw_max_body", "aigw_client_timeout"})


def limits(opts) -> Limits:
    """The ingress limits from the options, or OptionsError naming the bad one (mitmproxy keeps the old value)."""
    for name in ("aigw_max_body", "aigw_max_headers", "aigw_max_header_bytes"):
        if getattr(opts, name) <= 0:  # one loop over option names: getattr is the option lookup
            raise exceptions.OptionsError(f"{name} must be positive")
    try:
        client_timeout = float(opts.aigw_client_timeout)
    except ValueError:
        client_timeout = -1.0
    if not 0 <= client_timeout < float("inf"):
        raise exceptions.OptionsError("aigw_client_timeout must be a number of seconds, 0 (no limit) or more")
    return Limits(max_headers=opts.aigw_max_headers, max_header_bytes=opts.aigw_max_header_bytes,
                  max_body=opts.aigw_max_body, client_timeout=client_timeout)
