"""The gateway's sign-in routes, in process, with a user name over NAME_CHARS (254): the token endpoint answers
OAuth2's 400 invalid_request and the sign-in page its own error (400), and neither asks the auth service. The
command's validation error was caught by neither route: a 500 'internal error', logged as unhandled (the bus's
400 in tests/unit/test_auth_name_bound.py came only for a command that reached auth some other way).
Likewise a password or client secret over SECRET_CHARS (4096) and a refresh token over TOKEN_CHARS (8192), which
were sent on whatever their length (up to the 2 MiB body; session 42), and an authorization code, PKCE verifier,
scope or client id (CODE_CHARS, CODE_VERIFIER_CHARS, SCOPE_CHARS, CLIENT_ID_CHARS; the client id was also its bucket's
key, ratelimit.py); and the sign-in page's 403 (another site's
form, an expired one) shows the form again without the name it was sent."""

from __future__ import annotations

import pytest

from services.gateway.ratelimit import TokenEndpointLimits
from shared.errors import ECHO_CHARS
from shared.messages.auth import (
    CLIENT_ID_CHARS,
    CODE_CHARS,
    CODE_VERIFIER_CHARS,
    NAME_CHARS,
    REDIRECT_URI_CHARS,
    SCOPE_CHARS,
    SECRET_CHARS,
    TOKEN_CHARS,
)
from shared.settings import Settings
from tests.integration.pkce import TOKEN_PATH, UiSignIn, error_code
from tests.unit.gateway_sign_in_routes import gateway_app, sign_in_routes

LONG = "a" * (NAME_CHARS + 1 - len("@example.com")) + "@example.com"


@pytest.fixture(scope="module")
def app():
    """One gateway app for the module's tests (each built its own: ~0.3 s of CPU, 22 times): each test still gets its
    own client, cookies and list of what reached auth. Its token endpoints' buckets are the one thing an app keeps
    from a test to the next; none of these tests is about them (test_gateway_limits.py is), and with the default
    burst of 50 the module's ~50 token requests would be refused a 429 late in the module at a fast pace: the shared
    app's buckets do not run out."""
    return gateway_app(Settings(gateway={"token_burst_per_source": 1_000_000, "token_burst_per_client": 1_000_000}))


@pytest.fixture
def gateway(monkeypatch, app):
    with sign_in_routes(monkeypatch, app) as (client, asked):
        yield client, asked


def test_the_token_endpoint_answers_400_invalid_request_for_a_name_over_the_bound(gateway):
    client, asked = gateway

    def token(username: str):
        return client.post(TOKEN_PATH, auth=("api-client", "s3cret"),
                           data={"grant_type": "password", "username": username, "password": "p"})

    refused = token(LONG)
    assert refused.status_code == 400, refused.text  # was: 500 internal error
    body = refused.json()
    assert body["error"] == "invalid_request" and body["code"] == "invalid_request", body
    assert "username" in body["error_description"] and str(NAME_CHARS) in body["error_description"], body
    assert refused.headers["cache-control"] == "no-store" and asked == []
    assert token(LONG[1:]).status_code == 200 and len(asked) == 1  # at the bound: sent on


def test_the_sign_in_page_answers_its_400_for_a_name_over_the_bound(gateway):
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200 and tab.csrf
    refused = tab.submit(LONG, "p")
    assert refused.status_code == 400, refused.text  # was: 500 internal error
    assert refused.headers["content-type"].startswith("text/html") and error_code(refused) == "invalid_request"
    assert "username" in refused.text and str(NAME_CHARS) in refused.text
    assert LONG not in refused.text and 'id="signin"' in refused.text  # the form again, without the long name
    assert asked == []
    signed_in = tab.submit(LONG[1:], "p")
    assert signed_in.status_code == 303 and len(asked) == 1, signed_in.text  # at the bound: sent on


LOGOUT_PATH = "/auth/realms/master/protocol/openid-connect/logout"
CODE_GRANT = {"grant_type": "authorization_code", "client_id": "railyard-ui", "code": "c" * 43,
              "code_verifier": "v" * 43, "redirect_uri": "http://testserver/"}
