"""The API docs work on an offline install: the page and everything it loads come from the gateway itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import httpx


class Links(HTMLParser):
    """Every URL a page references through src/href attributes, plus URLs written in its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.urls += re.findall(r"""(?:url|href|src)\s*[:=]\s*['"]([^'"]+)['"]""", data)
            self.urls += re.findall(r"https?://[^\s'\"`)]+", data)


def test_docs_page_references_no_external_host_and_its_assets_are_served(stack):
    page_url = f"{stack.api}/docs"
    page = httpx.get(page_url, timeout=10)
    assert page.status_code == 200
    parser = Links()
    parser.feed(page.text)
    assert parser.urls, "the docs page loads no script at all?"
    gateway = urlparse(stack.base_url).netloc
    scripts = []
    for url in parser.urls:
        absolute = urljoin(page_url, url)
        assert urlparse(absolute).netloc == gateway, f"the docs page loads {url} from another host"
        asset = httpx.get(absolute, timeout=10)
        assert asset.status_code == 200 and asset.content, f"{absolute} is not served"
        if absolute.endswith(".js"):
            scripts.append(asset)
    assert any(b"SwaggerUIBundle" in s.content for s in scripts), "Swagger UI's bundle is not among the assets"


def test_ui_page_loads_nothing_from_another_host(stack):
    page = httpx.get(f"{stack.base_url}/", timeout=10)
    assert page.status_code == 200
    parser = Links()
    parser.feed(page.text)
    gateway = urlparse(stack.base_url).netloc
    scripts = []
    for url in parser.urls:
        absolute = urljoin(stack.base_url + "/", url)
        assert urlparse(absolute).netloc == gateway, f"the UI loads {url} from elsewhere"
        if absolute.endswith(".js"):
            asset = httpx.get(absolute, timeout=10)
            assert asset.status_code == 200 and asset.content, f"{absolute} is not served"
            scripts.append(absolute)
    vendored = {"/static/vendor/chart.umd.min.js", "/static/vendor/cytoscape.min.js"}  # no CDN: the gateway's own
    assert vendored <= {urlparse(s).path for s in scripts}, scripts
