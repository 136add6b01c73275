from __future__ import annotations

import itertools
import uuid

import pytest

import logging

from tests.e2e.harness import Admin, start_mitmdump

logging.getLogger("werkzeug").setLevel(logging.WARNING)

_counter = itertools.count()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One admin API (in-process) and one real mitmdump with the addon, shared by the e2e tests.

    Each test makes its own gateway (unique subdomain), upstream and mock providers, so tests do not share state.
    """
    from admin.server import serve
    from store.repo import Store

    root = tmp_path_factory.mktemp("aigw")
    data = root / "aigw.json"
    store = Store(str(data))
    handle = serve(store, "127.0.0.1", 0, health_path=str(data) + ".health.json")
    proxy = start_mitmdump(data, root / "mitm-conf")
    try:
        yield {"admin": Admin(f"http://127.0.0.1:{handle.port}", proxy.base), "proxy": proxy, "data": data, "root": root}
    finally:
        proxy.stop()
        handle.shutdown()


@pytest.fixture
def admin(stack) -> Admin:
    return stack["admin"]


@pytest.fixture
def proxy(stack):
    return stack["proxy"]


@pytest.fixture
def subdomain() -> str:
    return f"gw{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mock_factory():
    from aigw.mock import MockProviderThread

    started = []

    def make(name: str, api_key: str, **kw):
        mock = MockProviderThread(api_key=api_key, name=name, **kw)
        mock.port = mock.start()
        started.append(mock)
        return mock

    yield make
    for mock in started:
        mock.stop()
