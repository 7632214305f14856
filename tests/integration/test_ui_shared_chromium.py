"""The test process's one headless Chromium (tests/integration/ui_browser.py, Chromium; conftest's `ui_chromium`),
which every UI module takes fresh: what one module leaves must not reach the next, and a browser an earlier module
broke is launched again, so one broken module does not fail every later UI module of the worker. No stack needed: a
local page stands in for the stack's origin. The first two tests take the session's one (a dead driver left by the
second is launched again by its own fresh()); the third's child pytest launches its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tests.integration import ui_browser

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


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
def chromium(ui_chromium):
    """The test process's Chromium, as the UI modules take it (skipped without one; failed with
    RAILYARD_TEST_REQUIRE_BROWSER=1). A launch and quit of one of the test's own was ~1.3 s of CPU (chromedriver and
    Chromium) and 2-16 s of the worker's time under load, twice a run; what these tests leave (windows, storage, a
    dead driver) is what the next UI module's fresh() is there to undo, and the second test checks it does."""
    yield ui_chromium
    ui_chromium.leave()


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
    """A module that leaves the browser unusable costs that module only: the next module's fresh() launches it again,
    and the Chromium of the driver that died is stopped. Before, a chromedriver that had died (killed, out of memory)
    raised urllib3's MaxRetryError, not a WebDriverException, out of fresh(): every later UI module of the worker
    errored in its set-up; and its Chromium (the chromedriver's child: nobody quits it) ran on with its pages until
    the machine stopped, a browser's memory and CPU on a 2-core CI."""
    driver = chromium.fresh(origin)
    driver.get(origin + "/")
    orphans = psutil.Process(driver.service.process.pid).children(recursive=True)  # its Chromium
    assert orphans
    try:
        os.kill(driver.service.process.pid, signal.SIGKILL)
        driver.service.process.wait(10)

        again = chromium.fresh(origin)
        again.get(origin + "/")
        assert again.execute_script("return document.title") == "origin"
        gone, running = psutil.wait_procs(orphans, timeout=10)
        assert not running, f"the dead driver's Chromium runs on: {[p.cmdline()[:2] for p in running]}"
    finally:
        for process in orphans:
            with contextlib.suppress(psutil.Error):
                process.kill()


CHILD_CONFTEST = '''
import threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tests.integration.conftest import ui_chromium  # noqa: F401 - the suite's own session Chromium

TICKS = []


class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/tick":
            TICKS.append(time.monotonic())
        body = b"<!doctype html><script>setInterval(() => fetch('/tick'), 50)</script><p>a page that polls"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def stack():  # a stand-in: the stack's origin, a page of it that keeps polling it (as the UI's timers do)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(base_url=f"http://127.0.0.1:{server.server_address[1]}", ticks=TICKS)
    server.shutdown()
'''

CHILD_UI_MODULE = '''
import time

from tests.integration.ui_browser import browser  # noqa: F401


def test_a_ui_module_leaves_its_page_open(browser, stack):
    browser.get(stack.base_url + "/")
    deadline = time.monotonic() + 30
    while len(stack.ticks) < 3:
        assert time.monotonic() < deadline, "the page never polled"
        time.sleep(0.05)
'''

CHILD_LATER_MODULE = '''
import time


def test_nothing_of_the_ui_module_runs_on_in_a_later_file(stack):
    time.sleep(1.0)  # a poll the page sent as the module ended has landed (a loaded machine: 1 s)
    before = len(stack.ticks)
    time.sleep(1.0)  # the page polled every 50 ms: ~20 polls in this window if it still ran
    assert len(stack.ticks) == before, f"{len(stack.ticks) - before} polls of the UI module's page in 1 s"
'''


def test_a_ui_modules_pages_stop_when_it_ends(tmp_path):
    """The next file (a UI one or not) runs with none of the UI module's pages open: each module quit its own browser
    before, the shared one's tab stayed on the module's last page until the next UI module, or the end of the
    session, its timers running against the stack (the UI's token refresh, a followed run's log reads every 1.5 s).
    Two modules in a child pytest with the suite's `browser` and `ui_chromium`, a stand-in stack's page polling it
    every 50 ms: before, it polled on through the later module (~20 polls in 1 s)."""
    if ui_browser.MISSING and not ui_browser.REQUIRE_BROWSER:
        pytest.skip(ui_browser.MISSING)
    ui_browser.require_browser()
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CHILD_CONFTEST)
    (tmp_path / "test_a_ui.py").write_text(CHILD_UI_MODULE)
    (tmp_path / "test_b_later.py").write_text(CHILD_LATER_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                           str(tmp_path / "test_a_ui.py"), str(tmp_path / "test_b_later.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
