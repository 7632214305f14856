"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against the real
stack: alice signs in and sees her workspace, model, deployment (with its inference URL) and logged inferences paged
with the cursor; a wrong password shows the API's own message; bob sees none of alice's things. Screenshots of each
page go to build/ui-screenshots/ (not committed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import PASSWORD, TOKEN_PATH, Account
from tests.integration.test_logs import marked, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, infer
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RAILYARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RAILYARD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "ui-screenshots"
WAIT = 30

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"no headless browser: needs {CHROMIUM} and {CHROMEDRIVER} "
                "(Debian: apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="railyard-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page, not just the viewport
        "width": 1280, "height": max(800, min(int(height), 3000)), "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def wait_text(driver, selector: str, text: str) -> None:
    try:
        WebDriverWait(driver, WAIT).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))
    except TimeoutException:
        shown = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"{text!r} not in {selector} after {WAIT} s; the page shows:\n{shown}") from None


def open_page(driver, page: str) -> None:
    """Open a page with the keyboard (Enter on its navigation button) and wait until it has rendered."""
    driver.find_element(By.CSS_SELECTOR, f'nav button[data-page="{page}"]').send_keys(Keys.ENTER)
    try:
        WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
            "const p = document.querySelector('#page'); return p.dataset.page === arguments[0] && "
            "!p.textContent.startsWith('Loading')", page))
    except TimeoutException:
        shown = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"page {page} did not render in {WAIT} s; the page shows:\n{shown}") from None


def sign_in(driver, stack, email: str, password: str) -> None:
    secrets = stack.secrets()
    driver.get(stack.base_url + "/")
    try:
        WebDriverWait(driver, WAIT).until(ec.visibility_of_element_located((By.ID, "username")))
    except TimeoutException:  # a script error leaves the form hidden: show the console
        raise AssertionError(f"no sign-in form; browser console: {driver.get_log('browser')}") from None
    for field, value in (("username", email), ("password", password), ("client_id", secrets["client_id"]),
                         ("client_secret", secrets["client_secret"])):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "client_secret").send_keys(Keys.ENTER)  # submits the form from the keyboard


def page_text(driver) -> str:
    return driver.find_element(By.ID, "page").text


def test_alice_sees_her_things_and_bob_none(stack, alice: Account, bob: Account, browser):
    _upload_bytes(stack, alice, "uimodel", ccfraud_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "uimodel"}]}}]}
    deployment, url, _ = _deploy_definition(stack, alice, "uipipe", definition)
    assert infer(url, alice.token, marked(range(12))).status_code == 200
    wait_rows(stack, alice, "uipipe", 12)

    # a wrong password shows the token endpoint's own message
    wrong = httpx.post(f"{stack.base_url}{TOKEN_PATH}", data={
        "grant_type": "password", "username": alice.email, "password": "not-her-password",
        "client_id": stack.secrets()["client_id"], "client_secret": stack.secrets()["client_secret"]}, timeout=30)
    assert wrong.status_code in (400, 401), wrong.text
    api_message = wrong.json().get("error_description") or wrong.json().get("msg")
    sign_in(browser, stack, alice.email, "not-her-password")
    wait_text(browser, "#signin-error", api_message)
    assert not browser.find_element(By.ID, "signin-error").get_attribute("hidden")
    shot(browser, "01-sign-in-error")

    sign_in(browser, stack, alice.email, PASSWORD)
    wait_text(browser, "#who", alice.email)
    assert "token" not in browser.current_url and "access" not in browser.current_url
    stored = browser.execute_script("return sessionStorage.getItem('railyard.session')")
    assert stored and alice.token.split(".")[0] in stored  # kept in this tab's sessionStorage
    assert browser.execute_script("return localStorage.length") == 0

    open_page(browser, "workspaces")
    listed = alice.client.post("workspaces/list", {})["workspaces"]
    workspace_name = next(w["name"] for w in listed if w["id"] == alice.workspace_id)
    assert all(w["name"] in page_text(browser) for w in listed)
    Select(browser.find_element(By.ID, "workspace")).select_by_value(str(alice.workspace_id))  # her test workspace
    open_page(browser, "workspaces")
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Members of {workspace_name}"]').send_keys(Keys.ENTER)
    wait_text(browser, "#members", "OWNER")
    wait_text(browser, "#members", alice.email)  # members by email (users/query of the workspace)
    shot(browser, "02-workspaces")

    open_page(browser, "models")
    text = page_text(browser)
    assert "uimodel" in text and "ready" in text.lower(), text
    shot(browser, "03-models")

    open_page(browser, "pipelines")
    wait_text(browser, "#page", deployment)
    text = page_text(browser)
    assert "uipipe" in text and url in text and "Running" in text, text
    assert f'client.infer("{deployment}", "uipipe"' in text  # the SDK's <deploy_id>-<id> and pipeline name
    shot(browser, "04-pipelines")

    open_page(browser, "logs")
    Select(browser.find_element(By.ID, "log-size")).select_by_value("10")
    wait_text(browser, "#page", "10 row(s)")
    first = browser.find_elements(By.CSS_SELECTOR, "#log-rows tbody tr")
    assert len(first) == 10
    assert '"tensor":[11,' in first[0].text  # newest first: the last record marked 11
    shot(browser, "05-logs")
    browser.find_element(By.ID, "log-older").send_keys(Keys.ENTER)  # the next page, through the cursor
    wait_text(browser, "#page", "2 row(s)")
    older = browser.find_elements(By.CSS_SELECTOR, "#log-rows tbody tr")
    assert len(older) == 2 and '"tensor":[0,' in older[-1].text
    assert browser.find_element(By.ID, "log-older").get_attribute("disabled")
    browser.find_element(By.ID, "log-newer").send_keys(Keys.ENTER)
    wait_text(browser, "#page", "10 row(s)")

    # bob, in the same browser after signing out, sees none of it
    browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
    WebDriverWait(browser, WAIT).until(ec.visibility_of_element_located((By.ID, "username")))
    assert browser.execute_script("return sessionStorage.getItem('railyard.session')") is None
    sign_in(browser, stack, bob.email, PASSWORD)
    wait_text(browser, "#who", bob.email)
    open_page(browser, "workspaces")
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "workspace")).options]
    assert str(bob.workspace_id) in options and str(alice.workspace_id) not in options
    assert workspace_name not in page_text(browser)
    for workspace in options:  # every workspace bob belongs to
        Select(browser.find_element(By.ID, "workspace")).select_by_value(workspace)
        for page in ("models", "pipelines", "logs"):
            open_page(browser, page)
            text = page_text(browser)
            assert "uimodel" not in text and "uipipe" not in text and url not in text, (page, text)
    Select(browser.find_element(By.ID, "workspace")).select_by_value(str(bob.workspace_id))
    open_page(browser, "logs")
    assert "No pipelines in this workspace." in page_text(browser)
    shot(browser, "06-bob-logs")
