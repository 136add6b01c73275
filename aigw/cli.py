"""`aigw` command line: `up` (admin API + proxy), `admin` (admin API alone), `config` (configuration as code:
aigw/config_cli.py), `demo` (offline walkthrough)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aigw import config_cli
from store.health_file import health_path_for


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=_env("AIGW_DATA", "data/aigw.json"),
                   help="configuration store file (env AIGW_DATA; default data/aigw.json)")
    p.add_argument("--admin-host", default=_env("AIGW_ADMIN_HOST", "127.0.0.1"),
                   help="admin API bind address (env AIGW_ADMIN_HOST; default 127.0.0.1)")
    p.add_argument("--admin-port", type=int, default=int(_env("AIGW_ADMIN_PORT", "8080")),
                   help="admin API port (env AIGW_ADMIN_PORT; default 8080)")
    p.add_argument("--admin-token", default=_env("AIGW_ADMIN_TOKEN", ""),
                   help="require `Authorization: Bearer <token>` on every admin call (env AIGW_ADMIN_TOKEN); "
                        "mandatory when the admin binds to a non-loopback address")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="AI-provider gateway (mitmproxy addon)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the admin API and the proxy")
    _common(up)
    up.add_argument("--proxy-host", default=_env("AIGW_PROXY_HOST", "127.0.0.1"),
                    help="proxy bind address (env AIGW_PROXY_HOST; default 127.0.0.1; 0.0.0.0 for all)")
    up.add_argument("--proxy-port", type=int, default=int(_env("AIGW_PROXY_PORT", "8081")),
                    help="proxy port (env AIGW_PROXY_PORT; default 8081)")
    up.add_argument("--base-domain", default=_env("AIGW_BASE_DOMAIN", ""),
                    help="base domain of gateway subdomains (env AIGW_BASE_DOMAIN; default: first Host label)")
    up.add_argument("--metrics-listen", default=_env("AIGW_METRICS_LISTEN", "127.0.0.1:9464"),
                    help="host:port of the Prometheus metrics listener with /livez and /readyz (env "
                         "AIGW_METRICS_LISTEN; default 127.0.0.1:9464; empty: none)")
    up.add_argument("--access-log", default=_env("AIGW_ACCESS_LOG", ""),
                    help="one JSON line per request: '-' for stdout or a file path (env AIGW_ACCESS_LOG; default: "
                         "none)")
    up.add_argument("--attempt-flows", choices=("auto", "on", "off"), default=_env("AIGW_ATTEMPT_FLOWS", "auto"),
                    help="every upstream attempt as its own flow (env AIGW_ATTEMPT_FLOWS; default auto: off under "
                         "aigw up, which keeps no flows)")
    up.add_argument("--redis", default=_env("AIGW_REDIS", ""),
                    help="redis:// URL where rate limits, concurrency and budgets are kept, shared with every proxy "
                         "process that names it (env AIGW_REDIS; default: this process's memory)")
    up.add_argument("--limits-on-error", choices=("open", "closed"), default=_env("AIGW_LIMITS_ON_ERROR", "open"),
                    help="when Redis cannot be reached: open serves without the limits, closed refuses limited "
                         "keys with 503 (env AIGW_LIMITS_ON_ERROR; default open)")
    up.add_argument("--no-admin", action="store_true", help="run the proxy only (admin in another process)")
    up.add_argument("--config", default=_env("AIGW_CONFIG", ""),
                    help="serve this configuration file (YAML, docs/config.md) with no database: the admin API is "
                         "read-only and edits of the file are reloaded live; health and usage files stay next to "
                         "--data (env AIGW_CONFIG)")
    up.add_argument("--verbose", action="store_true", help="log every flow like mitmdump does")

    admin = sub.add_parser("admin", help="run the admin API alone against the same data file")
    _common(admin)

    config_cli.register(sub, _env("AIGW_DATA", "data/aigw.json"))

    demo = sub.add_parser("demo", help="start two mock providers and the gateway, configure it, send traffic")
    demo.add_argument("--requests", type=int, default=40)
    return parser


def _check_ports(*pairs: tuple[str, int]) -> None:
    for name, port in pairs:
        if not 0 <= port <= 65535:
            raise SystemExit(f"aigw: {name} {port} is not a port number")


async def run_proxy(*, data: str, proxy_host: str, proxy_port: int, base_domain: str = "",
                    verbose: bool = False, ready=None, metrics_listen: str = "127.0.0.1:9464",
                    access_log: str = "", attempt_flows: str = "auto", config: str = "", redis: str = "",
                    limits_on_error: str = "open") -> None:
    """Run mitmproxy (reverse mode, lazy connections) with the gateway addon until shut down."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from addon.gateway import GatewayAddon

    opts = options.Options()
    master = DumpMaster(opts, with_termlog=True, with_dumper=verbose)
    master.addons.add(GatewayAddon())
    opts.update(mode=["reverse:http://127.0.0.1:9"], listen_host=proxy_host, listen_port=proxy_port,
                connection_strategy="lazy", keep_host_header=True, aigw_data=data, aigw_base_domain=base_domain,
                aigw_metrics_listen=metrics_listen, aigw_access_log=access_log, aigw_attempt_flows=attempt_flows,
                aigw_config=config, aigw_redis=redis, aigw_limits_on_error=limits_on_error,
                termlog_verbosity="info" if verbose else "warn")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, master.shutdown)
        except NotImplementedError:  # pragma: no cover
            pass
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if ready is not None:
        loop.call_later(0, ready)
    await master.run()