OVER = [  # (route, form, what is over its bound, the bound); the client authenticates as api-client / s3cret
    (TOKEN_PATH, {"grant_type": "password", "username": "alice", "password": "p" * SECRET_CHARS}, "password",
     SECRET_CHARS),
    # (a refresh token over TOKEN_CHARS is invalid_grant: test_a_refresh_token_over_its_bound_is_invalid_grant...)
    (TOKEN_PATH, {"grant_type": "client_credentials", "client_id": "api-client", "client_secret": "s" * SECRET_CHARS},
     "client_secret", SECRET_CHARS),
    (LOGOUT_PATH, {"refresh_token": "a.b.c", "client_id": "api-client", "client_secret": "s" * SECRET_CHARS},
     "client_secret", SECRET_CHARS),
    # and the authorization_code grant's code (hashed, looked up and spent by auth) and PKCE verifier, any scope, and a
    # client id (a client_credentials grant's became its bucket's key): each sent on whatever its length before
    (TOKEN_PATH, CODE_GRANT | {"code": "c" * CODE_CHARS}, "code", CODE_CHARS),
    (TOKEN_PATH, CODE_GRANT | {"code_verifier": "v" * CODE_VERIFIER_CHARS}, "code_verifier", CODE_VERIFIER_CHARS),
    (TOKEN_PATH, {"grant_type": "password", "username": "alice", "password": "p", "scope": "s" * SCOPE_CHARS}, "scope",
     SCOPE_CHARS),
    (TOKEN_PATH, {"grant_type": "client_credentials", "client_id": "i" * CLIENT_ID_CHARS, "client_secret": "s"},
     "client_id", CLIENT_ID_CHARS),
    (LOGOUT_PATH, {"refresh_token": "a.b.c", "client_id": "i" * CLIENT_ID_CHARS, "client_secret": "s"}, "client_id",
     CLIENT_ID_CHARS),
    # and the code grant's redirect URI, compared only after the code was spent (session 42, later)
    (TOKEN_PATH, CODE_GRANT | {"redirect_uri": "http://testserver/" + "r" * (REDIRECT_URI_CHARS - 18)}, "redirect_uri",
     REDIRECT_URI_CHARS),
]


@pytest.mark.parametrize("path, form, field, bound", OVER, ids=[f"{p.rsplit('/', 1)[1]}-{f}" for p, _, f, _ in OVER])
def test_a_secret_or_token_over_its_bound_is_400_invalid_request_before_anything_is_hashed_or_sent(
        gateway, monkeypatch, path, form, field, bound):
    client, asked = gateway
    digests = []  # a client_credentials grant spends the bucket keyed by the secret's SHA-256: not over the bound
    check_client = TokenEndpointLimits.check_client

    def spent(self, client_id, secret, grant_type):
        if grant_type == "client_credentials":
            digests.append(client_id)
        return check_client(self, client_id, secret, grant_type)

    monkeypatch.setattr(TokenEndpointLimits, "check_client", spent)

    def post(value: str):
        data = form | {field: value}
        return client.post(path, data=data, auth=None if "client_id" in data else ("api-client", "s3cret"))

    refused = post(form[field] + "x")
    assert refused.status_code == 400, refused.text  # was: sent on (200, 204), whatever its length
    body = refused.json()
    assert body["error"] == "invalid_request" and field in body["error_description"], body
    assert str(bound) in body["error_description"] and len(refused.text) < 500, body  # not repeated back
    assert refused.headers["cache-control"] == "no-store"
    assert asked == [] and digests == []
    assert post(form[field]).status_code in (200, 204) and len(asked) == 1  # at the bound: sent on


@pytest.mark.parametrize("path, form, status", [(TOKEN_PATH, {"grant_type": "refresh_token"}, 401),
                                                 (LOGOUT_PATH, {}, 400)], ids=["token", "logout"])
def test_a_refresh_token_over_its_bound_is_invalid_grant_as_any_refresh_token_not_ours(gateway, path, form, status):
    """A refresh token over TOKEN_CHARS (8192) is none this server issued: RFC 6749 5.2's invalid_grant (a refresh
    token "invalid, expired, revoked"), with the status each route gives any refresh token not ours (the refresh
    grant's 401, logout's 400: docs/auth.md), before anything is sent. Before, the token route answered 400
    invalid_request (the request malformed) while logout answered invalid_grant."""
    client, asked = gateway

    def post(value: str):
        return client.post(path, data=form | {"refresh_token": value}, auth=("api-client", "s3cret"))

    refused = post("r" * (TOKEN_CHARS + 1))
    assert refused.status_code == status, refused.text  # the token route's was 400
    body = refused.json()
    assert body["error"] == body["code"] == "invalid_grant" and "refresh token" in body["error_description"], body
    assert str(TOKEN_CHARS) in body["error_description"] and len(refused.text) < 500, body  # not repeated back
    assert refused.headers["cache-control"] == "no-store"
    assert asked == []
    assert post("r" * TOKEN_CHARS).status_code in (200, 204) and len(asked) == 1  # at the bound: sent on


@pytest.mark.parametrize("path", [TOKEN_PATH, LOGOUT_PATH], ids=["token", "logout"])
def test_a_client_secret_over_its_bound_in_http_basic_is_401_invalid_client_as_a_long_client_id(gateway, monkeypatch,
                                                                                                path):
    """docs/auth.md says "form or HTTP Basic": the cases above send the secret as a form field; a confidential
    client's SDK sends it in the Authorization header, decoded apart (http.py `_client_credentials`). There a failed
    client authentication is RFC 6749 5.2's 401 invalid_client with WWW-Authenticate, as for a client id over its
    bound (below): it was 400 invalid_request, the form's answer (session 42)."""
    client, asked = gateway
    digests = []  # every call of the client's bucket (a client_credentials grant takes the secret's digest there)
    monkeypatch.setattr(TokenEndpointLimits, "check_client", lambda self, *args: digests.append(args))
    form = {"grant_type": "client_credentials", "refresh_token": "a.b.c"}
    refused = client.post(path, data=form, auth=("api-client", "s" * (SECRET_CHARS + 1)))
    assert refused.status_code == 401, refused.text  # was: 400 invalid_request
    body = refused.json()
    assert body["error"] == "invalid_client" and "client_secret" in body["error_description"], body
    assert str(SECRET_CHARS) in body["error_description"] and len(refused.text) < 500, body
    assert refused.headers["www-authenticate"] and refused.headers["cache-control"] == "no-store"
    assert asked == [] and digests == []
    taken = client.post(path, data=form, auth=("api-client", "s" * SECRET_CHARS))
    assert taken.status_code in (200, 204) and len(asked) == len(digests) == 1, taken.text  # at the bound


