"""The web UI's sign-in, through the real gateway: the authorization code flow with PKCE (S256) of its public client
(`railyard-ui`), and its allowance, which is per source address (an IPv6 client: its /64), never one bucket shared by
every user or by everyone naming one account, so failed sign-ins from some addresses never stop a sign-in from
another (docs/auth.md)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import jwt
import pytest

from tests.integration.conftest import PASSWORD, TOKEN_PATH
from tests.integration.pkce import UI_CLIENT, UiSignIn, error_code, ui_tab

PROXY = "127.0.0.5"  # the test stack's trusted proxy (tests/stack.py): X-Forwarded-For names the source
# the gateway's defaults (shared/settings.py GatewaySettings)
CLIENT_BURST, CLIENT_RATE = 500, 100.0
OLD_ACCOUNT_BURST, OLD_ACCOUNT_RATE = 100, 20.0  # the per-account-name bucket the gateway no longer has


def http_from(stack, address: str, connections: int = 1) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=60, limits=httpx.Limits(max_connections=connections),
                        transport=httpx.HTTPTransport(local_address=address))


def tab_from(http: httpx.Client, stack, forwarded_for: str | None = None) -> UiSignIn:
    """A tab with its sign-in form open (its CSRF cookie and token)."""
    tab = ui_tab(http, stack.base_url)
    assert tab.open_form(headers={"X-Forwarded-For": forwarded_for} if forwarded_for else None).status_code == 200
    return tab


def signs_in(tab: UiSignIn, username: str, forwarded_for: str | None = None) -> dict:
    """The whole sign-in of one tab with the right password: its tokens."""
    submitted = tab.submit(username, PASSWORD, headers={"X-Forwarded-For": forwarded_for} if forwarded_for else None)
    exchanged = tab.exchange(tab.code(submitted))
    assert exchanged.status_code == 200, exchanged.text
    return exchanged.json()


def test_failed_ui_sign_ins_from_many_addresses_do_not_stop_another_addresss(stack, alice):
    """One attacker with many addresses (here named by the trusted proxy) fails UI sign-ins faster than one shared
    bucket of the UI's client (100/s, burst 500, as its password grant had) would allow; alice, from another address,
    still signs in."""
    attackers = [f"198.51.100.{i}" for i in range(1, 41)]  # each address's own bucket is never spent here
    sent, statuses, started = 0, [], time.monotonic()
    with http_from(stack, PROXY, 16) as proxy, ThreadPoolExecutor(16) as pool:
        tab = tab_from(proxy, stack, attackers[0])

        def one(i: int) -> int:
            name = f"nobody-{uuid.uuid4().hex[:8]}"
            return tab.submit(name, "wrong", headers={"X-Forwarded-For": attackers[i % len(attackers)]}).status_code

        # until the flood outran what one shared bucket would have let through in that time
        while sent < 4000 and sent <= CLIENT_BURST + CLIENT_RATE * (time.monotonic() - started) + 50:
            statuses += pool.map(one, range(sent, sent + 160))
            sent += 160
        elapsed = time.monotonic() - started
    assert set(statuses) == {401}, {s: statuses.count(s) for s in set(statuses)}  # failed, never rate limited
    with http_from(stack, PROXY) as proxy:
        assert signs_in(tab_from(proxy, stack, "203.0.113.40"), alice.email, "203.0.113.40")["access_token"]
    outran_a_shared_bucket(sent, elapsed)


def outran_a_shared_bucket(sent: int, elapsed: float) -> None:
    """Whether the flood came faster than a shared bucket (CLIENT_RATE, CLIENT_BURST) refills: only then do its
    all-401 answers show there is none. A machine that answers fewer than CLIENT_RATE failed sign-ins a second
    (a fresh-clone CI on 2026-12-02's slow VM: 4,000 in 40 s) cannot show it: the test says so instead of failing,
    after every other assertion has held."""
    if sent <= CLIENT_BURST + CLIENT_RATE * elapsed:
        pytest.skip(f"inconclusive on this machine: {sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s) never "
                    f"outran a shared bucket of {CLIENT_RATE:.0f}/s (burst {CLIENT_BURST}); no 429 and the other "
                    "sign-in held")


def test_made_up_secrets_do_not_spend_the_login_clients_allowance(stack, alice):
    """The CLI's and SDK's counterpart: requests naming `api-client` with made-up secrets, from many addresses and
    faster than its bucket (100/s, burst 500) allows, never slow a login that has its secret."""
    secrets = stack.secrets()
    attackers = [f"198.51.100.{i}" for i in range(41, 81)]
    sent, statuses, started = 0, [], time.monotonic()
    with http_from(stack, PROXY, 16) as proxy, ThreadPoolExecutor(16) as pool:
        def one(i: int) -> int:
            return proxy.post(TOKEN_PATH, auth=(secrets["client_id"], uuid.uuid4().hex), headers={
                "X-Forwarded-For": attackers[i % len(attackers)]}, data={
                "grant_type": "password", "username": f"nobody-{i}", "password": "x"}).status_code

        while sent < 4000 and sent <= CLIENT_BURST + CLIENT_RATE * (time.monotonic() - started) + 50:
            statuses += pool.map(one, range(sent, sent + 160))
            sent += 160
        elapsed = time.monotonic() - started
        assert set(statuses) == {401}, {s: statuses.count(s) for s in set(statuses)}  # invalid_client, never 429
        login = proxy.post(TOKEN_PATH, auth=(secrets["client_id"], secrets["client_secret"]), headers={
            "X-Forwarded-For": "203.0.113.41"}, data={"grant_type": "password", "username": alice.email,
                                                      "password": PASSWORD})
    assert login.status_code == 200, login.text
    outran_a_shared_bucket(sent, elapsed)


def test_one_address_failing_alices_sign_in_does_not_stop_alice_elsewhere(stack, alice, bob):
    """An address guessing alice's password, 16 at a time, is refused fast (its own bucket, and one attempt at a time
    for alice from there) but spends nobody's time: alice and bob sign in from elsewhere while it runs. (Handled one
    by one at the auth service, its delayed attempts queued every sign-in behind them: 504s.)"""
    with http_from(stack, "127.0.0.21", 16) as attacker, ThreadPoolExecutor(16) as pool:
        tab = tab_from(attacker, stack)
        flood = [pool.submit(tab.submit, alice.email, "wrong-password") for _ in range(80)]
        while sum(f.done() for f in flood) < 8:
            time.sleep(0.02)
        with http_from(stack, "127.0.0.22") as elsewhere:
            started = time.monotonic()
            for account in (alice, bob):
                signs_in(tab_from(elsewhere, stack), account.email)
            waited = time.monotonic() - started
        responses = [f.result() for f in flood]
    assert waited < 4, waited
    errors = [(r.status_code, error_code(r)) for r in responses]
    assert set(errors) <= {(401, "account_locked"), (401, "invalid_grant"), (429, "rate_limited")}, errors
    # checked one at a time: at most lockout_after - 1 (the test stack's 5) guesses fail before the lock
    assert errors.count((401, "invalid_grant")) <= 4, errors
    limited = [r for r in responses if r.status_code == 429]
    assert limited and all("address" in r.text and "account;" not in r.text for r in limited)
    assert all("location" not in r.headers for r in responses)  # no code anywhere


def test_many_addresses_failing_alices_password_do_not_stop_alice_signing_in(stack, alice):
    """Anyone could block a named user's sign-in: a bucket per account name (20/s, burst 100) counted every attempt on
    the name, from any address, before any password was checked, so two or three addresses emptied it and alice got
    429 "too many sign-ins for this account" from her own address. Now 10 addresses fail her password faster than
    that bucket allowed, and while they do, alice signs in from hers, every time; each of them meets its own delay
    and lock (per name tried and source) instead. (Few addresses: each one's delayed failures hold a thread.)"""
    attackers = [f"198.51.100.{i}" for i in range(141, 151)]
    stop, responses, started = threading.Event(), [], time.monotonic()
    with http_from(stack, PROXY, 16) as proxy, ThreadPoolExecutor(16) as pool:
        tab = tab_from(proxy, stack, attackers[0])

        def flood(worker: int) -> None:
            for i in range(worker, 100_000, 16):
                if stop.is_set():
                    return
                responses.append(tab.submit(alice.email, "wrong", headers={
                    "X-Forwarded-For": attackers[i % len(attackers)]}))

        floods = [pool.submit(flood, worker) for worker in range(16)]
        try:
            # until what passed the sources' buckets would have emptied the old account bucket; then alice signs in
            # while the flood goes on
            while sum("too many token requests" not in r.text for r in list(responses)) <= (
                    OLD_ACCOUNT_BURST + OLD_ACCOUNT_RATE * (time.monotonic() - started) + 20):
                assert time.monotonic() - started < 60 and not any(f.done() for f in floods), len(responses)
                time.sleep(0.05)
            with http_from(stack, "127.0.0.23") as own:
                for _ in range(3):
                    assert signs_in(tab_from(own, stack), alice.email)["access_token"]
            assert not any(f.done() for f in floods)  # still under way
        finally:
            stop.set()
            for f in floods:
                f.result()
    errors = [(r.status_code, error_code(r)) for r in responses]
    assert set(errors) <= {(401, "account_locked"), (401, "invalid_grant"), (429, "rate_limited")}, set(errors)
    assert not [r for r in responses if "for this account" in r.text]
    # each address checked one attempt at a time: at most lockout_after - 1 (the test stack's 5) fail before its lock
    assert errors.count((401, "invalid_grant")) <= 4 * len(attackers), errors.count((401, "invalid_grant"))
    assert all("location" not in r.headers for r in responses)


def test_the_addresses_of_one_ipv6_64_are_one_source(stack, alice):
    """Every address of a /64 is free to whoever holds it, so an IPv6 client is counted by its /64: one token bucket
    for all its addresses (burst 50, 10/s; another /64 has its own), and the auth service counts failed logins per
    user and /64 (the gateway sends it the /64 as the source)."""
    with http_from(stack, PROXY, 8) as proxy, ThreadPoolExecutor(8) as pool:
        def one(i: int) -> httpx.Response:  # no client: refused (401) once past the source's bucket
            return proxy.post(TOKEN_PATH, headers={"X-Forwarded-For": f"2001:db8:77:1::{i:x}"}, data={})

        started = time.monotonic()
        statuses = [r.status_code for r in pool.map(one, range(1, 121))]
        elapsed = time.monotonic() - started
        assert set(statuses) == {401, 429}, statuses
        assert statuses.count(401) <= 50 + 10 * elapsed + 1, (statuses.count(401), elapsed)
        assert proxy.post(TOKEN_PATH, headers={"X-Forwarded-For": "2001:db8:77:2::1"}, data={}).status_code == 401
        failed = tab_from(proxy, stack, "2001:db8:77:3::1").submit(
            alice.email, "wrong", headers={"X-Forwarded-For": "2001:db8:77:3:abcd::9"})
        assert (failed.status_code, error_code(failed)) == (401, "invalid_grant"), failed.text
    assert asyncio.run(_failure_sources(stack, alice.email)) >= {"2001:db8:77:3::/64"}


async def _failure_sources(stack, name: str) -> set[str]:
    """The sources failed sign-ins naming `name` are counted for (per name tried, docs/auth.md "Brute force")."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT source FROM auth.sign_in_failures"
                                " WHERE name_key = sha256(convert_to(lower($1), 'UTF8'))", name)
    finally:
        await conn.close()
    return {row["source"] for row in rows}


async def _codes_of(stack, user_id: str) -> int:
    """The user's codes not spent yet."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM auth.authorization_codes WHERE user_id = $1"
                                   " AND spent_at IS NULL", uuid.UUID(user_id))  # spent ones stay (reuse revokes)
    finally:
        await conn.close()


