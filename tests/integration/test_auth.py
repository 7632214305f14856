"""Tokens as the seed requests them: password, refresh_token and client_credentials grants against the
token endpoint with HTTP Basic client authentication, the JWKS, and every way a bad token is refused."""

from __future__ import annotations

import json
import time
import uuid

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shared.client import RailyardClient
from shared.sealed import sealed_request
from tests.integration.conftest import PASSWORD, client_for, inference_client, post
from tests.integration.pkce import error_code, ui_tab, ui_tokens

pytestmark = pytest.mark.integration

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"


def _past_the_limit(send) -> httpx.Response:
    """A token request as a well-behaved client sends it: after a 429 from the endpoint's per-address limit (every
    test of both workers asks from 127.0.0.1; conftest.login), wait and ask again. No test here is about the limit
    (test_auth_attempts.py and test_gateway_abuse.py are)."""
    for _ in range(10):
        response = send()
        if response.status_code != 429:
            return response
        time.sleep(1.0)
    return response


def token_request(stack, data: dict, auth: tuple[str, str] | None = None) -> httpx.Response:
    secrets = stack.secrets()
    return _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}", data=data,
                                              auth=auth or (secrets["client_id"], secrets["client_secret"]),
                                              timeout=30))


def test_password_grant_as_in_the_seed(stack):
    secrets = stack.secrets()
    response = token_request(stack, {"grant_type": "password", "username": secrets["admin_username"],
                                     "password": secrets["admin_password"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["refresh_token"] and body["refresh_expires_in"] > 0
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256" and header["kid"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["azp"] == secrets["client_id"] and claims["typ"] == "Bearer"
    assert post(stack, "workspaces/list", body["access_token"]).status_code == 200


def test_refresh_grant_gives_new_tokens_once(stack):
    secrets = stack.secrets()
    first = token_request(stack, {"grant_type": "password", "username": secrets["admin_username"],
                                  "password": secrets["admin_password"]}).json()
    refreshed = token_request(stack, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert body["access_token"] != first["access_token"] and body["refresh_token"] != first["refresh_token"]
    assert post(stack, "features/list", body["access_token"]).status_code == 200
    again = token_request(stack, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert again.status_code == 401 and again.json()["error"] == "invalid_grant"
    # an access token is not a refresh token
    swapped = token_request(stack, {"grant_type": "refresh_token", "refresh_token": body["access_token"]})
    assert swapped.status_code == 401


def test_client_credentials_token_is_for_inference_only(stack, alice):
    # the login client gets none (test_inference_scope.py); a workspace's inference client does
    client_id, secret = inference_client(alice)
    response = token_request(stack, {"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and body["expires_in"] == 3600
    denied = post(stack, "workspaces/list", body["access_token"])
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    assert "inference" in denied.json()["msg"]


@pytest.mark.parametrize("data, auth, status, error", [
    ({"grant_type": "password", "username": "admin", "password": "x"}, ("api-client", "wrong"), 401,
     "invalid_client"),
    ({"grant_type": "password", "username": "admin", "password": "x"}, ("nobody", "x"), 401, "invalid_client"),
    ({"grant_type": "implicit"}, None, 400, "unsupported_grant_type"),
    ({"grant_type": "password", "username": "admin"}, None, 400, "invalid_request"),
    ({}, None, 400, "invalid_request"),
    ({"grant_type": "password", "username": "nobody@example.com", "password": "whatever1"}, None, 401,
     "invalid_grant"),
    # longer than any user's name (254: shared/messages/auth.py NAME_CHARS), refused before any statement
    ({"grant_type": "password", "username": "n" * 255, "password": "whatever1"}, None, 400, "invalid_request"),
])
def test_bad_token_requests(stack, data, auth, status, error):
    response = token_request(stack, data, auth)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["error_description"]


def test_a_json_token_request_is_told_the_endpoint_reads_a_form(stack):
    """A script posting its fields as JSON (requests' json=) sent grant_type and was told "grant_type is required";
    now the answer says the fields go in a form body. Nothing is issued either way."""
    secrets = stack.secrets()
    fields = {"grant_type": "password", "username": secrets["admin_username"], "password": secrets["admin_password"]}
    response = _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}", json=fields, timeout=30,
                                                  auth=(secrets["client_id"], secrets["client_secret"])))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request", response.text
    assert "application/x-www-form-urlencoded body" in response.json()["error_description"]
    assert "not application/json" in response.json()["error_description"]
    assert "access_token" not in response.json()


def test_no_client_authentication_is_401(stack):
    response = _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}",
                                                  data={"grant_type": "client_credentials"}))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


UI_CLIENT = "railyard-ui"


def ui_token_request(stack, data: dict) -> httpx.Response:
    """A token request as the web UI sends it: the public client's id in the form, no secret."""
    return _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}", data={"client_id": UI_CLIENT} | data,
                                              timeout=30))


