"""The web UI's sign-in as its page does it, for tests: the authorization endpoint's form (authorization code flow
with PKCE, S256), then the code's exchange at the token endpoint (services/gateway/authorize.py)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field

import httpx

AUTH_PATH = "/auth/realms/master/protocol/openid-connect/auth"
TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
UI_CLIENT = "railyard-ui"


def challenge(verifier: str) -> str:
    """RFC 7636 S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def error_code(response: httpx.Response) -> str:
    """The typed error of the sign-in page (its `data-code`), or of a JSON answer."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()["error"]
    found = re.search(r'data-code="([^"]+)"', response.text)
    return found.group(1) if found else ""


@dataclass
class UiSignIn:
    """One browser tab signing in: its own verifier, state and CSRF cookie (the HTTP client's jar)."""

    http: httpx.Client
    redirect_uri: str
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    csrf: str = ""

    def params(self, **override: str) -> dict[str, str]:
        return {"response_type": "code", "client_id": UI_CLIENT, "redirect_uri": self.redirect_uri,
                "state": self.state, "code_challenge": challenge(self.verifier), "code_challenge_method": "S256",
                **override}

    def open_form(self, headers: dict[str, str] | None = None, **override: str) -> httpx.Response:
        """GET the sign-in form (keeps its CSRF token)."""
        response = self.http.get(AUTH_PATH, params=self.params(**override), headers=headers or {})
        found = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def submit(self, username: str, password: str, headers: dict[str, str] | None = None,
               **override: str) -> httpx.Response:
        """POST the form (the form must have been opened); a success is a 303 to the redirect URI with the code."""
        return self.http.post(AUTH_PATH, headers=headers or {}, follow_redirects=False, data={
            **self.params(**override), "csrf": self.csrf, "username": username, "password": password})

    def code(self, response: httpx.Response) -> str:
        assert response.status_code == 303, response.text
        location = httpx.URL(response.headers["location"])
        assert str(location.copy_with(query=None)) == self.redirect_uri, location
        assert location.params["state"] == self.state
        return location.params["code"]

    def exchange(self, code: str, **override: str) -> httpx.Response:
        return self.http.post(TOKEN_PATH, data={
            "grant_type": "authorization_code", "client_id": UI_CLIENT, "code": code, "code_verifier": self.verifier,
            "redirect_uri": self.redirect_uri, **override})


def ui_tab(http: httpx.Client, base_url: str) -> UiSignIn:
    return UiSignIn(http, base_url.rstrip("/") + "/")


def ui_tokens(stack, username: str, password: str) -> dict:
    """Sign in as the web UI does; its tokens."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        tab = ui_tab(http, stack.base_url)
        assert tab.open_form().status_code == 200
        exchanged = tab.exchange(tab.code(tab.submit(username, password)))
        assert exchanged.status_code == 200, exchanged.text
        return exchanged.json()
