"""The JavaScript client: its pure parts under Node's test runner, and how it is served."""

from __future__ import annotations

import subprocess

from flask import Flask
from flask.testing import FlaskClient

from flask_sse import sse
from flask_sse.client import SCRIPT, client_version

from .conftest import ROOT, _need


def test_the_clients_pure_parts_pass_their_node_tests() -> None:
    node = _need("node", "nodejs")
    result = subprocess.run(
        [node, "--test", str(ROOT / "tests" / "js")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def test_the_client_is_served_at_the_prefix_and_revalidated(client: FlaskClient) -> None:
    with client.get("/stream/client.js") as response:
        body = response.get_data()
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert body == SCRIPT.read_bytes()
    assert response.cache_control.no_cache
    etag = response.headers["ETag"]
    with client.get("/stream/client.js", headers={"If-None-Match": etag}) as again:
        assert again.status_code == 304


def test_the_versioned_url_is_cached_for_a_year(app: Flask, client: FlaskClient) -> None:
    with app.test_request_context():
        url = sse.client_url()
    assert url == f"/stream/client.js?v={client_version()}"
    with client.get(url) as response:
        assert response.status_code == 200
    assert response.cache_control.max_age == 365 * 24 * 3600
    assert not response.cache_control.no_cache
    with client.get("/stream/client.js?v=0.0.1") as stale:  # a page of an older release
        assert stale.cache_control.no_cache


def test_the_installed_package_ships_the_client() -> None:
    """The file is package data: a wheel without it would serve 404s."""
    assert SCRIPT.is_file()
    assert '"static/client.js"' in (ROOT / "pyproject.toml").read_text()
