"""The test process's one headless Chromium (tests/integration/ui_browser.py, Chromium; conftest's `ui_chromium`),
which every UI module takes fresh: what one module leaves must not reach the next, and a browser an earlier module
broke is launched again, so one broken module does not fail every later UI module of the worker. No stack needed: a
local page stands in for the stack's origin. Each test launches a Chromium of its own (not the session's one)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from tests.integration import ui_browser

pytestmark = pytest.mark.integration


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<!doctype html><title>origin</title><p>a page of the origin</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chromium():
    """A Chromium of this test's own (skipped without one; failed with RAILYARD_TEST_REQUIRE_BROWSER=1)."""
    yield from ui_browser.chromium()


def test_what_a_module_left_in_the_browser_is_gone_for_the_next(chromium, origin):
    """Cookies, local and session storage of the origin, and every window the module opened (a popup of the page,
    another tab) are gone. Before, a window the module had opened besides its own tab stayed open, and with it its
    page (and whatever that page kept doing against the stack: its token refresh, a followed run's log reads),
    into every later UI module of the worker."""
    driver = chromium.fresh(origin)
    driver.get(origin + "/")
    driver.execute_script("document.cookie = 'left=1; path=/'; localStorage.setItem('left', '1');"
                          "sessionStorage.setItem('left', '1'); window.open(arguments[0] + '/popup')", origin)
    driver.switch_to.new_window("tab")
    driver.get(origin + "/other-tab")
    assert len(driver.window_handles) == 3

    driver = chromium.fresh(origin)
    assert len(driver.window_handles) == 1, driver.window_handles
    driver.get(origin + "/")
    assert driver.get_cookies() == []
    assert driver.execute_script("return [localStorage.length, sessionStorage.length]") == [0, 0]


def test_a_browser_whose_driver_died_is_launched_again(chromium, origin):
    """A module that leaves the browser unusable costs that module only: the next module's fresh() launches it again.
    Before, a chromedriver that had died (killed, out of memory) raised urllib3's MaxRetryError, not a
    WebDriverException, out of fresh(): every later UI module of the worker errored in its set-up."""
    driver = chromium.fresh(origin)
    orphans = psutil.Process(driver.service.process.pid).children(recursive=True)  # its Chromium, left running
    try:
        os.kill(driver.service.process.pid, signal.SIGKILL)
        driver.service.process.wait(10)

        again = chromium.fresh(origin)
        again.get(origin + "/")
        assert again.execute_script("return document.title") == "origin"
    finally:
        for process in orphans:
            with contextlib.suppress(psutil.Error):
                process.kill()

