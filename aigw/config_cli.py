"""``aigw config``: the configuration as a file (docs/config.md).

    aigw config export [--data FILE] [--format yaml|json] [-o OUT]   the store as a file (stdout by default)
    aigw config apply FILE [--data FILE] [--dry-run] [--prune] [--json]   plan, then carry it out atomically
    aigw config validate FILE                                        check a file without a store
    aigw config schema                                               JSON Schema of the file, for editors

A bad file or a plan that cannot be carried out is one line on stderr and exit status 1; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_INVALID = 1


def register(sub: argparse._SubParsersAction, data_default: str) -> None:
    config = sub.add_parser("config", help="configuration as code: export, apply, validate, schema")
    actions = config.add_subparsers(dest="config_command", required=True)

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=data_default, help="the store file (env AIGW_DATA; default data/aigw.json)")

    export = actions.add_parser("export", help="write the stored configuration as YAML (or JSON)")
    data(export)
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    export.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")

    apply = actions.add_parser("apply", help="make the store what the file says (atomically)")
    apply.add_argument("file", help="the configuration file (YAML or JSON)")
    data(apply)
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.add_argument("--prune", action="store_true", help="also delete what the file does not name")
    apply.add_argument("--json", action="store_true", help="print the plan as JSON")

    validate = actions.add_parser("validate", help="check a file (syntax, fields, names, environment variables)")
    validate.add_argument("file")

    actions.add_parser("schema", help="print the JSON Schema of the file")


def run(args: argparse.Namespace) -> int:
    from store.config import ConfigError

    handler = {"export": _export, "apply": _apply, "validate": _validate, "schema": _schema}[args.config_command]
    try:
        return handler(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except Exception as exc:  # a store error (locked, unreadable): one line, never a traceback
        from store.errors import StoreError

        if isinstance(exc, StoreError):
            return _fail(exc.message)
        raise


def _fail(message: str) -> int:
    print(f"aigw: {message}", file=sys.stderr)
    return EXIT_INVALID


def _export(args: argparse.Namespace) -> int:
    from store.atomic import atomic_write_bytes
    from store.config import export
    from store.repo import Store

    data = os.path.abspath(args.data)
    if not os.path.exists(data):
        return _fail(f"no store file at {data} (--data / AIGW_DATA)")
    exported = export(Store(data))
    text = exported.yaml() if args.format == "yaml" else exported.json()
    if args.output:
        atomic_write_bytes(args.output, text.encode("utf-8"))
        if exported.variables:
            print(f"aigw: credentials exported as ${{VAR}}: set {', '.join(exported.variables)} to apply it",
                  file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _apply(args: argparse.Namespace) -> int:
    from store.config import plan_or_apply, read_file
    from store.repo import Store

    source = read_file(args.file)  # parse and check the file before touching the store
    data = os.path.abspath(args.data)
    plan = plan_or_apply(Store(data), source, prune=args.prune, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.render())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from store.config import read_file, resolve

    desired = resolve(read_file(args.file))
    counts: dict[str, int] = {}
    for item in desired.items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    print(f"{args.file}: valid ({', '.join(f'{n} {kind}' for kind, n in counts.items()) or 'empty'})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from store.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
