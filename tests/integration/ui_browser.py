"""The headless Chromium the UI tests drive (Debian's chromium + chromedriver, through Selenium), and the helpers
they share: importing this module needs no browser. A test that takes the `browser` fixture is skipped when there is
none (a failure with RAILYARD_TEST_REQUIRE_BROWSER=1, as .ci/run sets), and only that test: the API tests in the
same file run. Before, the files mixing API and UI tests took the fixture from test_ui.py, whose import skips its
whole module without a browser, and so skipped their API tests too (tests/unit/test_ui_browser_fixture.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import psutil
import pytest

from tests.integration.conftest import PASSWORD

CHROMIUM = os.environ.get("RAILYARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RAILYARD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 30
# how often a wait looks again: with Selenium's default 0.5 s a wait not met at its first look (a page drawn after a
# click, a text shown after a read: 50-300 ms) lasted 0.5 s or more, ~0.25 s longer than its condition took. Counted
# over test_ui.py and the list, older, members and sign-in pages (~290 waits): 96 s asleep between looks, 41-50 s at
# 0.1 s; a look is one script run in the page, ~4 ms of CPU (test process, chromedriver and Chromium)
POLL = 0.1

# RAILYARD_TEST_REQUIRE_BROWSER=1 (set by .ci/run): no browser is a failure of every UI test, not a skip (a CI
# machine that lost its Chromium would otherwise pass without testing the UI at all)
REQUIRE_BROWSER = os.environ.get("RAILYARD_TEST_REQUIRE_BROWSER", "") == "1"
MISSING = None
try:  # with selenium and no browser too: the wait helpers are unit-tested without one (test_ui_browser_waiting.py)
    import urllib3
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    MISSING = "selenium is not installed (pip install -e '.[dev]')"
if MISSING is None and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    MISSING = (f"no headless browser: needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium "
               "chromium-driver; `make test` installs them when run as root)")


def require_browser() -> None:
    if MISSING:
        pytest.fail(f"{MISSING}; RAILYARD_TEST_REQUIRE_BROWSER=1 makes that a failure, not a skip", pytrace=False)


# Chromium's singleton socket, <TMPDIR>/org.chromium.Chromium.XXXXXX/SingletonSocket: a Unix socket's path holds at
# most 107 bytes (sun_path's 108 with its NUL)
SINGLETON_SOCKET_TAIL = len("/org.chromium.Chromium.XXXXXX/SingletonSocket")
SOCKET_PATH_MAX = 107


class Chromium:
    """The test process's one headless Chromium (tests/integration/conftest.py's `ui_chromium`): ten files each
    launched and quit their own, 1.5-2 s a module at load 11 (a launch 5.3 s at load 18, 12.6 s the first time)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="railyard-ui-chromium-")
        self.driver = None
        self.browsers: list[psutil.Process] = []  # the chromedriver's Chromium, stopped by quit() if it is left

    def launch(self):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,900", f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
            executable_path=CHROMEDRIVER, env=self.environment()))
        with contextlib.suppress(psutil.Error):
            self.browsers = psutil.Process(self.driver.service.process.pid).children()
        self.driver.set_page_load_timeout(WAIT)
        return self.driver

    def environment(self) -> dict[str, str]:
        """chromedriver's (and so Chromium's) environment: Chromium's own temporary folders (its singleton socket's,
        its scoped dirs) inside the profile, which quit() removes: in the temporary directory, a browser that was
        killed or crashed left two folders there a launch. Not where the singleton socket's path would not fit a
        socket address: Chromium aborts then ("Socket path too long"), so a TMPDIR of more than ~28 characters
        failed every UI test; its temporary folders stay in the temporary directory there, as before."""
        scratch = self.scratch()
        if scratch is None:
            return dict(os.environ)
        os.makedirs(scratch, exist_ok=True)
        return {**os.environ, "TMPDIR": scratch}

    def scratch(self) -> str | None:
        """The browser's temporary directory inside its profile, or None where its singleton socket would not fit."""
        scratch = os.path.join(self.profile, "tmp")
        return None if len(os.fsencode(scratch)) + SINGLETON_SOCKET_TAIL > SOCKET_PATH_MAX else scratch

    def fresh(self, origin: str):
        """The browser as a module's own new one would be: a new tab (sessionStorage is a tab's), no cookies, no
        cached responses, nothing stored for `origin` (the stack's: local storage, IndexedDB, caches). Launched
        again if an earlier module left it unusable."""
        if self.driver is None:
            return self.launch()
        try:
            self.one_blank_tab()
            self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
            self.driver.execute_cdp_cmd("Network.clearBrowserCache", {})
            self.driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
            self.driver.get_log("browser")  # an earlier module's console messages are not this one's
        except (WebDriverException, urllib3.exceptions.HTTPError, OSError):  # a chromedriver gone: urllib3's errors
            self.quit()
            self.profile = tempfile.mkdtemp(prefix="railyard-ui-chromium-")
            return self.launch()
        return self.driver

    def one_blank_tab(self) -> None:
        """A new tab, every other closed: the module's own and any window it opened, whose pages stop."""
        self.driver.switch_to.new_window("tab")
        new = self.driver.current_window_handle
        for handle in self.driver.window_handles:
            if handle != new:
                self.driver.switch_to.window(handle)
                self.driver.close()
        self.driver.switch_to.window(new)

    def leave(self) -> None:
        """At a module's end: its pages stop, so nothing of it runs against the stack in the files after it (the UI's
        token refresh, a followed run's log reads every 1.5 s), as when each module quit its own browser. A browser
        left unusable is the next fresh()'s to launch again."""
        if self.driver is not None:
            with contextlib.suppress(WebDriverException, urllib3.exceptions.HTTPError, OSError):
                self.one_blank_tab()

    def quit(self) -> None:
        if self.driver is not None:
            with contextlib.suppress(WebDriverException, urllib3.exceptions.HTTPError, OSError):
                self.driver.quit()
            self.driver = None
        # a chromedriver that died left its Chromium running (no one else quits it): it and what it started
        for browser in self.browsers:
            with contextlib.suppress(psutil.Error):
                for process in [*browser.children(recursive=True), browser]:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
        self.browsers = []
        shutil.rmtree(self.profile, ignore_errors=True)