def cmd_up(args: argparse.Namespace) -> int:
    from admin.server import check_bind, serve
    from store.repo import Store
    from store.usage import usage_path_for

    _check_ports(("--admin-port", args.admin_port), ("--proxy-port", args.proxy_port))
    from addon.metrics_server import parse_listen
    try:
        listen = parse_listen(args.metrics_listen)
    except ValueError as exc:
        print(f"aigw: --metrics-listen: {exc}", file=sys.stderr)
        return 2
    if args.redis.strip():
        from addon.limit_store import redis_url
        try:
            redis_url(args.redis)
        except ValueError as exc:
            print(f"aigw: --redis: {exc}", file=sys.stderr)
            return 2
    if listen is not None and listen[1] == args.proxy_port:
        print("aigw: --metrics-listen must not be the proxy port (callers would read the metrics)", file=sys.stderr)
        return 2
    data = os.path.abspath(args.data)
    os.makedirs(os.path.dirname(data), exist_ok=True)
    config = os.path.abspath(args.config) if args.config.strip() else ""
    if config:  # no database: the file is the configuration (checked now: a bad file is an error, not a start)
        from store.config import ConfigError, ConfigFileStore, load_state
        try:
            load_state(config)
        except ConfigError as exc:
            print(f"aigw: {exc}", file=sys.stderr)
            return 1
        store = ConfigFileStore(config)
    else:
        store = Store(data)
    handle = None
    if not args.no_admin:
        try:
            check_bind(args.admin_host, args.admin_token or None)
        except Exception as exc:
            print(f"aigw: {exc}", file=sys.stderr)
            return 2
        handle = serve(store, args.admin_host, args.admin_port, admin_token=args.admin_token or None,
                       health_path=health_path_for(data), usage_path=usage_path_for(data))
        print(f"aigw: admin API on http://{args.admin_host}:{handle.port}/api/v1", flush=True)
    source = f"config: {config}, read-only; state: {data}" if config else f"data: {data}"
    print(f"aigw: proxy on http://{args.proxy_host}:{args.proxy_port} ({source})", flush=True)
    if args.metrics_listen.strip():
        print(f"aigw: metrics on http://{args.metrics_listen.strip()}/metrics", flush=True)
    try:
        asyncio.run(run_proxy(data=data, proxy_host=args.proxy_host, proxy_port=args.proxy_port,
                              base_domain=args.base_domain, verbose=args.verbose,
                              metrics_listen=args.metrics_listen, access_log=args.access_log,
                              attempt_flows=args.attempt_flows, config=config, redis=args.redis.strip(),
                              limits_on_error=args.limits_on_error))
    finally:
        if handle is not None:
            handle.shutdown()
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from admin.server import check_bind, run_forever
    from store.repo import Store
    from store.usage import usage_path_for

    _check_ports(("--admin-port", args.admin_port))
    data = os.path.abspath(args.data)
    os.makedirs(os.path.dirname(data), exist_ok=True)
    try:
        check_bind(args.admin_host, args.admin_token or None)
    except Exception as exc:
        print(f"aigw: {exc}", file=sys.stderr)
        return 2
    print(f"aigw: admin API on http://{args.admin_host}:{args.admin_port}/api/v1 (data: {data})", flush=True)
    run_forever(Store(data), args.admin_host, args.admin_port, admin_token=args.admin_token or None,
                health_path=health_path_for(data), usage_path=usage_path_for(data))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aigw.demo import run_demo

    return run_demo(requests=args.requests)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "up":  # under `up`, mitmproxy's own log handler prints (a second one would double lines)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # One line per admin call is noise next to the proxy; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING if args.command != "admin" else logging.INFO)
    handler = {"up": cmd_up, "admin": cmd_admin, "demo": cmd_demo, "config": config_cli.run}[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
