"""The web UI's sign-in allowance, through the real gateway: its public client (`railyard-ui`) has no shared bucket,
so failed sign-ins from some addresses never stop a sign-in from another (docs/auth.md, "Brute force")."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.conftest import PASSWORD, TOKEN_PATH

UI_CLIENT = "railyard-ui"
PROXY = "127.0.0.5"  # the test stack's trusted proxy (tests/stack.py): X-Forwarded-For names the source
# the gateway's defaults (shared/settings.py GatewaySettings)
CLIENT_BURST, CLIENT_RATE = 500, 100.0
SOURCE_BURST, SOURCE_RATE = 50, 10.0
ACCOUNT_BURST, ACCOUNT_RATE = 100, 20.0


def ui_sign_in(http: httpx.Client, username: str, password: str, forwarded_for: str | None = None) -> httpx.Response:
    """A password sign-in as the UI sends it: the public client's id, no secret."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return http.post(TOKEN_PATH, headers=headers, data={
        "grant_type": "password", "client_id": UI_CLIENT, "username": username, "password": password})


def http_from(stack, address: str, connections: int = 1) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=60, limits=httpx.Limits(max_connections=connections),
                        transport=httpx.HTTPTransport(local_address=address))


def test_failed_ui_sign_ins_from_many_addresses_do_not_stop_another_addresss(stack, alice):
    """One attacker with many addresses (here named by the trusted proxy) fails UI sign-ins faster than the shared
    `railyard-ui` bucket (100/s, burst 500) allowed before; alice, from another address, still signs in."""
    attackers = [f"198.51.100.{i}" for i in range(1, 41)]  # each address's own bucket is never spent here
    sent, statuses, started = 0, [], time.monotonic()
    with http_from(stack, PROXY, 16) as proxy, ThreadPoolExecutor(16) as pool:
        def one(i: int) -> int:
            name = f"nobody-{uuid.uuid4().hex[:8]}"
            return ui_sign_in(proxy, name, "wrong", attackers[i % len(attackers)]).status_code

        # until the flood outran what one shared bucket would have let through in that time
        while sent < 4000 and sent <= CLIENT_BURST + CLIENT_RATE * (time.monotonic() - started) + 50:
            statuses += pool.map(one, range(sent, sent + 160))
            sent += 160
        elapsed = time.monotonic() - started
    assert sent > CLIENT_BURST + CLIENT_RATE * elapsed, (sent, elapsed)  # a shared bucket would be empty now
    assert set(statuses) == {401}, {s: statuses.count(s) for s in set(statuses)}  # failed, never rate limited
    with http_from(stack, PROXY) as proxy:
        signed_in = ui_sign_in(proxy, alice.email, PASSWORD, "203.0.113.40")
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["access_token"]


def test_one_address_failing_alices_sign_in_does_not_stop_alice_elsewhere(stack, alice, bob):
    """An address guessing alice's password, 16 at a time, is refused fast (its own bucket, and one attempt at a time
    for alice from there) but spends neither alice's account allowance (larger than one address's) nor anyone's
    time: alice and bob sign in from elsewhere while it runs. (Handled one by one at the auth service, its delayed
    attempts queued every sign-in behind them: 504s.)"""
    with http_from(stack, "127.0.0.21", 16) as attacker, ThreadPoolExecutor(16) as pool:
        flood = [pool.submit(ui_sign_in, attacker, alice.email, "wrong-password") for _ in range(80)]
        while sum(f.done() for f in flood) < 8:
            time.sleep(0.02)
        with http_from(stack, "127.0.0.22") as elsewhere:
            started = time.monotonic()
            others = [ui_sign_in(elsewhere, account.email, PASSWORD) for account in (alice, bob)]
            waited = time.monotonic() - started
        responses = [f.result() for f in flood]
    for signed_in in others:
        assert signed_in.status_code == 200, signed_in.text
    assert waited < 4, waited
    errors = [(r.status_code, r.json()["error"]) for r in responses]
    assert set(errors) <= {(401, "account_locked"), (401, "invalid_grant"), (429, "rate_limited")}, errors
    # checked one at a time: at most lockout_after - 1 (the test stack's 5) guesses fail before the lock
    assert errors.count((401, "invalid_grant")) <= 4, errors
    said = {r.json()["error_description"] for r in responses if r.status_code == 429}
    assert said and all("address" in text for text in said), said  # never alice's account's allowance


def test_many_addresses_guessing_one_account_are_slowed_for_that_account_only(stack, alice, bob):
    """Spread over many addresses, guesses at one account name run into that account's allowance (429, nothing
    reaches the auth service); another account signs in from the same addresses."""
    target = f"ghost-{uuid.uuid4().hex[:8]}"  # an account name nobody has: no lockout, only the gateway's count
    attackers = [f"198.51.100.{i}" for i in range(101, 141)]
    sent, statuses, started = 0, [], time.monotonic()
    with http_from(stack, PROXY, 16) as proxy, ThreadPoolExecutor(16) as pool:
        def one(i: int) -> httpx.Response:
            return ui_sign_in(proxy, target.upper() if i % 2 else target, "wrong", attackers[i % len(attackers)])

        while sent < 2000 and statuses.count(429) < 10:
            statuses += [r.status_code for r in pool.map(one, range(sent, sent + 80))]
            sent += 80
        elapsed = time.monotonic() - started
        assert set(statuses) == {401, 429}, statuses
        # at most the account's burst and rate got through (the name's case does not make another bucket)
        assert statuses.count(401) <= ACCOUNT_BURST + ACCOUNT_RATE * elapsed + 1, (statuses.count(401), elapsed)
        limited = one(0)
        assert limited.status_code == 429 and limited.json()["error"] == "rate_limited", limited.text
        assert "account" in limited.json()["error_description"] and int(limited.headers["Retry-After"]) >= 1
        assert "access_token" not in limited.json()
        other = ui_sign_in(proxy, bob.email, PASSWORD, attackers[0])
    assert other.status_code == 200, other.text
