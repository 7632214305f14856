"""A small Python client for the Railyard API: tokens from the OAuth2 endpoint (password, refresh and
client_credentials grants, refreshed automatically) and JSON calls to `/v1/api/...`.

The test suite and the benchmarks use it; users have the SDK, `railyard_client` (client/, docs/sdk.md).

    client = RailyardClient("http://127.0.0.1:18000", "api-client", client_secret)
    client.login("admin", password)
    client.post("workspaces/list", {})
"""

from __future__ import annotations

import time
from typing import Any

import httpx

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
REFRESH_MARGIN = 30  # seconds before expiry at which a token is refreshed


class RailyardAPIError(Exception):
    """An error answer from the API, with its status and typed code."""

    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(f"{status} {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


class RailyardClient:
    """Talks to one Railyard gateway as one confidential client."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1/api")
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.expires_at = 0.0

    # --- tokens ------------------------------------------------------------------------------------

    def _grant(self, data: dict[str, str]) -> dict[str, Any]:
        response = self.http.post(TOKEN_PATH, data=data, auth=(self.client_id, self.client_secret))
        body = response.json()
        if response.status_code != 200:
            raise RailyardAPIError(response.status_code, body.get("error", "error"),
                                   body.get("error_description", ""))
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token")
        self.expires_at = time.time() + int(body["expires_in"])
        return body

    def login(self, username: str, password: str) -> dict[str, Any]:
        """A user token (and refresh token) for the MLOps API."""
        return self._grant({"grant_type": "password", "username": username, "password": password})

    def refresh(self) -> dict[str, Any]:
        if not self.refresh_token:
            raise RailyardAPIError(401, "unauthorized", "no refresh token: log in again")
        return self._grant({"grant_type": "refresh_token", "refresh_token": self.refresh_token})

    @property
    def token(self) -> str:
        """A valid access token, refreshed when it is about to expire."""
        if self.access_token is None:
            raise RailyardAPIError(401, "unauthorized", "not logged in")
        if self.refresh_token and time.time() > self.expires_at - REFRESH_MARGIN:
            self.refresh()
        return self.access_token

    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # --- calls -------------------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST /v1/api/<path> with a JSON body; the reply's JSON, or RailyardAPIError."""
        response = self.http.post(f"/v1/api/{path.lstrip('/')}", json=body or {}, headers=self.auth_header())
        data = response.json() if response.content else {}
        if response.status_code >= 400:
            raise RailyardAPIError(response.status_code, data.get("code", "error"), data.get("msg", ""))
        return data

    def close(self) -> None:
        self.http.close()