def test_the_web_uis_public_client_signs_users_in_without_a_secret(stack, alice):
    # its sign-in is the authorization code flow with PKCE (tests/integration/test_ui_sign_in.py)
    body = ui_tokens(stack, alice.email, PASSWORD)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["azp"] == UI_CLIENT and claims["sub"] == alice.user_id
    assert claims["railyard_kind"] == "user" and claims["railyard_admin"] is False
    # an ordinary user token with her own rights: her workspaces, and no administrator's route
    listed = post(stack, "workspaces/list", body["access_token"])
    assert listed.status_code == 200 and alice.workspace_id in {w["id"] for w in listed.json()["workspaces"]}
    invite = post(stack, "users/invite", body["access_token"], {"email": f"x-{uuid.uuid4().hex[:8]}@example.com"})
    assert invite.status_code == 403, invite.text
    refreshed = ui_token_request(stack, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    # its refresh tokens are its own: the login client cannot spend them
    crossed = token_request(stack, {"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]})
    assert crossed.status_code == 401 and crossed.json()["error"] == "invalid_grant"

    # never a token without a user, in the form or with HTTP Basic and an empty secret
    for refused in (ui_token_request(stack, {"grant_type": "client_credentials"}),
                    _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}",
                                                       data={"grant_type": "client_credentials"},
                                                       auth=(UI_CLIENT, ""), timeout=30))):
        assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client", refused.text
        assert "access_token" not in refused.json()
    # a secret sent with it is refused rather than ignored; the login client still needs its own
    with_secret = ui_token_request(stack, {"grant_type": "password", "username": alice.email, "password": PASSWORD,
                                           "client_secret": stack.secrets()["client_secret"]})
    assert with_secret.status_code == 401 and with_secret.json()["error"] == "invalid_client"
    no_secret = _past_the_limit(lambda: httpx.post(f"{stack.base_url}{TOKEN_PATH}", timeout=30, data={
        "grant_type": "password", "username": alice.email, "password": PASSWORD,
        "client_id": stack.secrets()["client_id"]}))
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"


def test_jwks_has_public_keys_only(stack):
    keys = httpx.get(f"{stack.base_url}/auth/realms/master/protocol/openid-connect/certs").json()["keys"]
    assert keys and all(k["kty"] == "RSA" and k["kid"] and k["alg"] == "RS256" for k in keys)
    assert not any(private in k for k in keys for private in ("d", "p", "q", "dp", "dq", "qi"))


async def _signing_key(stack):
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        row = await conn.fetchrow("SELECT kid, private_pem FROM auth.signing_keys WHERE active")
    finally:
        await conn.close()
    return row["kid"], serialization.load_pem_private_key(row["private_pem"].encode(), password=None)


def _claims(admin_token: str, **changes) -> dict:
    claims = jwt.decode(admin_token, options={"verify_signature": False})
    claims.update(changes)
    return claims


