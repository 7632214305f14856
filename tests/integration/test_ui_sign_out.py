"""The web UI's Sign out ends its session at the server, in the real headless Chromium of test_ui.py against the real
stack: the page posts its refresh token to the logout endpoint as its public client (`railyard-ui`, docs/auth.md),
then forgets the tokens. Before, Sign out only cleared the tab's sessionStorage, and the refresh token the page held
(copied out of the tab, or left in a saved page) kept giving new access tokens until it expired."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import TOKEN_PATH, make_account, post
from tests.integration.ui_browser import sign_in_to, waiting

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)


def test_sign_out_ends_the_session_at_the_server(stack, admin, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    account = make_account(stack, admin, "uisignout")
    sign_in_to(browser, stack, account)
    held = json.loads(browser.execute_script("return sessionStorage.getItem('railyard.session')"))
    refresh = held["refresh_token"]
    browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
    waiting(browser).until(ec.visibility_of_element_located((By.ID, "username")))  # on to the sign-in page
    assert browser.execute_script("return sessionStorage.getItem('railyard.session')") is None
    # the refresh token the page held is spent at the server (before: 200 and a new access token); a refused
    # refresh token is a 401 invalid_grant at the token endpoint (docs/auth.md, as Keycloak answers it)
    answer = httpx.post(f"{stack.base_url}{TOKEN_PATH}", timeout=30,
                        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "railyard-ui"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text[:300]
    # and the access token it held is refused (the session revoked, docs/auth.md)
    refused = post(stack, "workspaces/list", held["access_token"])
    assert refused.status_code == 401, refused.text[:300]


# the page's logout calls answer `status` the first `times` times (as a gateway or auth replica going away in a rolling
# update does), the others reach the server; window.logoutAsks counts them
LOGOUT_ANSWERS = """
const [status, times] = arguments; const real = window.fetch; let left = times;
window.logoutAsks = 0;
window.fetch = (url, options) => {
  if (!String(url).endsWith('/openid-connect/logout')) return real(url, options);
  window.logoutAsks += 1;
  if (left-- <= 0) return real(url, options);
  return Promise.resolve(new Response(JSON.stringify({error: 'unavailable', error_description: 'going away'}),
                                      {status, headers: {'Content-Type': 'application/json'}}));
};"""


def _signed_in(stack, admin, browser, name):
    account = make_account(stack, admin, name)
    sign_in_to(browser, stack, account)
    return json.loads(browser.execute_script("return sessionStorage.getItem('railyard.session')"))


def _refreshed(stack, refresh) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{TOKEN_PATH}", timeout=30,
                      data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "railyard-ui"})


def test_sign_out_asks_again_after_a_503(stack, admin, browser):
    """A 503 from the logout endpoint (a rolling update) is asked again within the 10 s: before, the page took it as
    the session ended, forgot the tokens and said nothing, and the refresh token went on giving access tokens."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    held = _signed_in(stack, admin, browser, "uisignout503")
    browser.execute_script(LOGOUT_ANSWERS, 503, 2)
    browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
    waiting(browser).until(ec.visibility_of_element_located((By.ID, "username")))  # on to the sign-in page
    answer = _refreshed(stack, held["refresh_token"])
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_grant", answer.text[:300]


def test_a_session_the_server_did_not_end_is_said(stack, admin, browser):
    """A server that does not end the session (here an older one: 404) still has the tab forget the tokens, and the
    page says the session was not ended (its refresh token works until it expires), as `railyard logout` warns.
    Before, it went to the sign-in page saying nothing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    held = _signed_in(stack, admin, browser, "uisignout404")
    browser.execute_script(LOGOUT_ANSWERS, 404, 99)
    browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
    said = "return (document.querySelector('#signin-error') || {}).textContent || ''"  # none: gone to sign in
    waiting(browser).until(lambda driver: "did not end the session" in driver.execute_script(said),
                           "no word that the session was not ended (before: gone to the sign-in page)")
    assert "HTTP 404" in browser.execute_script(said)
    assert browser.execute_script("return window.logoutAsks") == 1  # a 404 is not asked again
    assert browser.execute_script("return sessionStorage.getItem('railyard.session')") is None
    assert _refreshed(stack, held["refresh_token"]).status_code == 200  # not ended: as the page says