async def _age(stack, code: str) -> None:
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute("UPDATE auth.authorization_codes SET expires_at = now() - interval '1 second'"
                           " WHERE code_hash = $1", hashlib.sha256(code.encode()).digest())
    finally:
        await conn.close()


def refused(response: httpx.Response, status: int, error: str, said: str = "") -> None:
    """A typed refusal that issued nothing."""
    assert response.status_code == status and error_code(response) == error, (response.status_code, response.text)
    assert said in response.text, response.text
    assert "access_token" not in response.text and "location" not in response.headers


def test_the_ui_signs_in_with_a_one_time_pkce_code(stack, alice):
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        tab = ui_tab(http, stack.base_url)
        form = tab.open_form()
        assert form.status_code == 200 and 'id="username"' in form.text and 'type="password"' in form.text
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        assert form.headers["cache-control"] == "no-store" and "<script" not in form.text
        cookie = form.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        # the whole flow: a 303 to the UI's page with a code and the tab's state, exchanged with the verifier
        code = tab.code(tab.submit(alice.email, PASSWORD))
        exchanged = tab.exchange(code)
        assert exchanged.status_code == 200, exchanged.text
        tokens = exchanged.json()
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["azp"] == UI_CLIENT and claims["sub"] == alice.user_id and claims["railyard_kind"] == "user"
        assert http.post(f"{stack.api}/workspaces/list", json={}, headers={
            "Authorization": f"Bearer {tokens['access_token']}"}).status_code == 200
        refreshed = http.post(TOKEN_PATH, data={"grant_type": "refresh_token", "client_id": UI_CLIENT,
                                                "refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text

        # a code works once; a refused code is 400 invalid_grant (RFC 6749 5.2, Keycloak; a password or refresh token
        # refused stays 401, what released SDKs read as "sign in again")
        refused(tab.exchange(code), 400, "invalid_grant", "already used")
        # a wrong verifier: refused, and the code is spent (the right verifier cannot use it after)
        code = tab.code(tab.submit(alice.email, PASSWORD))
        other = UiSignIn(http, tab.redirect_uri)
        refused(tab.exchange(code, code_verifier=other.verifier), 400, "invalid_grant", "code_verifier")
        refused(tab.exchange(code), 400, "invalid_grant", "already used")
        refused(tab.exchange(tab.code(tab.submit(alice.email, PASSWORD)), code_verifier="short"), 400,
                "invalid_grant", "code_verifier")
        # bound to its redirect URI and its client
        refused(tab.exchange(tab.code(tab.submit(alice.email, PASSWORD)), redirect_uri="http://evil.example/"),
                400, "invalid_grant", "redirect_uri")
        secrets = stack.secrets()
        stolen = tab.code(tab.submit(alice.email, PASSWORD))
        refused(http.post(TOKEN_PATH, auth=(secrets["client_id"], secrets["client_secret"]), data={
            "grant_type": "authorization_code", "code": stolen, "code_verifier": tab.verifier,
            "redirect_uri": tab.redirect_uri}), 400, "unauthorized_client")
        assert tab.exchange(stolen).status_code == 200  # not spent by that: its own client still exchanges it
        # expired (a minute; aged here in the database)
        code = tab.code(tab.submit(alice.email, PASSWORD))
        asyncio.run(_age(stack, code))
        refused(tab.exchange(code), 400, "invalid_grant", "expired")
        # the UI's client no longer takes a password itself; the SDK's and CLI's login client still does
        refused(http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": UI_CLIENT, "username": alice.email,
                                            "password": PASSWORD}), 400, "unauthorized_client", "authorization")
        assert http.post(TOKEN_PATH, auth=(secrets["client_id"], secrets["client_secret"]), data={
            "grant_type": "password", "username": alice.email, "password": PASSWORD}).status_code == 200
    assert asyncio.run(_codes_of(stack, alice.user_id)) == 0  # every code spent