def chromium():
    """For conftest's session fixture: the process's Chromium (launched by the first module that takes `browser`);
    without a browser, the test taking it is skipped (failed with REQUIRE_BROWSER)."""
    if MISSING and not REQUIRE_BROWSER:
        pytest.skip(MISSING)
    require_browser()
    shared = Chromium()
    try:
        yield shared
    finally:
        shared.quit()


@pytest.fixture(scope="module")
def browser(ui_chromium, stack):
    """A headless Chromium for the module: the test process's one, fresh for each module (Chromium.fresh), its pages
    stopped at the module's end (Chromium.leave)."""
    yield ui_chromium.fresh(stack.base_url)
    ui_chromium.leave()


# chromedriver's error for a command that met the page being replaced (a sign-out's redirect to the sign-in page while
# a wait looked for its form: test_ui.py's test_bob_sees_none_of_it under load). The W3C error "aborted by navigation"
# has no class of its own in Selenium: a plain WebDriverException whose message starts so
NAVIGATING = "aborted by navigation"


def through_navigation(method):
    """The wait's condition, with a look that met a navigation in progress taken as not met yet (looked at again until
    the wait's deadline); any other error is raised as before."""
    def look(driver):
        try:
            return method(driver)
        except WebDriverException as error:
            if not (error.msg or "").startswith(NAVIGATING):
                raise
            return False
    return look


def waiting(driver, **options) -> WebDriverWait:
    """A wait of at most WAIT seconds, looking every POLL, through a navigation in progress (through_navigation)."""
    wait = WebDriverWait(driver, WAIT, poll_frequency=POLL, **options)
    until = wait.until
    wait.until = lambda method, message="": until(through_navigation(method), message)
    return wait


