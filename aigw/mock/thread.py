"""MockProviderThread: a MockProvider on its own event loop in a daemon thread (sync tests, scripts, the demo)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Iterable

from .faults import parse_faults
from .server import MockProvider


class MockProviderThread:
    """Runs a MockProvider on its own event loop in a daemon thread. Methods are thread-safe."""

    def __init__(self, **kwargs: Any) -> None:
        self.provider = MockProvider(**kwargs)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                ready.set_result(loop.run_until_complete(self.provider.start(host, port)))
            except BaseException as e:  # surface bind errors to the caller
                ready.set_exception(e)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(self.provider.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"mock-provider-{self.provider.name}", daemon=True)
        self._thread.start()
        try:
            self.port = ready.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=10)
            self._thread = self._loop = None
            raise
        return self.port

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._loop is None or self._thread is None:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def set_faults(self, rules: Iterable[Any]) -> None:
        parsed = parse_faults(rules)  # raise ValueError in the caller's thread
        self._call(self.provider.set_faults, parsed)

    def faults(self) -> list[dict]:
        return self._call(self.provider.faults)

    def requests(self, path_contains: str | None = None) -> list[dict]:
        return self._call(self.provider.requests, path_contains)

    def stats(self) -> dict:
        return self._call(self.provider.stats)

    def reset(self) -> None:
        self._call(self.provider.reset)

    @property
    def base_url(self) -> str:
        return self.provider.base_url

    def __enter__(self) -> "MockProviderThread":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
