"""`aigw` command line: `up` (admin API + proxy; with `--workers N`, N proxy processes behind HAProxy:
aigw/supervisor.py), `worker` (one of those, internal), `admin` (admin API alone), `config` (configuration as
code: aigw/config_cli.py), `demo` (offline walkthrough)."""

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


def _proxy_options(p: argparse.ArgumentParser) -> None:
    """The options of one proxy process (`aigw up`, and each worker of `aigw up --workers`)."""
    p.add_argument("--proxy-host", default=_env("AIGW_PROXY_HOST", "127.0.0.1"),
                   help="proxy bind address (env AIGW_PROXY_HOST; default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--proxy-port", type=int, default=int(_env("AIGW_PROXY_PORT", "8081")),
                   help="proxy port (env AIGW_PROXY_PORT; default 8081)")
    p.add_argument("--base-domain", default=_env("AIGW_BASE_DOMAIN", ""),
                   help="base domain of gateway subdomains (env AIGW_BASE_DOMAIN; default: first Host label)")
    p.add_argument("--metrics-listen", default=_env("AIGW_METRICS_LISTEN", "127.0.0.1:9464"),
                   help="host:port of the Prometheus metrics listener with /livez and /readyz (env "
                        "AIGW_METRICS_LISTEN; default 127.0.0.1:9464; empty: none)")
    p.add_argument("--access-log", default=_env("AIGW_ACCESS_LOG", ""),
                   help="one JSON line per request: '-' for stdout or a file path (env AIGW_ACCESS_LOG; default: "
                        "none)")
    p.add_argument("--attempt-flows", choices=("auto", "on", "off"), default=_env("AIGW_ATTEMPT_FLOWS", "auto"),
                   help="every upstream attempt as its own flow (env AIGW_ATTEMPT_FLOWS; default auto: off under "
                        "aigw up, which keeps no flows)")
    p.add_argument("--redis", default=_env("AIGW_REDIS", ""),
                   help="redis:// URL where rate limits, concurrency and budgets are kept, shared with every proxy "
                        "process that names it (env AIGW_REDIS; default: this process's memory)")
    p.add_argument("--limits-on-error", choices=("open", "closed"), default=_env("AIGW_LIMITS_ON_ERROR", "open"),
                   help="when Redis cannot be reached: open serves without the limits, closed refuses limited "
                        "keys with 503 (env AIGW_LIMITS_ON_ERROR; default open)")
    p.add_argument("--config", default=_env("AIGW_CONFIG", ""),
                   help="serve this configuration file (YAML, docs/config.md) with no database: the admin API is "
                        "read-only and edits of the file are reloaded live; health and usage files stay next to "
                        "--data (env AIGW_CONFIG)")
    p.add_argument("--verbose", action="store_true", help="log every flow like mitmdump does")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="AI-provider gateway (mitmproxy addon)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the admin API and the proxy")
    _common(up)
    _proxy_options(up)
    up.add_argument("--no-admin", action="store_true", help="run the proxy only (admin in another process)")
    up.add_argument("--workers", type=int, default=int(_env("AIGW_WORKERS", "0")),
                    help="run N proxy worker processes behind HAProxy on --proxy-host:--proxy-port (needs haproxy "
                         "on PATH; docs/scaling.md); each worker's metrics listener is on a loopback port of its "
                         "own, listed in <data>.workers.json (env AIGW_WORKERS; default 0: one process, no HAProxy)")
    up.add_argument("--grace", type=float, default=float(_env("AIGW_GRACE", "30")),
                    help="with --workers: seconds the workers get on Ctrl-C/SIGTERM to finish requests and streams "
                         "in progress before they are killed (env AIGW_GRACE; default 30)")

    worker = sub.add_parser("worker", help="internal: one proxy worker of `aigw up --workers` (the supervisor "
                                           "starts it)")
    worker.add_argument("--data", required=True)
    _proxy_options(worker)
    worker.add_argument("--worker-id", required=True, help="names its health and usage files")
    worker.add_argument("--grace", type=float, default=30.0,
                        help="seconds to drain requests in progress on SIGTERM")

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
                    limits_on_error: str = "open", worker: str = "", grace: float | None = None) -> None:
    """Run mitmproxy (reverse mode, lazy connections) with the gateway addon until shut down.

    ``worker``: this process's worker id under `aigw up --workers` (per-worker health and usage files).
    ``grace``: on SIGTERM/SIGINT stop listening and let requests in progress finish for up to this many seconds
    (aigw/worker.py), and drain when the parent process is gone; None: shut down at once."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from addon.gateway import GatewayAddon

    opts = options.Options()
    master = DumpMaster(opts, with_termlog=True, with_dumper=verbose)
    master.addons.add(GatewayAddon())
    stop = master.shutdown
    drain = None
    if grace is not None:
        from aigw.worker import Drain

        drain = Drain(grace)
        master.addons.add(drain)
        stop = lambda: drain.request_stop(master)  # noqa: E731
    opts.update(mode=["reverse:http://127.0.0.1:9"], listen_host=proxy_host, listen_port=proxy_port,
                connection_strategy="lazy", keep_host_header=True, aigw_data=data, aigw_base_domain=base_domain,
                aigw_metrics_listen=metrics_listen, aigw_access_log=access_log, aigw_attempt_flows=attempt_flows,
                aigw_config=config, aigw_redis=redis, aigw_limits_on_error=limits_on_error, aigw_worker=worker,
                termlog_verbosity="info" if verbose else "warn")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except NotImplementedError:  # pragma: no cover
            pass
    if drain is not None:
        loop.create_task(drain.watch_parent(master, os.getppid()), name="aigw-parent-watch")
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
    if args.workers:
        from aigw.haproxy import HaproxyMissing, find_haproxy
        if args.workers < 1 or args.grace < 0:
            print("aigw: --workers must be at least 1 and --grace at least 0", file=sys.stderr)
            return 2
        try:
            find_haproxy()
        except HaproxyMissing as exc:
            print(exc, file=sys.stderr)
            return 2
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
    if listen is not None and listen[1] == args.proxy_port and not args.workers:
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
    try:
        if args.workers:
            return _supervise(args, data, config)
        if args.metrics_listen.strip():
            print(f"aigw: metrics on http://{args.metrics_listen.strip()}/metrics", flush=True)
        asyncio.run(run_proxy(data=data, proxy_host=args.proxy_host, proxy_port=args.proxy_port,
                              base_domain=args.base_domain, verbose=args.verbose,
                              metrics_listen=args.metrics_listen, access_log=args.access_log,
                              attempt_flows=args.attempt_flows, config=config, redis=args.redis.strip(),
                              limits_on_error=args.limits_on_error))
    finally:
        if handle is not None:
            handle.shutdown()
    return 0


def _supervise(args: argparse.Namespace, data: str, config: str) -> int:
    """`aigw up --workers N`: the supervisor (aigw/supervisor.py) with this command's proxy options."""
    from aigw.supervisor import Supervisor, SupervisorSettings, WorkerSlot

    def worker_argv(slot: WorkerSlot) -> list[str]:
        argv = ["--data", data, "--worker-id", slot.id, "--grace", str(args.grace),
                "--proxy-host", "127.0.0.1", "--proxy-port", str(slot.port),
                "--metrics-listen", f"127.0.0.1:{slot.metrics_port}", "--base-domain", args.base_domain,
                "--access-log", args.access_log, "--attempt-flows", args.attempt_flows,
                "--redis", args.redis.strip(), "--limits-on-error", args.limits_on_error, "--config", config]
        return argv + (["--verbose"] if args.verbose else [])

    supervisor = Supervisor(SupervisorSettings(workers=args.workers, bind_host=args.proxy_host,
                                               bind_port=args.proxy_port, data=data, grace=args.grace,
                                               worker_argv=worker_argv))
    return supervisor.run()


def cmd_worker(args: argparse.Namespace) -> int:
    """One proxy worker (started by the supervisor of `aigw up --workers`)."""
    from store.workers import check_worker_id

    try:
        worker = check_worker_id(args.worker_id)
    except ValueError as exc:
        print(f"aigw: --worker-id: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run_proxy(data=os.path.abspath(args.data), proxy_host=args.proxy_host, proxy_port=args.proxy_port,
                          base_domain=args.base_domain, verbose=args.verbose, metrics_listen=args.metrics_listen,
                          access_log=args.access_log, attempt_flows=args.attempt_flows,
                          config=os.path.abspath(args.config) if args.config.strip() else "",
                          redis=args.redis.strip(), limits_on_error=args.limits_on_error, worker=worker,
                          grace=max(args.grace, 0.0)))
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
    if args.command not in ("up", "worker"):  # mitmproxy's own log handler prints (a second would double lines)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # One line per admin call is noise next to the proxy; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING if args.command != "admin" else logging.INFO)
    handler = {"up": cmd_up, "worker": cmd_worker, "admin": cmd_admin, "demo": cmd_demo,
               "config": config_cli.run}[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
