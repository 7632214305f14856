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
