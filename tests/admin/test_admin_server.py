"""Admin token, bind safety, and the real threaded server."""

import http.client
import json
import urllib.error
import urllib.request

import pytest

from admin import InsecureBindError, check_bind, create_app, serve

API = "/api/v1"
TOKEN = "s3cret-admin-token"


@pytest.fixture
def secured(store):
    return create_app(store, admin_token=TOKEN).test_client()


def test_token_required_everywhere_under_api(secured):
    for method, path in (("get", f"{API}/gateways"), ("post", f"{API}/gateways"), ("get", f"{API}/openapi.json"),
                         ("delete", f"{API}/gateways/x"), ("get", f"{API}/nothing")):
        response = getattr(secured, method)(path, json={"name": "g", "subdomain": "a"})
        assert response.status_code == 401 and set(response.json) == {"error", "details"}
    for header in ("Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", ""):
        assert secured.get(f"{API}/gateways", headers={"Authorization": header}).status_code == 401


def test_right_token_passes(secured):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.post(f"{API}/gateways", json={"name": "g", "subdomain": "a"}, headers=headers).status_code == 201
    assert secured.get(f"{API}/gateways", headers=headers).status_code == 200


def test_no_token_configured_means_open(client):
    assert client.get(f"{API}/gateways").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"])
def test_loopback_binds_without_token(host):
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "admin.example.com", ""])
def test_non_loopback_needs_token(host):
    with pytest.raises(InsecureBindError, match="admin token"):
        check_bind(host, None)
    check_bind(host, TOKEN)


def test_serve_on_port_zero(store):
    handle = serve(store, "127.0.0.1", 0)
    try:
        assert handle.port > 0
        request = urllib.request.Request(f"{handle.url}{API}/gateways", method="POST",
                                         data=json.dumps({"name": "g", "subdomain": "real"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        with pytest.raises(urllib.error.HTTPError) as exc_info:
            urllib.request.urlopen(f"{handle.url}/missing", timeout=5)
        assert exc_info.value.code == 404
        assert json.loads(exc_info.value.read())["error"]
    finally:
        handle.shutdown()
    handle.shutdown()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{handle.url}{API}/gateways", timeout=2)


def test_serve_refuses_public_bind_without_token(store):
    with pytest.raises(InsecureBindError):
        serve(store, "0.0.0.0", 0)


def test_concurrent_requests_through_the_threaded_server(store):
    import concurrent.futures

    handle = serve(store, "127.0.0.1", 0, admin_token=TOKEN)

    def create(index):
        request = urllib.request.Request(f"{handle.url}{API}/gateways", method="POST",
                                         data=json.dumps({"name": "g", "subdomain": f"c{index}"}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(create, range(40))) == [201] * 40
    finally:
        handle.shutdown()
    assert len(store.list("gateways")) == 40


def test_oversized_bodies_over_the_wire_are_413(store):
    handle = serve(store, "127.0.0.1", 0)
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'", "subdomain": "big"}'
    try:
        for chunked in (False, True):
            connection = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
            body = iter([big[i:i + 65536] for i in range(0, len(big), 65536)]) if chunked else big
            connection.request("POST", f"{API}/gateways", body=body, encode_chunked=chunked,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 413, chunked
            assert "too large" in json.loads(response.read())["error"]
            connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
        connection.request("POST", f"{API}/gateways", body=iter([b'{"name": "g",', b' "subdomain": "small"}']),
                           encode_chunked=True, headers={"Content-Type": "application/json"})
        assert connection.getresponse().status == 201
        connection.close()
    finally:
        handle.shutdown()


@pytest.mark.parametrize("token", ["x", " ", " " * 20, "short-token", "a token with spaces in it", "tab\tinside-a-long-token"])
@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_weak_admin_token_is_refused(host, token):
    """Hardening #9: a one-character or whitespace token used to pass for a non-loopback bind."""
    with pytest.raises(InsecureBindError, match="at least 16 characters"):
        check_bind(host, token)


def test_weak_token_is_a_one_line_cli_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    aigw = Path(sys.executable).parent / "aigw"
    for cmd in ("admin", "up"):
        proc = subprocess.run([str(aigw), cmd, "--admin-host", "0.0.0.0", "--admin-token", "x", "--admin-port", "0",
                               "--data", str(tmp_path / "d" / "aigw.json")], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "at least 16 characters" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
