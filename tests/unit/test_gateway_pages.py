"""The gateway's HTML pages may not be framed (a signed-in web UI framed by another site: its Undeploy button
clickjacked) and send no Referer; HEAD answers on the GET routes (curl -I, uptime checkers got 405)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.http import API, create_app
from shared.settings import Settings

FRAMING = {"content-security-policy": "frame-ancestors 'none'", "x-frame-options": "DENY",
           "referrer-policy": "no-referrer"}


@pytest.fixture(scope="module")
def client():
    """One app for the module's read-only requests (a build, ~150 routes, took ~0.3 s of CPU for each test)."""
    async def all_ok(_broker):
        return {"status": "ok", "services": {}}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "aggregate_health", all_ok)
        app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
        with TestClient(app) as http:
            yield http


@pytest.mark.parametrize("path", ["/", f"{API}/docs", "/docs/oauth2-redirect"])
def test_every_html_page_refuses_framing(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
    assert {k: page.headers.get(k) for k in FRAMING} == FRAMING, path


def test_the_uis_csp_allows_its_own_inline_scripts_and_styles(client):
    # ui.html has inline <script> and <style>: a CSP with default-src or script-src would leave the UI blank
    page = client.get("/")
    assert "<script>" in page.text and "<style>" in page.text
    assert "src" not in page.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/", f"{API}/health", f"{API}/docs"])
def test_head_answers_as_get_without_a_body(client, path):
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code == 200, (path, head.status_code, head.text)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers.get("content-security-policy") == got.headers.get("content-security-policy")


def test_head_is_not_in_the_openapi_document(client):
    paths = client.get(f"{API}/openapi.json").json()["paths"]
    assert not [path for path, operations in paths.items() if "head" in operations]
    assert "get" in paths[f"{API}/health"]


def test_other_methods_are_still_405(client):
    refused = client.delete(f"{API}/health")
    assert refused.status_code == 405 and "GET" in refused.headers["allow"]


def test_the_uis_curl_snippet_gets_its_token_from_a_cli_command_that_exists():
    # it read $RAILYARD_TOKEN, which nothing sets: pasted as it was, the request answered 401 missing bearer token
    import re

    from click.testing import CliRunner
    from railyard_client.cli import app as cli

    from services.gateway.http import UI_PAGE

    snippet = next(line for line in UI_PAGE.read_text().splitlines() if "const curl = " in line)
    assert "$RAILYARD_TOKEN" not in snippet
    commands = re.findall(r"Bearer \$\(railyard ([a-z-]+)\)", snippet)
    assert commands, snippet
    for command in commands:
        helped = CliRunner().invoke(cli, [command, "--help"])
        assert helped.exit_code == 0 and "access token" in helped.output, (command, helped.output)


def test_the_favicon_is_served_as_an_icon(client):
    """Browsers ask /favicon.ico of every page that names no icon: it was a 404 (a console error on every UI page)."""
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon", icon.status_code
    reserved, kind, count = (int.from_bytes(icon.content[i:i + 2], "little") for i in (0, 2, 4))
    assert (reserved, kind, count) == (0, 1, 1) and icon.content[6:8] == bytes([16, 16])  # one 16x16 image
    assert icon.content[22:30] == b"\x89PNG\r\n\x1a\n"  # its PNG, where the directory entry says
    assert client.head("/favicon.ico").status_code == 200
