"""An ended task run's session in auth's tables (services/auth/task_tokens.py, migration 017), on auth's migrations in
a schema of this test's own on the stack's PostgreSQL: a token's issue is recorded and refused once the run has ended;
the end revokes the session once, with its events.auth.tokens_revoked (session, expiry) in the outbox; the revocation
is listed until the run's tokens have expired, however long after access_token_ttl that is; rows no longer needed
go."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.auth import task_tokens
from shared.authz import TokenVerifier, VerifierFeed
from shared.errors import InvalidRequest, Unauthorized
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "auth" / "migrations"


@pytest.fixture
async def pool(stack):
    async with service_schema(stack, "auth_task_tokens", MIGRATIONS) as pool:
        yield pool


async def revocation_events(pool) -> list[dict]:
    rows = await pool.fetch("SELECT payload FROM outbox WHERE subject = 'events.auth.tokens_revoked' ORDER BY id")
    return [json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"] for r in rows]


async def test_an_ended_runs_session_is_revoked_once_and_listed_until_its_tokens_expire(pool):
    run, owner, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
    expires = now + 10 * 3600  # a ten-hour run's token: longer than access_token_ttl (1 h)
    assert await task_tokens.record_issue(pool, run, owner, expires)
    assert await task_tokens.record_issue(pool, run, owner, expires - 5)  # a second token of the run: kept the later
    assert await task_tokens.revoked(pool, now) == []  # not ended: nothing listed

    assert await task_tokens.revoke_run(pool, run, owner, now) == expires
    [event] = await revocation_events(pool)
    assert (event["subject"], event["session"], event["expires"]) == (owner, run, expires), event
    assert await task_tokens.revoke_run(pool, run, owner, now + 1) is None  # a redelivered end: nothing more
    assert len(await revocation_events(pool)) == 1
    assert not await task_tokens.record_issue(pool, run, owner, now + 60)  # ended: no token issued

    later = now + 9 * 3600  # long past access_token_ttl, the token still valid: still listed
    assert [(r["run_id"], r["expires_at"]) for r in await task_tokens.revoked(pool, later)] == [(run, expires)]
    assert await task_tokens.revoked(pool, expires + task_tokens.LEEWAY + 1) == []


async def test_an_end_before_any_token_refuses_a_later_issue_and_rows_go_when_useless(pool):
    run, owner, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
    assert await task_tokens.revoke_run(pool, run, owner, now) is None  # no token: nothing to tell
    assert await revocation_events(pool) == []
    assert not await task_tokens.record_issue(pool, run, owner, now + 300)  # a paused supervisor's late ask
    assert await task_tokens.revoked(pool, now) == []

    expired = str(uuid.uuid4())  # a run whose token expired without its end being read
    assert await task_tokens.record_issue(pool, expired, owner, now - 3600)
    other = str(uuid.uuid4())
    await task_tokens.revoke_run(pool, other, owner, now + task_tokens.UNISSUED_KEPT + 120)  # a day later
    left = {r["run_id"] for r in await pool.fetch("SELECT run_id FROM task_run_tokens")}
    assert left == {other}, left  # the unissued end and the expired token's row went


async def test_the_revocation_list_drops_what_refuses_nothing_and_comes_in_pages_under_the_bus_limit(pool, stack):
    """Ended runs grow the list with the platform's use (~120 bytes each within their tokens' lifetime, up to a day):
    answered whole it passed the bus's limit past ~70k runs, and then no service could read it. It holds only what
    can still refuse a valid token, and auth.revocations.list answers it in pages of at most the reply's budget, which
    a verifier reads to the end before applying (shared.authz.read_revocation_pages)."""
    from services.auth import handlers
    from shared.authz import TASK_TOKEN_MAX_TTL, read_revocation_pages

    settings, now = stack.settings().auth, time.time()
    owner = uuid.uuid4()
    await pool.execute("INSERT INTO users (id, username, password_hash, revoked_before) VALUES ($1, 'o', 'x', $2)",
                       owner, now - 10)  # a new password ten seconds ago: listed
    old_user = uuid.uuid4()  # deactivated before any token still valid was issued: refuses nothing now
    await pool.execute("INSERT INTO users (id, username, password_hash, revoked_before) VALUES ($1, 'p', 'x', $2)",
                       old_user, now - TASK_TOKEN_MAX_TTL - 3 * task_tokens.LEEWAY)
    code_session = uuid.uuid4()
    await pool.execute("INSERT INTO revoked_sessions (session, user_id, revoked_at) VALUES ($1, $2, $3)",
                       code_session, owner, now - 5)
    live = sorted(str(uuid.uuid4()) for _ in range(300))
    for run in live:
        assert await task_tokens.record_issue(pool, run, str(owner), now + 3600)
        await task_tokens.revoke_run(pool, run, str(owner), now)
    gone = str(uuid.uuid4())  # its token expired: nothing to refuse
    await pool.execute("INSERT INTO task_run_tokens VALUES ($1, $2, $3, $4)", gone, str(owner),
                       now - task_tokens.LEEWAY - 5, now - 7200)

    whole = await handlers.revocations(pool, settings)
    assert whole.next is None
    assert whole.users == {str(owner): pytest.approx(now - 10)}
    assert set(whole.sessions) == {str(code_session), *live} and set(whole.session_expiry) == set(live)
    assert len(whole.model_dump_json()) > 30_000  # the pages below are a tenth of it

    budget, pages = 4096 + 3_000, []

    async def page(after):
        answered = await handlers.revocations(pool, settings, after, budget)
        pages.append(len(answered.model_dump_json()))
        return answered

    read = await read_revocation_pages(page)
    assert len(pages) >= 10 and max(pages) <= budget, pages
    assert (read.users, read.sessions, read.session_expiry) == (whole.users, whole.sessions, whole.session_expiry)
    with pytest.raises(InvalidRequest):
        await handlers.revocations(pool, settings, "9:x", budget)  # not a `next` auth gave


async def test_a_rotated_out_key_verifies_a_long_runs_token_until_it_expires(pool):
    """A run's token (up to its timeout + 60 s: a day) signed before a rotation: its key stays in the JWKS until the
    token expires (migration 018, store.public_keys), not only key_retention (the access and refresh tokens'
    lifetime + 60 s: ~1 h), after which a run still going had its token refused for the rest of the run. A key that
    signed no run token, or none still valid, leaves at key_retention as before (a leaked key rotated out)."""
    import jwt
    from jwt.algorithms import RSAAlgorithm

    from services.auth import handlers, store
    from shared.messages.tasks import IssueTaskToken
    from shared.settings import AuthSettings

    settings = AuthSettings()
    deps = handlers.AuthDeps(pool=pool, settings=settings, keys={})
    owner = uuid.uuid4()
    async with pool.acquire() as conn:
        await store.create_user(conn, owner, f"runner-{owner.hex[:8]}", None, "not a hash")
        workspace = await store.create_workspace(conn, f"ws-{owner.hex[:8]}", owner)
    await handlers.ensure_signing_key(pool)
    first = (await store.active_key(pool))["kid"]
    ttl = 10 * 3600  # a ten-hour run
    issued = await handlers.issue_task_token(deps, IssueTaskToken(
        user_id=str(owner), workspace_id=workspace, ttl=ttl, task_id="t", run_id=str(uuid.uuid4())))
    for _ in range(2):  # rotated out, then the next key too (it signed no run token)
        await store.add_active_key(pool, *handlers._new_key())
    second = (await pool.fetch("SELECT kid FROM signing_keys WHERE NOT active AND kid <> $1", first))[0]["kid"]
    # both rotated out two hours ago: past key_retention, the run's token not expired
    await pool.execute("UPDATE signing_keys SET retired_at = now() - interval '2 hours' WHERE NOT active")
    assert handlers.key_retention(settings) < 2 * 3600 < ttl

    keys = {k["kid"]: k for k in await store.public_keys(pool, handlers.key_retention(settings))}
    assert first in keys and second not in keys  # the one that signed the run's token; not the one that signed none
    claims = jwt.decode(issued.access_token, RSAAlgorithm.from_jwk(keys[first]), algorithms=["RS256"],
                        audience=settings.audience, issuer=settings.issuer)
    assert claims["exp"] - time.time() > 9 * 3600

    # once the run's token has expired (and the verifiers' leeway passed), the key leaves the JWKS
    await pool.execute("UPDATE signing_keys SET signs_run_tokens_until = $2 WHERE kid = $1", first,
                       time.time() - store.RUN_TOKEN_KEY_LEEWAY - 1)
    assert first not in {k["kid"] for k in await store.public_keys(pool, handlers.key_retention(settings))}

    # an operator's cut of a leaked key (docs/security.md, "Task-run tokens"): gone at once, also within the hour
    # after its rotation and while a run's token it signed is valid; the statement the docs give
    await pool.execute("UPDATE signing_keys SET retired_at = now(), signs_run_tokens_until = $2 WHERE kid = $1",
                       first, time.time() + ttl)
    assert first in {k["kid"] for k in await store.public_keys(pool, handlers.key_retention(settings))}
    # a verifier fed as auth's own (the revocation poll's answer names the keys' fingerprint, Revocations.keys): the
    # cut reaches it at its next poll, not once its keys are KEY_MAX_AGE (300 s) old, and reads no keys before
    key_reads = []

    async def read_keys():
        key_reads.append(1)
        return await store.public_keys(pool, handlers.key_retention(settings))

    class Bus:
        async def subscribe(self, subject, cb):
            return SimpleNamespace(unsubscribe=lambda: asyncio.sleep(0))

    verifier = TokenVerifier(settings, read_keys)
    feed = VerifierFeed(verifier, lambda: handlers.revocations(pool, settings, with_position=True, with_keys=True),
                        0.1, changes=lambda since: handlers.revocation_changes(
                            pool, since, keys_kept=handlers.key_retention(settings)))
    await feed.start(Bus())
    try:
        assert (await verifier.verify(issued.access_token)).subject == str(owner)  # verified and cached
        before = (await handlers.revocations(pool, settings, with_keys=True)).keys
        await asyncio.sleep(0.5)  # polls naming the same fingerprint: no key read after the token's
        assert len(key_reads) == 1, key_reads
        await pool.execute("UPDATE signing_keys SET retired_at = '-infinity', signs_run_tokens_until = NULL"
                           " WHERE kid = $1 AND NOT active", first)
        assert (await handlers.revocations(pool, settings, with_keys=True)).keys != before
        deadline = time.monotonic() + 5  # a poll is 0.1 s here (20 s in a service); the fallback 300 s
        while len(key_reads) < 2:
            assert time.monotonic() < deadline, "the cut key was not read out at the next poll"
            await asyncio.sleep(0.05)
        with pytest.raises(Unauthorized, match="unknown key"):
            await verifier.verify(issued.access_token)
    finally:
        await feed.stop()
    assert first not in {k["kid"] for k in await store.public_keys(pool, handlers.key_retention(settings))}


async def test_the_revocations_written_since_a_read_are_read_by_position_none_missed(pool, stack):
    """Verifiers poll what changed since their last read (migration 020), not the whole list: every path that
    revokes writes a change (the triggers), a read answers a `position`, and the next read from it holds every
    revocation that read did not see, a transaction's that was running during it and committed after it included
    (a position from a sequence number or the newest change would miss it for good). A verifier fed so, with every
    event missed, refuses the revoked tokens after one poll. Once the sweep has deleted changes a position needs,
    it is 409 revocation_position_lost (the verifier reads the whole list)."""
    from services.auth import handlers, store, token_sweep
    from shared.authz import Principal, TokenVerifier, VerifierFeed
    from shared.errors import Conflict

    settings = stack.settings().auth
    user, owner = uuid.uuid4(), uuid.uuid4()
    for who, name in ((user, "u"), (owner, "o")):
        await pool.execute("INSERT INTO users (id, username, password_hash) VALUES ($1, $2, 'x')", who, name)
    workspace = await pool.fetchval("INSERT INTO workspaces (name, created_by) VALUES ('w', $1) RETURNING id", owner)
    await store.create_inference_client(pool, "inference-a", "h", workspace, "a", owner)
    account = str(await pool.fetchval("SELECT service_account_id FROM clients WHERE client_id = 'inference-a'"))
    run = str(uuid.uuid4())
    assert await task_tokens.record_issue(pool, run, str(owner), time.time() + 3600)

    async def whole():
        return await handlers.revocations(pool, settings, with_position=True)

    verifier = TokenVerifier(settings, lambda: [])
    feed = VerifierFeed(verifier, whole, 20.0, changes=lambda since: handlers.revocation_changes(pool, since))
    verifier.read_revocations_from(whole)
    await verifier._read_revocations_once()  # as at a start: the whole list, and its position
    first = verifier.position
    assert first is not None
    read_whole_at = verifier.full_read_at  # the polls below read changes: a change read that failed read it again
    issued = time.time() - 1

    def token(subject: str, session: str | None = None) -> Principal:
        return Principal(subject=subject, kind="user", admin=False, client_id="c", username="u", issued_at=issued,
                         session=session)

    assert not any(verifier._is_revoked(t) for t in (token(str(user)), token(account), token(str(owner), run)))
    # a revocation written by a transaction that runs across a read and commits after it
    slow = await pool.acquire()
    slow_tx = slow.transaction()
    await slow_tx.start()
    await slow.execute("INSERT INTO revoked_sessions (session, user_id, revoked_at) VALUES ($1, $2, $3)",
                       uuid.UUID(int=7), owner, time.time())
    async with pool.acquire() as conn:
        await store.set_enabled(conn, user, False, time.time())  # a deactivation
    await store.revoke_inference_client(pool, workspace, "inference-a", time.time())
    await task_tokens.revoke_run(pool, run, str(owner))
    await feed._poll_once()  # no event: the changes since the start's read
    assert verifier._is_revoked(token(str(user))) and verifier._is_revoked(token(account))
    assert verifier._is_revoked(token(str(owner), run))
    during = verifier.position
    coded = token("a-subject-never-revoked", str(uuid.UUID(int=7)))  # the session alone refuses it
    assert not verifier._is_revoked(coded)  # not committed yet
    await slow_tx.commit()
    await pool.release(slow)
    await store.set_password(pool, owner, "y", temporary=False, revoked_before=time.time())  # a new password
    await feed._poll_once()
    assert verifier._is_revoked(coded), "a revocation committed after a read that ran while it was written: missed"
    assert verifier._is_revoked(token(str(owner)))
    assert verifier.full_read_at == read_whole_at and int(verifier.position) >= int(during) >= int(first)
    # nothing changed: an empty answer, not the list again
    assert (await handlers.revocation_changes(pool, verifier.position)).model_dump(exclude_none=True) == {
        "users": {}, "sessions": {}, "session_expiry": {}, "position": verifier.position}

    await pool.execute("UPDATE revocation_changes SET created_at = now() - interval '2 days'")
    assert await token_sweep.sweep(pool) == 0  # (refresh tokens deleted: none)
    assert await pool.fetchval("SELECT count(*) FROM revocation_changes") == 0
    with pytest.raises(Conflict) as lost:
        await handlers.revocation_changes(pool, first)
    assert lost.value.code == "revocation_position_lost"
    latest = (await whole()).position
    assert (await handlers.revocation_changes(pool, latest)).position is not None  # a position after the sweep: read
    with pytest.raises(InvalidRequest):
        await handlers.revocation_changes(pool, "12; x")
