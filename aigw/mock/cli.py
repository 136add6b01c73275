"""``python -m aigw.mock``: run one mock provider until SIGINT/SIGTERM; prints the bound port on stdout."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Sequence

from .faults import FaultRule, parse_faults
from .server import MockProvider


def _load_faults(arg: str | None) -> list[FaultRule]:
    if not arg:
        return []
    text = open(arg[1:], encoding="utf-8").read() if arg.startswith("@") else arg
    return parse_faults(json.loads(text))


async def _serve_forever(args: argparse.Namespace) -> None:
    mp = MockProvider(api_key=args.api_key, name=args.name, reply=args.reply, tokens_per_chunk=args.tokens_per_chunk,
                      chunk_delay=args.chunk_delay, models=args.models)
    mp.set_faults(_load_faults(args.faults))
    port = await mp.start(args.host, args.port)
    print(port, flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await mp.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aigw.mock",
                                 description="Mock OpenAI/Anthropic/Gemini provider (prints the bound port).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--api-key", default=None, help="required credential (default: accept any)")
    ap.add_argument("--name", default="mock")
    ap.add_argument("--reply", default=None, help='reply text (default "Hello from <name>")')
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
    ap.add_argument("--models", nargs="*", default=None, help="known models (default: accept any)")
    ap.add_argument("--faults", default=None, help="JSON list of fault rules, or @file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve_forever(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