@pytest.mark.parametrize("path", [TOKEN_PATH, LOGOUT_PATH], ids=["token", "logout"])
def test_a_client_id_over_its_bound_in_http_basic_is_401_invalid_client_before_its_bucket(gateway, monkeypatch, path):
    """Decision (docs/auth.md, "Brute force"): sent in HTTP Basic, a client id no client of ours can have is the
    client's authentication failing (an unknown client), RFC 6749 5.2's invalid_client, which a client that
    authenticated in the Authorization header MUST get as 401 with WWW-Authenticate; as a form field it is a malformed
    parameter, 400 invalid_request (above). Before, the id was its bucket's key (a client_credentials grant) and sent
    to auth, whatever its length."""
    client, asked = gateway
    digests = []  # every call of the client's bucket (its key holds the client id)
    monkeypatch.setattr(TokenEndpointLimits, "check_client", lambda self, *args: digests.append(args))
    form = {"grant_type": "client_credentials", "refresh_token": "a.b.c"}
    refused = client.post(path, data=form, auth=("i" * (CLIENT_ID_CHARS + 1), "s3cret"))
    assert refused.status_code == 401, refused.text
    body = refused.json()
    assert body["error"] == "invalid_client" and "client_id" in body["error_description"], body
    assert str(CLIENT_ID_CHARS) in body["error_description"] and len(refused.text) < 500, body
    assert refused.headers["www-authenticate"] and refused.headers["cache-control"] == "no-store"
    assert asked == [] and digests == []
    taken = client.post(path, data=form, auth=("i" * CLIENT_ID_CHARS, "s3cret"))
    assert taken.status_code in (200, 204) and len(asked) == len(digests) == 1, taken.text  # at the bound


def test_the_sign_in_page_answers_its_400_for_a_password_over_the_bound_and_keeps_the_name(gateway):
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200
    refused = tab.submit("alice@example.com", "p" * (SECRET_CHARS + 1))
    assert refused.status_code == 400 and error_code(refused) == "invalid_request", refused.text  # was: sent on
    assert "password" in refused.text and str(SECRET_CHARS) in refused.text and len(refused.text) < 4096
    assert 'value="alice@example.com"' in refused.text and asked == []  # the form again, the name kept
    assert tab.submit("alice@example.com", "p" * SECRET_CHARS).status_code == 303 and len(asked) == 1


@pytest.mark.parametrize("how", ["another-sites-origin", "another-csrf-token"])
def test_the_sign_in_pages_403_does_not_show_the_name_it_was_sent(gateway, how):
    """The 403 for a form another site sent (its Origin, or a CSRF token that is not the cookie's) repeated the
    typed name into the gateway's page: any text another site chose, up to the 1 MiB a form field may be."""
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200
    headers = {}
    if how == "another-sites-origin":
        headers["Origin"] = "http://evil.example"
    else:
        tab.csrf = "x" * 43
    for typed in ("alice@example.com", "chosen-by-another-site " * 40_000):
        refused = tab.submit(typed, "p", headers=headers)
        assert refused.status_code == 403 and error_code(refused) == "forbidden", refused.text
        assert typed.strip() not in refused.text and len(refused.text) < 4096  # was: the name in the form again
        assert 'id="signin"' in refused.text and asked == []


@pytest.mark.parametrize("how", ["get", "post"])
def test_the_sign_in_page_repeats_an_unknown_client_ids_first_characters_only(gateway, how):
    """authorize.py `checked_params` repeated the whole client_id it was sent (a URL's query, up to the 1 MiB a form
    field may be on POST) in its 401 page and log line; now its first ECHO_CHARS (shared.errors.echo) and length."""
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200

    def send(client_id: str):
        return tab.open_form(client_id=client_id) if how == "get" else tab.submit("alice", "p", client_id=client_id)

    sent = "c" * 8000 if how == "get" else "c" * 200_000
    refused = send(sent)
    assert refused.status_code == 401 and error_code(refused) == "invalid_client", refused.text[:500]
    assert "c" * (ECHO_CHARS + 1) not in refused.text and f"({len(sent)} characters)" in refused.text
    assert len(refused.text) < 4096 and asked == []  # was: the page repeated all of it
    short = send("another-client")  # a short one is shown whole, as before
    assert short.status_code == 401 and "another-client" in short.text and asked == []