def test_a_reused_code_revokes_the_tokens_it_issued(stack, alice):
    """RFC 6749 4.1.2: a code presented twice has leaked, so the second exchange is refused AND what the first issued
    stops working: its access token, its refresh token, and the pair a refresh of it gave (the same session), at
    the gateway within the revocation's propagation time (events.auth.tokens_revoked at once; the revocation list
    every revocation_poll_interval seconds otherwise, docs/auth.md). Another sign-in of the same user is untouched."""
    def works(http: httpx.Client, token: str) -> bool:
        answer = http.post(f"{stack.api}/workspaces/list", json={}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code in (200, 401), answer.text
        return answer.status_code == 200

    def refresh(http: httpx.Client, token: str) -> httpx.Response:
        return http.post(TOKEN_PATH, data={"grant_type": "refresh_token", "client_id": UI_CLIENT,
                                           "refresh_token": token})

    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        tab = ui_tab(http, stack.base_url)
        assert tab.open_form().status_code == 200
        code = tab.code(tab.submit(alice.email, PASSWORD))
        first = tab.exchange(code).json()
        refreshed = refresh(http, first["refresh_token"]).json()  # the session goes on after a refresh
        other_tab = ui_tab(http, stack.base_url)
        assert other_tab.open_form().status_code == 200
        other = signs_in(other_tab, alice.email)  # alice's other sign-in: another session
        assert works(http, first["access_token"]) and works(http, refreshed["access_token"])

        refused(tab.exchange(code), 400, "invalid_grant", "already used")
        deadline = time.monotonic() + stack.settings().auth.revocation_poll_interval + 5
        while works(http, first["access_token"]) or works(http, refreshed["access_token"]):
            assert time.monotonic() < deadline, "a reused code's tokens still work after the revocation's propagation"
            time.sleep(0.1)
        revoked = http.post(f"{stack.api}/workspaces/list", json={}, headers={
            "Authorization": f"Bearer {first['access_token']}"})
        assert revoked.status_code == 401 and "revoked" in revoked.text, revoked.text
        refused(refresh(http, refreshed["refresh_token"]), 401, "invalid_grant", "revoked")
        refused(refresh(http, first["refresh_token"]), 401, "invalid_grant")
        refused(tab.exchange(code), 400, "invalid_grant", "already used")  # and again: still refused

        assert works(http, other["access_token"])  # only what the reused code issued
        assert refresh(http, other["refresh_token"]).status_code == 200
    # what a verifier that missed the event reads at its next poll: the session, not alice's other one
    listed = asyncio.run(_revocation_list(stack)).sessions
    session = jwt.decode(first["access_token"], options={"verify_signature": False})["session_state"]
    assert session == jwt.decode(refreshed["access_token"], options={"verify_signature": False})["session_state"]
    assert session in listed and other["session_state"] not in listed


async def _revocation_list(stack):
    """auth.revocations.list's answer, from the auth service's own handler on its schema."""
    from services.auth import handlers

    conn = await asyncpg.connect(stack.settings().postgres.dsn, server_settings={"search_path": "auth"})
    try:
        return await handlers.revocations(conn, stack.settings().auth)
    finally:
        await conn.close()


def test_the_authorization_endpoint_refuses_bad_requests_and_issues_nothing(stack, alice):
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        tab = ui_tab(http, stack.base_url)
        for override, error, said in (
                ({"redirect_uri": "http://evil.example/"}, "invalid_request", "redirect_uri"),
                ({"redirect_uri": stack.base_url + "/?next=x"}, "invalid_request", "redirect_uri"),
                ({"client_id": "api-client"}, "invalid_client", "client_id"),
                ({"code_challenge_method": "plain", "code_challenge": tab.verifier}, "invalid_request", "S256"),
                ({"code_challenge": "too-short"}, "invalid_request", "code_challenge"),
                ({"response_type": "token"}, "unsupported_response_type", "response_type"),
                ({"state": ""}, "invalid_request", "state")):
            shown = tab.open_form(**override)
            refused(shown, 401 if error == "invalid_client" else 400, error, said)
            assert 'name="password"' not in shown.text  # an error page, no form
        assert tab.open_form().status_code == 200  # a good form: its CSRF token and cookie
        # the right password with a foreign redirect URI: shown an error, sent nowhere
        refused(tab.submit(alice.email, PASSWORD, redirect_uri="http://evil.example/"), 400, "invalid_request",
                "redirect_uri")
        refused(tab.submit(alice.email, PASSWORD, code_challenge_method="plain"), 400, "invalid_request", "S256")
        # CSRF: another site's page cannot post the form (no cookie, another token, or its Origin)
        with httpx.Client(base_url=stack.base_url, timeout=30) as elsewhere:
            foreign = UiSignIn(elsewhere, tab.redirect_uri, csrf=tab.csrf)
            refused(foreign.submit(alice.email, PASSWORD), 403, "forbidden", "did not come from this page")
        good = tab.csrf
        tab.csrf = "x" * 43
        refused(tab.submit(alice.email, PASSWORD), 403, "forbidden", "did not come from this page")
        tab.csrf = good
        refused(tab.submit(alice.email, PASSWORD, headers={"Origin": "http://evil.example"}), 403, "forbidden",
                "another site")
        # a wrong password: the form again, with the auth service's message and the name kept
        wrong = tab.submit(alice.email, "not-her-password")
        refused(wrong, 401, "invalid_grant", "invalid user credentials")
        assert 'name="password"' in wrong.text and f'value="{alice.email}"' in wrong.text
    assert asyncio.run(_codes_of(stack, alice.user_id)) == 0