async def test_forged_and_stale_tokens_are_401(stack, admin):
    kid, key = await _signing_key(stack)
    good = admin.token
    now = int(time.time())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = jwt.encode(_claims(good), None, algorithm="none")
    # HS256 "signed" with the public key (the classic algorithm-confusion attack), done by hand
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(_claims(good)).encode())
    signature = b64(hmac.new(public_pem, f"{head}.{payload}".encode(), hashlib.sha256).digest())
    confused = f"{head}.{payload}.{signature}"
    forged = {
        "alg none": unsigned,
        "HS256 with the public key": confused,
        "expired": jwt.encode(_claims(good, exp=now - 120, iat=now - 3720), key, "RS256", headers={"kid": kid}),
        "wrong issuer": jwt.encode(_claims(good, iss="https://evil.example"), key, "RS256", headers={"kid": kid}),
        "wrong audience": jwt.encode(_claims(good, aud="someone-else"), key, "RS256", headers={"kid": kid}),
        "unknown key": jwt.encode(_claims(good), key, "RS256", headers={"kid": "not-a-key"}),
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "garbage": "not.a.token",
    }
    for name, token in forged.items():
        response = post(stack, "workspaces/list", token)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["code"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"
    assert post(stack, "workspaces/list", good).status_code == 200


def test_every_api_route_needs_a_token(stack):
    spec = httpx.get(f"{stack.api}/openapi.json").json()
    public = {"/v1/api/health"}
    routes = [(path, method) for path, ops in spec["paths"].items() for method in ops
              if path.startswith("/v1/api/") and path not in public]
    assert len(routes) >= 11
    for path, method in routes:
        response = httpx.request(method.upper(), f"{stack.base_url}{path}", json={})
        assert response.status_code == 401, (path, response.status_code)
        assert response.json()["code"] == "unauthorized"


def test_repeated_failed_logins_are_slowed_then_locked(stack, admin):
    email = f"target-{uuid.uuid4().hex[:8]}@example.com"
    admin.post("users/invite", {"email": email, "password": PASSWORD})
    client = client_for(stack)
    timings = []
    wrong = {"grant_type": "password", "username": email, "password": "wrong-password"}
    ui = httpx.Client(base_url=stack.base_url, timeout=30)
    tab = ui_tab(ui, stack.base_url)
    assert tab.open_form().status_code == 200
    for n in range(5):  # the test stack locks after 5 (RAILYARD_AUTH__LOCKOUT_AFTER), 0.5 s per failure
        started = time.monotonic()
        # the login client and the web UI's sign-in page count alike: one count per name tried and source,
        # whichever client: alternated, the fifth failure locks
        response = token_request(stack, wrong) if n % 2 == 0 else tab.submit(email, "wrong-password")
        timings.append(time.monotonic() - started)
        assert response.status_code == 401
    assert error_code(response) == "account_locked"
    # the n-th attempt waited (n-1) x 0.5 s before its check; a lower bound, so a loaded machine cannot fail it
    assert all(took >= n * 0.5 for n, took in enumerate(timings)), timings
    with pytest.raises(Exception) as locked:
        client.login(email, PASSWORD)
    assert getattr(locked.value, "code", "") == "account_locked"
    right = tab.submit(email, PASSWORD)
    assert right.status_code == 401 and error_code(right) == "account_locked" and "location" not in right.headers
    ui.close()


def test_python_client_logs_in_and_refreshes(stack):
    secrets = stack.secrets()
    client = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
    client.login(secrets["admin_username"], secrets["admin_password"])
    first = client.token
    client.expires_at = time.time()  # pretend it is about to expire
    assert client.token != first
    assert client.post("features/list")["is_auth_enabled"] is True


async def test_signing_key_rotation_keeps_old_tokens_valid(stack, admin):
    import nats

    from shared import subjects
    from shared.messages import Reply

    old_token = admin.token
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")  # the bus front door
    try:
        denied = Reply.model_validate_json((await sealed_request(nc, subjects.AUTH_KEYS_ROTATE, b"{}",
                                                                 timeout=10)).data)
        assert not denied.ok and denied.status == 401
        reply = Reply.model_validate_json((await sealed_request(nc,
            subjects.AUTH_KEYS_ROTATE, b"{}", timeout=10, headers={"authorization": f"Bearer {old_token}"})).data)
    finally:
        await nc.close()
    assert reply.ok and reply.data["kid"] != old_kid
    async with httpx.AsyncClient() as http:
        certs = await http.get(f"{stack.base_url}/auth/realms/master/protocol/openid-connect/certs")
    kids = {k["kid"] for k in certs.json()["keys"]}
    assert {old_kid, reply.data["kid"]} <= kids
    secrets = stack.secrets()
    fresh = client_for(stack)
    fresh.login(secrets["admin_username"], secrets["admin_password"])
    assert jwt.get_unverified_header(fresh.token)["kid"] == reply.data["kid"]
    assert post(stack, "workspaces/list", fresh.token).status_code == 200
    assert post(stack, "workspaces/list", old_token).status_code == 200


def test_railyard_login_and_token_commands(stack, tmp_path):
    import json
    import subprocess
    import sys

    from tests.stack import REPO

    # the default file: login and token take RAILYARD_CLIENT_CREDENTIALS first (the client's file), were it set here
    env = {k: v for k, v in stack.env.items() if k != "RAILYARD_CLIENT_CREDENTIALS"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    login = subprocess.run([sys.executable, "-m", "shared.cli", "login"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    saved = tmp_path / "railyard" / "credentials.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert json.loads(saved.read_text())["username"] == stack.secrets()["admin_username"]
    token = subprocess.run([sys.executable, "-m", "shared.cli", "token"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert token.returncode == 0, token.stderr
    assert post(stack, "features/list", token.stdout.strip()).status_code == 200
    wrong = subprocess.run([sys.executable, "-m", "shared.cli", "login", "--password", "not-it-at-all"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "login failed" in wrong.stderr and "Traceback" not in wrong.stderr


def _login(stack, email: str, password: str) -> dict:
    response = token_request(stack, {"grant_type": "password", "username": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def _refused_at_once(stack, token: str) -> httpx.Response:
    """The answer to the very next call with `token` after the password change's 200: users/update_password answers
    once its events.auth.tokens_revoked is published, so on the stack's one NATS server the gateway has it by then
    (docs/auth.md, "Answered once the event is out"). This polled up to 5 s while the 200 came before the event."""
    return post(stack, "workspaces/list", token)


def test_changing_a_password_needs_the_current_one_and_ends_every_session(stack, admin):
    email = f"changer-{uuid.uuid4().hex[:8]}@example.com"
    admin.post("users/invite", {"email": email, "password": PASSWORD})
    session = _login(stack, email, PASSWORD)
    token = session["access_token"]
    # naming yourself by email in another letter case is your own change (the lookup's lower()), not an admin's
    for body in ({"password": "a-new-password"}, {"password": "a-new-password", "current_password": "wrong-one"},
                 {"password": "a-new-password", "current_password": "wrong-one", "email": email.upper()}):
        denied = post(stack, "users/update_password", token, body)
        assert denied.status_code == 403 and "current_password" in denied.json()["msg"], denied.text
    assert _login(stack, email, PASSWORD)  # nothing changed
    changed = post(stack, "users/update_password", token, {"password": "a-new-password",
                                                           "current_password": PASSWORD})
    assert changed.status_code == 200, changed.text
    refused = _refused_at_once(stack, token)
    assert refused.status_code == 401, refused.text
    refresh = token_request(stack, {"grant_type": "refresh_token", "refresh_token": session["refresh_token"]})
    assert refresh.status_code == 401 and refresh.json()["error"] == "invalid_grant"
    assert post(stack, "workspaces/list", _login(stack, email, "a-new-password")["access_token"]).status_code == 200


def test_administrators_reset_other_users_passwords(stack, admin):
    email = f"reset-{uuid.uuid4().hex[:8]}@example.com"
    invited = admin.post("users/invite", {"email": email, "password": PASSWORD})
    other = f"other-{uuid.uuid4().hex[:8]}@example.com"
    admin.post("users/invite", {"email": other, "password": PASSWORD})
    token = _login(stack, email, PASSWORD)["access_token"]
    not_admin = post(stack, "users/update_password", _login(stack, other, PASSWORD)["access_token"],
                     {"email": email, "password": "taken-over-1"})
    assert not_admin.status_code == 403
    admin.post("users/update_password", {"email": email, "password": "reset-by-admin"})
    refused = _refused_at_once(stack, token)
    assert refused.status_code == 401, refused.text
    assert _login(stack, email, "reset-by-admin")
    record = admin.post("users/query", {"user_ids": [invited["user_id"]]})["users"][invited["user_id"]]
    assert record["requiredActions"] == ["UPDATE_PASSWORD"]


async def _retired_keys_with_tokens(stack, claims: dict) -> dict[str, tuple[str, str]]:
    """Two rotated-out keys put straight in the auth schema, retired 2 days and 1 minute ago, each with a token."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    tokens = {}
    try:
        for name, retired in (("old", "2 days"), ("recent", "1 minute")):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            kid = f"test-{name}-{uuid.uuid4().hex[:8]}"
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": kid, "use": "sig", "alg": "RS256"}
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
            await conn.execute(
                "INSERT INTO auth.signing_keys (kid, private_pem, public_jwk, active, created_at, retired_at)"
                f" VALUES ($1, $2, $3::jsonb, false, now() - interval '3 days', now() - interval '{retired}')",
                kid, pem, json.dumps(jwk))
            tokens[name] = (kid, jwt.encode(claims, key, "RS256", headers={"kid": kid}))
    finally:
        await conn.close()
    return tokens


def test_rotated_out_keys_retire_after_the_longest_token_lifetime(stack, admin):
    """Keys retired longer ago than the longest token lifetime leave the JWKS and verify nothing; recently
    retired ones still verify the tokens they signed."""
    import asyncio

    now = int(time.time())
    tokens = asyncio.run(_retired_keys_with_tokens(stack, _claims(admin.token, iat=now, exp=now + 300)))
    kids = {k["kid"] for k in httpx.get(f"{stack.base_url}/auth/realms/master/protocol/openid-connect/certs")
            .json()["keys"]}
    assert tokens["recent"][0] in kids and tokens["old"][0] not in kids
    time.sleep(1.1)  # the verifiers refetch for an unknown key at most once a second
    assert post(stack, "workspaces/list", tokens["recent"][1]).status_code == 200
    assert post(stack, "workspaces/list", tokens["old"][1]).status_code == 401


async def test_the_sweep_deletes_dead_refresh_tokens_and_keeps_live_ones(stack):
    """services/auth/token_sweep.py: an expired and a spent refresh token's rows go, in batches of one here; a live
    token's row stays and still refreshes."""
    from services.auth import token_sweep
    from shared.db import create_pool

    secrets = stack.secrets()
    login = {"grant_type": "password", "username": secrets["admin_username"], "password": secrets["admin_password"]}
    expired, spent, live = (token_request(stack, login).json()["refresh_token"] for _ in range(3))
    renewed = token_request(stack, {"grant_type": "refresh_token", "refresh_token": spent})
    assert renewed.status_code == 200, renewed.text
    jti = {name: uuid.UUID(jwt.decode(token, options={"verify_signature": False})["jti"]) for name, token in
           (("expired", expired), ("spent", spent), ("live", live), ("renewed", renewed.json()["refresh_token"]))}
    pool = await create_pool(stack.settings().postgres, "auth")
    try:
        await pool.execute("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE jti = $1",
                           jti["expired"])
        assert await token_sweep.sweep(pool, batch=1) >= 2
        left = {r["jti"] for r in await pool.fetch("SELECT jti FROM refresh_tokens WHERE jti = ANY($1)",
                                                   list(jti.values()))}
    finally:
        await pool.close()
    assert left == {jti["live"], jti["renewed"]}
    assert token_request(stack, {"grant_type": "refresh_token", "refresh_token": live}).status_code == 200
