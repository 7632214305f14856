"""The authorization endpoint: the web UI's sign-in by the authorization code flow with PKCE (RFC 6749 4.1, RFC 7636
with S256 only), shaped as Keycloak's (`/auth/realms/master/protocol/openid-connect/auth`, next to the token
endpoint).

GET shows a minimal server-rendered sign-in form (no script); POST checks the user's password through the auth
service (the same check, lockout and rate limits as the password grant) and answers 303 to the UI's registered
redirect URI with a one-time `code` and the UI's own `state`. The UI then exchanges the code with its `code_verifier`
at the token endpoint (grant_type=authorization_code). The UI never sees the password form's fields and no token ever
travels in a URL.

What is checked, and where:
- the client is the UI's public client and the redirect URI is exactly the UI's page on this gateway (the public URL
  when `RAILYARD_GATEWAY__PUBLIC_URL` is set, else the origin the request came to): a foreign redirect URI is shown an
  error here and never redirected to (RFC 6749 4.1.2.1);
- `response_type=code`, `code_challenge_method=S256` (plain is refused), a 43-character challenge and a `state`;
- the form is CSRF-safe: a random token in a SameSite=Strict, HttpOnly cookie must equal the form's hidden field (a
  page of another site cannot read or set it), and a cross-origin `Origin` is refused. Login CSRF into the UI is also
  stopped by the UI itself, which accepts a code only with the `state` it generated in that tab;
- the page cannot be framed (CSP `frame-ancestors 'none'`) and is never cached.
The auth service binds the code to the client, the redirect URI and the challenge, and spends it on its first
exchange.
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.gateway.errors import error_parts
from services.gateway.ratelimit import TokenEndpointLimits
from services.gateway.source_address import SourceAddress, counted_as
from shared import subjects
from shared.bus import request as bus_request
from shared.errors import Forbidden, InvalidRequest, RailyardError, echo, validation_message
from shared.messages.auth import NAME_CHARS, AuthorizationCodeIssued, AuthorizeUser
from shared.service import Runtime

AUTH_PATH = "/auth/realms/master/protocol/openid-connect/auth"
UI_CLIENT_ID = "railyard-ui"  # the auth service's public client for the UI (services/auth/handlers.py)
CSRF_COOKIE = "railyard_signin_csrf"
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_STATE = 512
PARAMS = ("response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method")
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def registered_redirect_uri(public_url: str, request: Request) -> str:
    """The UI's page on this gateway: the one redirect URI its public client has."""
    if public_url:
        return public_url.rstrip("/") + "/"
    return f"{request.url.scheme}://{request.url.netloc}/"


def checked_params(values: Any, registered: str) -> dict[str, str]:
    """The authorization request's parameters, or InvalidRequest naming the first one that is wrong."""
    params = {name: str(values.get(name) or "") for name in PARAMS}
    if params["client_id"] != UI_CLIENT_ID:  # its first characters and length only: it was repeated whole (a URL's
        # query, up to a 1 MiB form field on POST) in the page, its log line and the answer (session 42)
        raise InvalidRequest(f"unknown client_id {echo(params['client_id'])}: the authorization endpoint signs in the "
                             f"web UI's public client ({UI_CLIENT_ID}) only", code="invalid_client")
    if params["redirect_uri"] != registered:
        raise InvalidRequest(f"redirect_uri must be the registered URI of {UI_CLIENT_ID} exactly ({registered}); "
                             "nothing is sent anywhere else")
    if params["response_type"] != "code":
        raise InvalidRequest("response_type must be code", code="unsupported_response_type")
    if params["code_challenge_method"] != "S256":
        raise InvalidRequest("code_challenge_method must be S256 (PKCE, RFC 7636; plain is not accepted)")
    if not CHALLENGE.fullmatch(params["code_challenge"]):
        raise InvalidRequest("code_challenge must be BASE64URL(SHA-256(code_verifier)) without padding (43 characters"
                             " of A-Z a-z 0-9 - _)")
    if not params["state"] or len(params["state"]) > MAX_STATE:
        raise InvalidRequest(f"state is required (1-{MAX_STATE} characters): the UI checks it comes back")
    return params