def shown(driver) -> str:
    return (f"the page shows:\n{driver.execute_script('return document.body.innerText')}\n"
            f"console: {driver.get_log('browser')}")


def wait_text(driver, selector: str, text: str) -> None:
    try:
        waiting(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))
    except TimeoutException:
        raise AssertionError(f"{text!r} not in {selector} after {WAIT} s; {shown(driver)}") from None


def wait_for(driver, script: str, *args, what: str = "condition") -> None:
    try:
        waiting(driver).until(lambda d: d.execute_script(script, *args))
    except TimeoutException:
        raise AssertionError(f"{what} not met after {WAIT} s; {shown(driver)}") from None


def rendered(driver, page: str) -> None:
    wait_for(driver, "const p = document.querySelector('#page'); return p.dataset.page === arguments[0] && "
             "!p.textContent.startsWith('Loading')", page, what=f"page {page} rendered")


def open_page(driver, page: str) -> None:
    """Open a page with the keyboard (Enter on its navigation button) and wait until it has rendered."""
    driver.execute_script("document.querySelector('#page').dataset.page = ''")
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-page="{page}"]').send_keys(Keys.ENTER)
    rendered(driver, page)


def page_text(driver) -> str:
    return driver.find_element(By.ID, "page").text


def sign_in(driver, stack, email: str, password: str) -> None:
    """Sign in with the user name and password only, on the gateway's sign-in page, where the UI sends the browser
    (authorization code flow with PKCE): no client fields (its client is public)."""
    driver.get(stack.base_url + "/")
    try:
        waiting(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    except TimeoutException:  # a script error leaves the form hidden: show the console
        raise AssertionError(f"no sign-in form; browser console: {driver.get_log('browser')}") from None
    assert driver.current_url.startswith(stack.base_url + "/auth/realms/master/protocol/openid-connect/auth?")
    assert "code_challenge_method=S256" in driver.current_url and "code_challenge=" in driver.current_url
    # no client id or secret to type
    assert len(driver.find_elements(By.CSS_SELECTOR, "#signin input:not([type=hidden])")) == 2
    for field, value in (("username", email), ("password", password)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "password").send_keys(Keys.ENTER)  # submits the form from the keyboard


def pick_workspace(driver, workspace_id: int) -> None:
    """Pick the workspace in the header's select, again if the page was refilling its options meanwhile
    (loadWorkspaces' replaceChildren: an option found before is stale; seen in a fresh-clone CI under load)."""
    def picked(d) -> bool:
        Select(d.find_element(By.ID, "workspace")).select_by_value(str(workspace_id))
        return d.find_element(By.ID, "workspace").get_attribute("value") == str(workspace_id)

    waiting(driver, ignored_exceptions=(StaleElementReferenceException,)).until(picked)


def sign_in_to(driver, stack, account, *, keep: bool = False) -> None:
    """Signs the account in (out of any session an earlier test left in this tab) and picks its workspace.

    keep: a session of this account already in the tab is kept (the page loaded again, so nothing an earlier test left
    in the page's state stays; signed in again when that session had ended), and the workspaces page is drawn again
    once the workspace is picked: test_ui.py's tests, which each start from here as the same few users."""
    kept = False
    if keep:
        who = "return (document.querySelector('#who') || {}).textContent || ''"
        kept = (driver.current_url.startswith(stack.base_url) and account.email in driver.execute_script(who)
                and driver.execute_script("return sessionStorage.getItem('railyard.session')"))
        if kept:
            driver.get(stack.base_url + "/")
            waiting(driver).until(
                lambda d: d.find_elements(By.ID, "username") or account.email in d.execute_script(who))
            kept = not driver.find_elements(By.ID, "username")  # else the kept session had ended: the sign-in page
    if not kept:
        if driver.current_url.startswith(stack.base_url):
            driver.execute_script("sessionStorage.clear()")
        sign_in(driver, stack, account.email, PASSWORD)
    wait_text(driver, "#who", account.email)
    open_page(driver, "workspaces")
    pick_workspace(driver, account.workspace_id)
    if keep:
        open_page(driver, "workspaces")