def page(params: dict[str, str] | None, csrf: str, *, username: str = "", error: RailyardError | None = None,
         status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """The sign-in form (or, with no params, only the error): no script, styles inline."""
    esc = html.escape
    message = ""
    if error is not None:
        code, msg = error.code, error.msg
        message = (f'<p class="error" id="signin-error" role="alert" data-code="{esc(code)}">{esc(msg)} '
                   f"({esc(code)}, HTTP {status})</p>")
    form = ""
    if params is not None:
        hidden = "".join(f'<input type="hidden" name="{name}" value="{esc(value)}">' for name, value in params.items())
        form = f"""<form class="signin" id="signin" method="post" action="{AUTH_PATH}" aria-labelledby="signin-title">
 <input type="hidden" name="csrf" value="{esc(csrf)}">{hidden}
 <label for="username">Email or user name</label>
 <input id="username" name="username" autocomplete="username" required autofocus value="{esc(username)}">
 <label for="password">Password</label>
 <input id="password" name="password" type="password" autocomplete="current-password" required>
 {message}
 <button type="submit">Sign in</button>
</form>"""
    else:  # a request that cannot be answered with a form: start again from the UI, which makes a good one
        form = f'{message}<p><a href="/">Open the web UI</a> to sign in again.</p>'
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - Railyard</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0;color:#1d2329}}
header{{background:#1f3a5f;color:#fff;padding:.6rem 1rem}} h1{{font-size:1.1rem;margin:0}}
main{{max-width:24rem;margin:3rem auto;padding:1.5rem;border:1px solid #d0d7de;border-radius:6px}}
label{{display:block;margin:.7rem 0 .2rem;font-weight:600}}
input{{width:100%;box-sizing:border-box;padding:.4rem;border:1px solid #8a949e;border-radius:4px}}
button{{margin-top:1rem;padding:.45rem 1rem;border:0;border-radius:4px;background:#1f5f99;color:#fff;font-size:1rem}}
button:focus,input:focus{{outline:3px solid #f0b400;outline-offset:1px}}
.error{{color:#a4161a;margin:.7rem 0 0}}
</style></head>
<body><header><h1>Railyard</h1></header>
<main><h2 id="signin-title">Sign in</h2>
{form}
</main></body></html>"""
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **(headers or {})})


def add_authorize_routes(app: FastAPI, runtime: Runtime, source_address: SourceAddress,
                         limits: TokenEndpointLimits) -> None:
    """GET and POST of the authorization endpoint (module docstring)."""
    settings = runtime.settings
    timeout = settings.nats.request_timeout

    def refused(exc: RailyardError, params: dict[str, str] | None, csrf: str, username: str = "") -> HTMLResponse:
        status, headers, _ = error_parts(exc, "oauth")  # the token endpoint's status and headers for the same error
        headers.pop("Cache-Control", None)
        return page(params, csrf, username=username, error=exc, status=status, headers=headers)

    def with_csrf_cookie(response: Response, request: Request, csrf: str) -> Response:
        response.set_cookie(CSRF_COOKIE, csrf, max_age=900, path=AUTH_PATH, httponly=True, samesite="strict",
                            secure=registered_redirect_uri(settings.gateway.public_url, request).startswith("https:"))
        return response

    @app.get(AUTH_PATH, include_in_schema=False)
    async def authorization_form(request: Request) -> Response:
        """The web UI's sign-in form (authorization code flow with PKCE)."""
        csrf = secrets.token_urlsafe(32)
        try:
            params = checked_params(request.query_params, registered_redirect_uri(settings.gateway.public_url,
                                                                                  request))
        except RailyardError as exc:
            return refused(exc, None, csrf)
        return with_csrf_cookie(page(params, csrf), request, csrf)

    @app.post(AUTH_PATH, include_in_schema=False)
    async def authorization_sign_in(request: Request) -> Response:
        """Check the user's password and send a one-time code to the UI's redirect URI."""
        source = counted_as(source_address.of(request.client.host if request.client else None,
                                              request.headers.getlist(source_address.header)))  # IPv6: its /64
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        params: dict[str, str] | None = None
        username = ""
        try:
            limits.check_source(source)  # before the body is read, as the token endpoint does
            form = await request.form()
            registered = registered_redirect_uri(settings.gateway.public_url, request)
            params = checked_params(form, registered)
            # CSRF and Origin before the name is read: a form another site sent (or an expired one) is shown again
            # without what it typed. Its 403 page repeated the name, of any length up to the 1 MiB a form field may
            # be (Starlette's), in the gateway's own page (review, session 41)
            origin = request.headers.get("origin")
            if origin and origin != "null" and origin != _origin(registered) and origin != _origin(str(request.url)):
                raise Forbidden("this sign-in form was sent from another site")
            sent = str(form.get("csrf") or "")
            if not sent or not hmac.compare_digest(sent, request.cookies.get(CSRF_COOKIE) or ""):
                raise Forbidden("the sign-in form expired or did not come from this page: open the web UI again")
            typed = str(form.get("username") or "").strip()
            username = typed if len(typed) <= NAME_CHARS else ""  # a longer one is refused below, never sent back
            if not typed or not form.get("password"):
                raise InvalidRequest("enter the user name (or email) and the password")
            try:
                cmd = AuthorizeUser(client_id=params["client_id"], redirect_uri=params["redirect_uri"],
                                    code_challenge=params["code_challenge"], username=typed,
                                    password=str(form["password"]), source=source)
            except ValidationError as exc:  # a name over NAME_CHARS, a password over SECRET_CHARS: the page's 400
                raise InvalidRequest(validation_message(exc.errors())) from None
            issued = await bus_request(runtime.broker, subjects.AUTH_AUTHORIZE, cmd, timeout=timeout,
                                       reply_model=AuthorizationCodeIssued)
        except RailyardError as exc:
            return with_csrf_cookie(refused(exc, params, csrf, username), request, csrf)
        query = urlencode({"code": issued.code, "state": params["state"]})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=303, headers=HEADERS)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
