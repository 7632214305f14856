"""SQL of the auth service (asyncpg, `$n` parameters only), in schema `auth`."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from shared import subjects
from shared.messages.auth import (
    SigningKeyWasRotated,
    TokensRevoked,
    UserActivated,
    UserCreated,
    UserDeactivated,
    WorkspaceMembershipChanged,
    WorkspaceWasCreated,
)
from shared.messages.base import Event
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's

# --- the outbox (shared/outbox.py) -----------------------------------------------------------------------
# the events auth's commits write to the outbox, each in its change's transaction, sent from there in order per user
# (user_id, or a revocation's subject), workspace or signing key (ORDER_FIELDS: the first its payload names)
EVENT_TYPES: dict[str, type[Event]] = {subjects.EVENT_SIGNING_KEY_ROTATED: SigningKeyWasRotated,
                                       subjects.EVENT_TOKENS_REVOKED: TokensRevoked,
                                       subjects.EVENT_USER_CREATED: UserCreated,
                                       subjects.EVENT_USER_DEACTIVATED: UserDeactivated,
                                       subjects.EVENT_USER_ACTIVATED: UserActivated,
                                       subjects.EVENT_WORKSPACE_CREATED: WorkspaceWasCreated,
                                       subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED: WorkspaceMembershipChanged}
ORDER_FIELDS = ("user_id", "subject", "workspace_id", "kid")


# --- signing keys ------------------------------------------------------------------------------------


async def active_key(pool: asyncpg.Pool) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT kid, private_pem FROM signing_keys WHERE active")


async def add_active_key(pool: asyncpg.Pool, kid: str, private_pem: str, public_jwk: dict[str, Any]) -> None:
    """Make a new key the active one (the previous keys stay for verification), and in the same transaction put its
    events.auth.signing_key_rotated in the outbox."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))")
        await conn.execute("UPDATE signing_keys SET active = false, retired_at = now() WHERE active")
        await conn.execute(
            "INSERT INTO signing_keys (kid, private_pem, public_jwk, active) VALUES ($1, $2, $3::jsonb, true)",
            kid, private_pem, json.dumps(public_jwk),
        )
        await add_event(conn, subjects.EVENT_SIGNING_KEY_ROTATED, SigningKeyWasRotated(kid=kid))


async def ensure_first_key(pool: asyncpg.Pool, kid: str, private_pem: str, public_jwk: dict[str, Any]) -> bool:
    """Insert a first active key unless one exists (safe when replicas start together)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))")
        if await conn.fetchval("SELECT 1 FROM signing_keys WHERE active"):
            return False
        await conn.execute(
            "INSERT INTO signing_keys (kid, private_pem, public_jwk, active) VALUES ($1, $2, $3::jsonb, true)",
            kid, private_pem, json.dumps(public_jwk),
        )
        return True


# The keys in the JWKS ($1: keep_retired, $2: RUN_TOKEN_KEY_LEEWAY): public_keys, and the revocation poll's
# fingerprint of them (KEYS_FINGERPRINT), so both always name the same keys
PUBLIC_KEYS_WHERE = ("active OR retired_at > now() - make_interval(secs => $1)"
                     " OR signs_run_tokens_until > extract(epoch FROM now()) - $2::float8")
# md5 of the JWKS's keys, kid order: what a verifier compares between polls to read the keys only when they changed
# (a key cut in the database, retired by time, or rotated in). A few rows: one index-less scan of a tiny table
KEYS_FINGERPRINT = ("(SELECT md5(coalesce(string_agg(kid || '=' || public_jwk::text, ',' ORDER BY kid), ''))"
                    f" FROM signing_keys WHERE {PUBLIC_KEYS_WHERE})")


async def public_keys(pool: asyncpg.Pool, keep_retired: float) -> list[dict[str, Any]]:
    """The active key, the keys retired less than `keep_retired` seconds ago, and those that signed a task token
    still valid (`signs_run_tokens_until`, plus the verifiers' RUN_TOKEN_KEY_LEEWAY): their tokens may still be
    valid."""
    rows = await pool.fetch(f"SELECT public_jwk FROM signing_keys WHERE {PUBLIC_KEYS_WHERE} ORDER BY created_at DESC",
                            float(keep_retired), RUN_TOKEN_KEY_LEEWAY)
    return [json.loads(r["public_jwk"]) for r in rows]


RUN_TOKEN_KEY_LEEWAY = 60.0  # s a key stays past the expiry of the last task token it signed (verifiers' leeway: 5 s)


async def key_signs_run_token(pool: asyncpg.Pool, kid: str, expires_at: float) -> None:
    """Before a task token signed by `kid` is handed out: the key stays in the JWKS until it expires (public_keys),
    also when it is rotated out meanwhile."""
    await pool.execute("UPDATE signing_keys SET signs_run_tokens_until = GREATEST(signs_run_tokens_until, $2::float8)"
                       " WHERE kid = $1", kid, float(expires_at))


# --- users -------------------------------------------------------------------------------------------

USER_COLUMNS = ("id, username, email, password_hash, enabled, is_admin, temporary_password, created_at,"
                " revoked_before, failed_logins, last_failed_at, locked_until")


async def user_by_login(pool: asyncpg.Pool, login: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1) OR lower(email) = lower($1)"
        " ORDER BY (lower(username) = lower($1)) DESC LIMIT 1",
        login,
    )


async def user_by_id(pool: asyncpg.Pool, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)


async def count_admins(conn: asyncpg.Connection, enabled_only: bool = True) -> int:
    return await conn.fetchval("SELECT count(*) FROM users WHERE is_admin AND (enabled OR NOT $1)", enabled_only)


async def create_user(
    conn: asyncpg.Connection, user_id: uuid.UUID, username: str, email: str | None, password_hash: str,
    *, is_admin: bool = False, temporary_password: bool = False,
) -> None:
    await conn.execute(
        "INSERT INTO users (id, username, email, password_hash, is_admin, temporary_password)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        user_id, username, email, password_hash, is_admin, temporary_password,
    )


async def login_failures(pool: asyncpg.Pool, user_id: uuid.UUID, source: str) -> asyncpg.Record | None:
    """Recent failed logins of a user from one source: failures, last_failed_at, locked_until (None if none in
    the last hour). users/update_password's wrong current passwords; sign-ins count per name (sign_in_failures)."""
    return await pool.fetchrow(
        "SELECT failures, last_failed_at, locked_until FROM login_failures"
        " WHERE user_id = $1 AND source = $2 AND (last_failed_at > now() - interval '1 hour' OR locked_until > now())",
        user_id, source)


async def record_failed_login(pool: asyncpg.Pool, user_id: uuid.UUID, source: str, lock_after: int,
                              lock_seconds: int) -> int:
    """Count a failed login from a source (the count decays after an hour without failures); lock that user for
    that source when it reaches lock_after. Rows idle for a day are deleted by the auth state sweep
    (`delete_idle_login_failures`); the count and the lock read only times, so a row left longer decides nothing."""
    return await pool.fetchval(
        "INSERT INTO login_failures AS f (user_id, source, failures, last_failed_at,"
        "   locked_until) VALUES ($1, $2, 1, now(), CASE WHEN 1 >= $3 THEN now() + make_interval(secs => $4) END)"
        " ON CONFLICT (user_id, source) DO UPDATE SET"
        " failures = CASE WHEN f.last_failed_at > now() - interval '1 hour' THEN f.failures + 1 ELSE 1 END,"
        " last_failed_at = now(),"
        " locked_until = CASE WHEN (CASE WHEN f.last_failed_at > now() - interval '1 hour'"
        "   THEN f.failures + 1 ELSE 1 END) >= $3 THEN now() + make_interval(secs => $4) ELSE f.locked_until END"
        " RETURNING failures",
        user_id, source, lock_after, float(lock_seconds))


async def delete_idle_login_failures(pool: asyncpg.Pool) -> int:
    """Failed-login rows idle for a day and not locked (sources come and go); how many went. A failure that old no
    longer counts (`login_failures` and `record_failed_login` read only the last hour, or a lock still running)."""
    status = await pool.execute("DELETE FROM login_failures WHERE last_failed_at < now() - interval '1 day'"
                                " AND (locked_until IS NULL OR locked_until < now())")
    return int(status.split()[-1])


async def clear_failed_logins(pool: asyncpg.Pool, user_id: uuid.UUID, source: str) -> None:
    await pool.execute("DELETE FROM login_failures WHERE user_id = $1 AND source = $2", user_id, source)


async def claim_login_attempt(pool: asyncpg.Pool, user_id: uuid.UUID, source: str, attempt: uuid.UUID,
                              lease_seconds: float) -> bool:
    """Claim the one attempt of a user from a source being answered, for every auth process: False while another
    claim younger than `lease_seconds` holds it. Concurrent claims queue on the row's lock and the losers see the
    winner's fresh claim (read committed re-checks the WHERE on the new row)."""
    return bool(await pool.fetchval(
        "INSERT INTO login_attempts AS a (user_id, source, attempt, started_at) VALUES ($1, $2, $3, now())"
        " ON CONFLICT (user_id, source) DO UPDATE SET attempt = $3, started_at = now()"
        " WHERE a.started_at < now() - make_interval(secs => $4) RETURNING true",
        user_id, source, attempt, float(lease_seconds)))


async def delete_stale_login_attempts(pool: asyncpg.Pool, older_than: float) -> int:
    """Claims older than `older_than` seconds (crashed processes' leftovers: a live claim is released when its
    attempt is answered); how many went."""
    status = await pool.execute("DELETE FROM login_attempts WHERE started_at < now() - make_interval(secs => $1)",
                                float(older_than))
    return int(status.split()[-1])


async def release_login_attempt(pool: asyncpg.Pool, user_id: uuid.UUID, source: str, attempt: uuid.UUID) -> None:
    """End a claimed attempt (only this claim: one that outlived its lease may have been taken over)."""
    await pool.execute("DELETE FROM login_attempts WHERE user_id = $1 AND source = $2 AND attempt = $3",
                       user_id, source, attempt)


# --- failed sign-ins, per attempted name and source (migration 021) ----------------------------------------
# A sign-in's password is counted, slowed, locked and checked one at a time per NAME tried (and source), known or
# not: keyed by the user, an unknown name was never delayed nor locked, which told whether a name existed. The key is
# sha256(lower(name)), lower() as user_by_login compares (one key for `Alice` and `alice`; a user's username and
# email are two names), 32 bytes whatever was sent, and no typed text is kept.
NAME_KEY = "sha256(convert_to(lower($1), 'UTF8'))"


async def sign_in_failures(pool: asyncpg.Pool, name: str, source: str) -> asyncpg.Record | None:
    """Recent failed sign-ins naming `name` from one source: failures, last_failed_at, locked_until (None if none in
    the last hour and no lock running)."""
    return await pool.fetchrow(
        "SELECT failures, last_failed_at, locked_until FROM sign_in_failures"
        f" WHERE name_key = {NAME_KEY} AND source = $2"
        " AND (last_failed_at > now() - interval '1 hour' OR locked_until > now())",
        name, source)


async def record_failed_sign_in(pool: asyncpg.Pool, name: str, source: str, lock_after: int,
                                lock_seconds: int) -> int:
    """Count a failed sign-in naming `name` from a source, whether a user has that name or not (the count decays
    after an hour without failures); lock that name for that source when it reaches lock_after. The count."""
    return await pool.fetchval(
        "INSERT INTO sign_in_failures AS f (name_key, source, failures, last_failed_at, locked_until)"
        f" VALUES ({NAME_KEY}, $2, 1, now(), CASE WHEN 1 >= $3 THEN now() + make_interval(secs => $4) END)"
        " ON CONFLICT (name_key, source) DO UPDATE SET"
        " failures = CASE WHEN f.last_failed_at > now() - interval '1 hour' THEN f.failures + 1 ELSE 1 END,"
        " last_failed_at = now(),"
        " locked_until = CASE WHEN (CASE WHEN f.last_failed_at > now() - interval '1 hour'"
        "   THEN f.failures + 1 ELSE 1 END) >= $3 THEN now() + make_interval(secs => $4) ELSE f.locked_until END"
        " RETURNING failures",
        name, source, lock_after, float(lock_seconds))


async def clear_failed_sign_ins(pool: asyncpg.Pool, names: list[str], source: str) -> None:
    """A sign-in succeeded: the source's counts of the user's names (the one typed, its username and email) go."""
    await pool.execute("DELETE FROM sign_in_failures WHERE source = $2"
                       " AND name_key IN (SELECT sha256(convert_to(lower(n), 'UTF8')) FROM unnest($1::text[]) n)",
                       names, source)


async def delete_idle_sign_in_failures(pool: asyncpg.Pool, batch: int) -> int:
    """Up to `batch` failed-sign-in rows that no longer count (no failure in the last hour and no lock running:
    exactly the rows sign_in_failures does not read and record_failed_sign_in would restart at 1); how many went.
    Rows a sign-in holds right now are skipped. Only time removes a row (no cap), so no flood of made-up names can
    push out a real user's count."""
    status = await pool.execute(
        "DELETE FROM sign_in_failures WHERE (name_key, source) IN (SELECT name_key, source FROM sign_in_failures"
        " WHERE last_failed_at <= now() - interval '1 hour' AND (locked_until IS NULL OR locked_until <= now())"
        " LIMIT $1 FOR UPDATE SKIP LOCKED)",
        batch)
    return int(status.split()[-1])


async def claim_sign_in_attempt(pool: asyncpg.Pool, name: str, source: str, attempt: uuid.UUID,
                                lease_seconds: float) -> bool:
    """Claim the one sign-in naming `name` from a source being answered, for every auth process (as
    claim_login_attempt does per user): False while another claim younger than `lease_seconds` holds it."""
    return bool(await pool.fetchval(
        f"INSERT INTO sign_in_attempts AS a (name_key, source, attempt, started_at) VALUES ({NAME_KEY}, $2, $3, now())"
        " ON CONFLICT (name_key, source) DO UPDATE SET attempt = $3, started_at = now()"
        " WHERE a.started_at < now() - make_interval(secs => $4) RETURNING true",
        name, source, attempt, float(lease_seconds)))


async def release_sign_in_attempt(pool: asyncpg.Pool, name: str, source: str, attempt: uuid.UUID) -> None:
    """End a claimed sign-in (only this claim: one that outlived its lease may have been taken over)."""
    await pool.execute(f"DELETE FROM sign_in_attempts WHERE name_key = {NAME_KEY} AND source = $2 AND attempt = $3",
                       name, source, attempt)


async def delete_stale_sign_in_attempts(pool: asyncpg.Pool, older_than: float) -> int:
    """Sign-in claims older than `older_than` seconds (crashed processes' leftovers); how many went."""
    status = await pool.execute("DELETE FROM sign_in_attempts WHERE started_at < now() - make_interval(secs => $1)",
                                float(older_than))
    return int(status.split()[-1])


async def set_enabled(conn: asyncpg.Connection, user_id: uuid.UUID, enabled: bool,
                      revoked_before: float | None) -> None:
    await conn.execute(
        "UPDATE users SET enabled = $2, revoked_before = COALESCE($3, revoked_before) WHERE id = $1",
        user_id, enabled, revoked_before,
    )


async def set_password(pool: asyncpg.Pool, user_id: uuid.UUID, password_hash: str, *, temporary: bool,
                       revoked_before: float) -> TokensRevoked:
    """A new password; tokens issued before `revoked_before` stop counting and refresh tokens are spent (and, in the
    same transaction, events.auth.tokens_revoked put in the outbox). That event."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE users SET password_hash = $2, temporary_password = $3,"
            " revoked_before = GREATEST(COALESCE(revoked_before, 0), $4) WHERE id = $1",
            user_id, password_hash, temporary, revoked_before)
        await conn.execute("UPDATE refresh_tokens SET used = true WHERE user_id = $1 AND NOT used", user_id)
        event = TokensRevoked(subject=str(user_id), revoked_before=revoked_before)
        await add_event(conn, subjects.EVENT_TOKENS_REVOKED, event)
        return event


LISTED_COLUMNS = "u.id, u.username, u.email, u.enabled, u.temporary_password, u.created_at"
"""What a user's record in users/query is made of (handlers._user_record): no password hash."""


class NotMember(Exception):
    """A users/query of a workspace its caller is not a member of in the snapshot its users are read in."""


async def _require_member(conn: asyncpg.Connection, member: uuid.UUID | None, workspace_id: int | None) -> None:
    """NotMember unless `member` (None: nobody to check) is a member of `workspace_id` in the transaction's snapshot."""
    if member is not None and workspace_id is not None and await role_in(conn, member, workspace_id) is None:
        raise NotMember(workspace_id)


async def _workspaces_of(conn: asyncpg.Connection, user_id: uuid.UUID | None) -> list[int] | None:
    """The workspaces `user_id` is a member of (None for None): _users_source's co-member filter names them."""
    if user_id is None:
        return None
    return await conn.fetchval(
        "SELECT coalesce(array_agg(workspace_id), '{}') FROM workspace_members WHERE user_id = $1", user_id)


@contextlib.asynccontextmanager
async def _users_read(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a read-only REPEATABLE READ transaction, so the caller's workspaces and the users read after
    them are of one moment, planning each statement for its own parameters' values (plan_cache_mode): the text is
    one for every workspace set (one prepared statement a connection), and a generic plan, which the server may keep
    for a prepared statement after 5 runs and which knows no parameter's value, never runs (docs/performance.md item
    71: beside one large workspace it read every user). No bitmap scans: every range these statements read is wanted
    in its index's order (_users_source), and a bitmap scan reads a range whole to sort it; a caller's workspaces,
    estimated from the column's average (a parameter of a LATERAL), were each read whole that way for a first page
    (item 74)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_bitmapscan = off")
        yield conn


_USER_OF_M = f"CROSS JOIN LATERAL (SELECT {LISTED_COLUMNS} FROM users u WHERE u.id = m.user_id OFFSET 0) u"
"""The user of a member `m` by primary key: as a join the planner may instead hash every user when it estimates more
members than a page (the caller's workspaces' ranges, estimated from the column's average: item 71's whole read)."""


def _users_source(ids: list[uuid.UUID] | None, workspace_id: int | None, co_members_of: uuid.UUID | None,
                  co_workspaces: list[int] | None, after: tuple[datetime, uuid.UUID] | None, limit: int | None,
                  args: list[Any]) -> tuple[str, str]:
    """The FROM and WHERE of list_users and users_answer_size (its parameters appended to `args`), and the columns
    their order (created_at, id) is read in: only the filters asked for. The rows are driven from one index range
    chosen here, not by the planner from the statistics, and every other filter is a probe of the row read, so no
    plan reads more than the driving range and a look-up per row whatever the statistics say (docs/performance.md
    item 74: a workspace filled since the last ANALYZE, estimated at one member, had every page after the first
    rescan its members for each user read, 0.3-2.5 s a page of 13,000):
    - ids: those users by primary key (at most as many as asked);
    - a workspace: its members in the users' order (workspace_members_users_order, migration 016), each user by
      primary key; a page is the members after the cursor, `limit` at most;
    - the caller's co-members (the members of `co_workspaces`, the caller's workspaces read first, themself among
      them): each workspace's members after the cursor in that order, `limit` at most of each, merged and deduplicated
      (a user in two of them once); a caller in no workspace (`co_workspaces` empty) is their own only co-member;
    - none: users_created (migration 015) from the cursor.
    A member's user is read by primary key (_USER_OF_M) and a probe is `EXISTS (... OFFSET 0)`: the OFFSET keeps
    PostgreSQL from making either a join the planner orders from its estimates (one from stale statistics was the
    quadratic plan); each stays a look-up per row. Parameters are planned for their values (_users_read's
    plan_cache_mode), and the text does not change with the workspaces (one prepared statement a connection,
    item 71)."""
    where: list[str] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    def cursor(created_at: str, id_: str) -> None:
        if after is not None:
            where.append(f"({created_at}, {id_}) > ({arg(after[0])}::timestamptz, {arg(after[1])}::uuid)")

    def member_of(workspaces: str) -> str:
        return (f"EXISTS (SELECT FROM workspace_members p WHERE p.workspace_id {workspaces} AND p.user_id = u.id"
                " OFFSET 0)")

    def co_members() -> None:
        if co_workspaces:
            where.append(member_of(f"= ANY({arg(sorted(co_workspaces))}::bigint[])"))
        elif co_workspaces is not None:  # in no workspace: themself only
            where.append(f"u.id = {arg(co_members_of)}::uuid")

    order = "u.created_at, u.id"
    if ids is not None or (workspace_id is None and not co_workspaces):
        source = "users u"
        if ids is not None:
            where.append(f"u.id = ANY({arg(ids)}::uuid[])")
        if workspace_id is not None:
            where.append(member_of(f"= {arg(workspace_id)}::bigint"))
        co_members()
        cursor("u.created_at", "u.id")
    elif workspace_id is not None:
        source = f"workspace_members m {_USER_OF_M}"
        order = "m.user_created_at, m.user_id"
        where.append(f"m.workspace_id = {arg(workspace_id)}::bigint")
        cursor("m.user_created_at", "m.user_id")
        co_members()
    else:
        # each of the caller's workspaces a range of its own (LATERAL), at most `limit` (NULL: all) each
        workspaces = arg(sorted(co_workspaces))
        after_term = ""
        if after is not None:
            after_term = (f" AND (k.user_created_at, k.user_id) > ({arg(after[0])}::timestamptz,"
                          f" {arg(after[1])}::uuid)")
        source = ("(SELECT DISTINCT r.user_created_at, r.user_id"
                  f" FROM unnest({workspaces}::bigint[]) w (id) CROSS JOIN LATERAL (SELECT k.user_created_at, k.user_id"
                  f" FROM workspace_members k WHERE k.workspace_id = w.id{after_term}"
                  f" ORDER BY k.user_created_at, k.user_id LIMIT {arg(limit)}::bigint) r) m {_USER_OF_M}")
        order = "m.user_created_at, m.user_id"
    return source + (" WHERE " + " AND ".join(where) if where else ""), order


async def list_users(pool: asyncpg.Pool, *, ids: list[uuid.UUID] | None, workspace_id: int | None,
                     co_members_of: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None = None,
                     limit: int | None = None, member: uuid.UUID | None = None) -> list[asyncpg.Record]:
    """Users (LISTED_COLUMNS) filtered by ids and/or workspace, oldest first (created_at, id); `co_members_of` limits
    to users sharing a workspace with that user (themself among them; only themself when in no workspace); those
    after `after` (a page's cursor: created_at, id), `limit` at most (None: all).

    Only the filters asked for are in the query (_users_source). As `($n IS NULL OR EXISTS (...))` they could not
    be joined: every user was read and each filtered by a hashed subplan, and with users (created_at, id)
    (migration 015) the planner did that in index order for a page: a user's users/query on 200,000 users read all
    of them, 200-640 ms, where this reads the caller's few: 0.2-7 ms (docs/performance.md item 55); a page is now an
    index range whatever the statistics (item 74). The caller's workspaces are read first (_workspaces_of), in the
    same snapshot as the users (_users_read), and passed as an array (item 71). With `member`, NotMember unless that
    user is a member of `workspace_id`, checked in the same snapshot (a check of its own before, a caller removed
    between the two was listed the workspace's users)."""
    async with _users_read(pool) as conn:
        await _require_member(conn, member, workspace_id)
        args: list[Any] = []
        source, order = _users_source(ids, workspace_id, co_members_of, await _workspaces_of(conn, co_members_of),
                                      after, limit, args)
        args.append(limit)
        return await conn.fetch(
            f"SELECT {LISTED_COLUMNS} FROM {source} ORDER BY {order} LIMIT ${len(args)}::bigint", *args)


async def users_answer_size(pool: asyncpg.Pool, *, ids: list[uuid.UUID] | None, workspace_id: int | None,
                            co_members_of: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None = None,
                            member: uuid.UUID | None = None, per_email: int = 0) -> tuple[int, int]:
    """How many users list_users would answer whole with these filters (those after `after`: a cursor without limit
    answers the rest), and the UTF-8 bytes of their usernames and emails together, `per_email` more for each user
    with an email (its key: a user without one has none): what an answer's size is made of, counted in PostgreSQL
    without reading the rows out. `member` as list_users'."""
    async with _users_read(pool) as conn:
        await _require_member(conn, member, workspace_id)
        args: list[Any] = []
        source, _ = _users_source(ids, workspace_id, co_members_of, await _workspaces_of(conn, co_members_of), after,
                                  None, args)
        args.append(per_email)
        row = await conn.fetchrow(
            "SELECT count(*) AS users, coalesce(sum(octet_length(u.username)"
            f" + coalesce(octet_length(u.email) + ${len(args)}::int, 0)), 0) AS text_bytes FROM {source}", *args)
    return row["users"], row["text_bytes"]


# The revocation list's parts, in the order it is answered (handlers.revocations pages through them): each a query
# of (key, at, expires) rows with key > $2, in key order, at most $3 (NULL: all). $1: the moment before which an
# entry can no longer refuse a valid token (a subject's: revoked before the longest token lifetime; a session's:
# before an access token's; a run's: its tokens expired).
REVOCATION_PARTS = (
    # users whose tokens issued at or before revoked_before are refused (deactivated, a new password)
    "SELECT id::text AS key, revoked_before AS at, NULL::float8 AS expires FROM users"
    " WHERE revoked_before >= $1::float8 AND id::text > $2 ORDER BY id::text LIMIT $3",
    # inference clients' service accounts, revoked
    "SELECT service_account_id::text AS key, revoked_at AS at, NULL::float8 AS expires FROM clients"
    " WHERE revoked_at >= $1::float8 AND service_account_id::text > $2 ORDER BY service_account_id::text LIMIT $3",
    # sessions revoked for a reused authorization code
    "SELECT session::text AS key, revoked_at AS at, NULL::float8 AS expires FROM revoked_sessions"
    " WHERE revoked_at >= $1::float8 AND session::text > $2 ORDER BY session::text LIMIT $3",
    # ended task runs' sessions, until their tokens expire (task_tokens.revoked; the primary key's order)
    "SELECT run_id AS key, revoked_at AS at, expires_at AS expires FROM task_run_tokens WHERE revoked_at IS NOT NULL"
    " AND expires_at >= $1::float8 AND run_id > $2 ORDER BY run_id LIMIT $3",
)


async def revocation_part(pool: asyncpg.Pool, part: int, since: float, after: str,
                          limit: int | None) -> list[asyncpg.Record]:
    """Rows of REVOCATION_PARTS[part] listed since `since`, after key `after` ('' from the start), at most `limit`."""
    return await pool.fetch(REVOCATION_PARTS[part], since, after, limit)


# A read's position (migration 020): the oldest transaction still running at the read's snapshot. Every revocation
# that snapshot did not see was written by a transaction at or above it, so "changes at or above it" covers it.
POSITION = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


async def revocation_position(pool: asyncpg.Pool) -> int:
    """The position of a read of the whole list that starts after this returns (its statements' snapshots are later
    than this one's: whatever they miss was written at or above it)."""
    return await pool.fetchval(f"SELECT {POSITION}")


async def revocation_position_and_keys(pool: asyncpg.Pool, keep_retired: float) -> tuple[int, str]:
    """revocation_position and, in the same statement, the JWKS's fingerprint (KEYS_FINGERPRINT)."""
    row = await pool.fetchrow(f"SELECT {POSITION} AS position, {KEYS_FINGERPRINT} AS keys",
                              float(keep_retired), RUN_TOKEN_KEY_LEEWAY)
    return row["position"], row["keys"]


async def keys_fingerprint(pool: asyncpg.Pool, keep_retired: float) -> str:
    """The JWKS's fingerprint alone (a whole read asked for keys without a position)."""
    return await pool.fetchval(f"SELECT {KEYS_FINGERPRINT}", float(keep_retired), RUN_TOKEN_KEY_LEEWAY)


class PositionLost(Exception):
    """A position older than the changes kept (the sweep deleted rows at or above it), or from another database's
    history (above any transaction id it has given): the changes since it cannot be told."""


async def revocation_changes(pool: asyncpg.Pool, since: int, after: int, limit: int | None,
                             keep_retired: float | None = None) -> tuple[int, list[asyncpg.Record], str | None]:
    """(the position of this read, the revocations written by transactions at or above `since`, after change id
    `after`, in id order, at most `limit`: rows of (id, part, key, at, expires), and with `keep_retired` the JWKS's
    fingerprint (KEYS_FINGERPRINT), else None). One snapshot for them all: a sweep that deleted rows this read needed
    is seen, and PositionLost raised, never an answer missing them; the fingerprint costs no statement of its own."""
    keys = f", {KEYS_FINGERPRINT} AS keys" if keep_retired is not None else ", NULL::text AS keys"
    args = (float(keep_retired), RUN_TOKEN_KEY_LEEWAY) if keep_retired is not None else ()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        now = await conn.fetchrow(f"SELECT {POSITION} AS position,"
                                  " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next,"
                                  f" (SELECT below::text::bigint FROM revocation_changes_pruned) AS below{keys}",
                                  *args)
        if since < now["below"] or since > now["next"]:
            raise PositionLost
        rows = await conn.fetch("SELECT id, part, key, at, expires FROM revocation_changes"
                                " WHERE xid >= $1::text::xid8 AND id > $2 ORDER BY id LIMIT $3",
                                str(since), after, limit)
    return now["position"], rows, now["keys"]


async def delete_old_revocation_changes(pool: asyncpg.Pool, older_than: float) -> int:
    """Delete the revocation changes written more than `older_than` seconds ago and raise the kept changes' bound past
    them (one statement, one snapshot and one now(): the bound covers the very rows deleted, and a read sees both or
    neither); how many were deleted."""
    status = await pool.execute(
        "WITH raised AS (UPDATE revocation_changes_pruned SET below = GREATEST(below, (SELECT (max(xid::text::bigint)"
        " + 1)::text::xid8 FROM revocation_changes WHERE created_at < now() - make_interval(secs => $1)))"
        " WHERE EXISTS (SELECT 1 FROM revocation_changes WHERE created_at < now() - make_interval(secs => $1)))"
        " DELETE FROM revocation_changes WHERE created_at < now() - make_interval(secs => $1)", older_than)
    return int(status.split()[-1])


# --- clients and refresh tokens ------------------------------------------------------------------------


CLIENT_COLUMNS = ("client_id, secret_hash, service_account_id, workspace_id, name, created_by, created_at, revoked_at,"
                  " public")


async def client(pool: asyncpg.Pool, client_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1", client_id)


async def set_client_secret_hash(conn: asyncpg.Connection, client_id: str, secret_hash: str) -> None:
    await conn.execute("UPDATE clients SET secret_hash = $2 WHERE client_id = $1", client_id, secret_hash)


async def create_inference_client(pool: asyncpg.Pool, client_id: str, secret_hash: str, workspace_id: int,
                                  name: str, created_by: uuid.UUID) -> None:
    await pool.execute(
        "INSERT INTO clients (client_id, secret_hash, service_account_id, workspace_id, name, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        client_id, secret_hash, uuid.uuid4(), workspace_id, name, created_by,
    )


async def inference_clients(pool: asyncpg.Pool, workspace_id: int, after: tuple[datetime, str] | None = None,
                            limit: int | None = None) -> list[asyncpg.Record]:
    """The live (unrevoked) inference clients of a workspace, oldest first (created_at, client_id): those after
    `after` (a page's cursor: created_at, client_id), `limit` at most (None: all)."""
    return await pool.fetch(
        f"SELECT {CLIENT_COLUMNS} FROM clients WHERE workspace_id = $1 AND revoked_at IS NULL"
        " AND ($2::timestamptz IS NULL OR (created_at, client_id) > ($2, $3::text))"
        " ORDER BY created_at, client_id LIMIT $4",
        workspace_id, *(after or (None, None)), limit,
    )


async def revoke_inference_client(pool: asyncpg.Pool, workspace_id: int, client_id: str,
                                  revoked_at: float) -> TokensRevoked | None:
    """Revoke a live inference client of the workspace (and, in the same transaction, put events.auth.tokens_revoked
    of its service account in the outbox); that event (its subject: the `sub` of the client's tokens), or None."""
    async with pool.acquire() as conn, conn.transaction():
        account = await conn.fetchval(
            "UPDATE clients SET revoked_at = $3 WHERE client_id = $2 AND workspace_id = $1 AND revoked_at IS NULL"
            " RETURNING service_account_id",
            workspace_id, client_id, revoked_at,
        )
        if account is None:
            return None
        event = TokensRevoked(subject=str(account), revoked_before=revoked_at)
        await add_event(conn, subjects.EVENT_TOKENS_REVOKED, event)
        return event


async def event_unsent(pool: asyncpg.Pool, event_id: uuid.UUID) -> bool:
    """Whether the outbox still holds the event (not yet acknowledged by JetStream)."""
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE event_id = $1)", event_id))


async def ensure_client(conn: asyncpg.Connection, client_id: str, secret_hash: str) -> bool:
    status = await conn.execute(
        "INSERT INTO clients (client_id, secret_hash, service_account_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (client_id) DO NOTHING",
        client_id, secret_hash, uuid.uuid4(),
    )
    return status.endswith(" 1")


PUBLIC_CLIENT_SECRET_HASH = "public: no secret"  # a marker, never equal to a keyed hash (hmac-sha256$...)


async def ensure_public_client(conn: asyncpg.Connection, client_id: str) -> bool:
    """Create the public client (no secret) unless it exists; True when created."""
    status = await conn.execute(
        "INSERT INTO clients (client_id, secret_hash, service_account_id, public) VALUES ($1, $2, $3, true)"
        " ON CONFLICT (client_id) DO NOTHING",
        client_id, PUBLIC_CLIENT_SECRET_HASH, uuid.uuid4(),
    )
    return status.endswith(" 1")


async def save_refresh_token(pool: asyncpg.Pool, jti: uuid.UUID, user_id: uuid.UUID, client_id: str,
                             expires_at: datetime, session: uuid.UUID) -> None:
    await pool.execute(
        "INSERT INTO refresh_tokens (jti, user_id, client_id, expires_at, session) VALUES ($1, $2, $3, $4, $5)",
        jti, user_id, client_id, expires_at, session,
    )


async def use_refresh_token(pool: asyncpg.Pool, jti: uuid.UUID, client_id: str) -> asyncpg.Record | None:
    """Spend a refresh token once; its user_id and session, or None if unknown, used, expired, foreign or of a
    revoked session (one minted while its session was being revoked is refused here too)."""
    return await pool.fetchrow(
        "UPDATE refresh_tokens t SET used = true"
        " WHERE jti = $1 AND client_id = $2 AND NOT used AND expires_at > now()"
        " AND NOT EXISTS (SELECT 1 FROM revoked_sessions r WHERE r.session = t.session) RETURNING user_id, session",
        jti, client_id,
    )


async def delete_dead_refresh_tokens(pool: asyncpg.Pool, batch: int) -> int:
    """Delete up to `batch` refresh tokens that can never be spent again (used, revoked or expired); how many went.
    Rows a refresh holds right now are skipped, not waited for (the next batch or sweep takes them)."""
    status = await pool.execute(
        "DELETE FROM refresh_tokens WHERE jti IN (SELECT jti FROM refresh_tokens WHERE used OR expires_at <= now()"
        " LIMIT $1 FOR UPDATE SKIP LOCKED)",
        batch)
    return int(status.split()[-1])


async def save_authorization_code(pool: asyncpg.Pool, code_hash: bytes, client_id: str, user_id: uuid.UUID,
                                  redirect_uri: str, code_challenge: str, ttl: float, keep: float) -> None:
    """Keep a new code's hash and what it is bound to, valid for `ttl` seconds; codes expired more than `keep`
    seconds ago go at the same time (a spent code is kept that long so a reuse can revoke what it issued)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM authorization_codes WHERE expires_at < now() - make_interval(secs => $1)",
                           float(keep))
        await conn.execute(
            "INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri, code_challenge, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
            code_hash, client_id, user_id, redirect_uri, code_challenge, float(ttl))


async def take_authorization_code(pool: asyncpg.Pool, code_hash: bytes, session: uuid.UUID) -> asyncpg.Record | None:
    """Spend a code, naming the session its tokens will be minted in: it works no more after this, whatever the
    caller then finds wrong with it. Its row (with `expired`), or None when it is unknown or already spent."""
    return await pool.fetchrow(
        "UPDATE authorization_codes SET spent_at = now(), session = $2 WHERE code_hash = $1 AND spent_at IS NULL"
        " RETURNING client_id, user_id, redirect_uri, code_challenge, expires_at <= now() AS expired",
        code_hash, session)


async def revoke_spent_code_session(pool: asyncpg.Pool, code_hash: bytes, revoked_at: float,
                                    keep: float) -> dict[str, Any] | None:
    """A spent code presented again: revoke the session its exchange minted tokens in (every refresh token of it is
    spent; verifiers refuse its access tokens through the revocation list). Its session, user_id and revoked_at
    (the first revocation's, when it was reused before), or None when the code is unknown. Revocations older than
    `keep` seconds go at the same time. Its events.auth.tokens_revoked is put in the outbox in the same transaction."""
    async with pool.acquire() as conn, conn.transaction():
        spent = await conn.fetchrow("SELECT session, user_id FROM authorization_codes"
                                    " WHERE code_hash = $1 AND spent_at IS NOT NULL", code_hash)
        if spent is None:
            return None
        event = await _revoke_session(conn, spent["session"], spent["user_id"], revoked_at, keep)
        return {"session": spent["session"], "user_id": spent["user_id"], "revoked_at": event.revoked_before}


async def revoke_session(pool: asyncpg.Pool, session: uuid.UUID, user_id: uuid.UUID, revoked_at: float,
                         keep: float) -> TokensRevoked:
    """A sign-out (the gateway's logout endpoint): revoke `session` of `user_id` as a reused code's is (every refresh
    token of it spent, its access tokens refused through the revocation list, its events.auth.tokens_revoked in the
    outbox in the same transaction). That event (its revoked_before: the first revocation's, when it was before)."""
    async with pool.acquire() as conn, conn.transaction():
        return await _revoke_session(conn, session, user_id, revoked_at, keep)


async def _revoke_session(conn: asyncpg.Connection, session: uuid.UUID, user_id: uuid.UUID, revoked_at: float,
                          keep: float) -> TokensRevoked:
    await conn.execute("DELETE FROM revoked_sessions WHERE revoked_at < $1", revoked_at - keep)
    first = await conn.fetchval(
        "INSERT INTO revoked_sessions (session, user_id, revoked_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (session) DO UPDATE SET revoked_at = revoked_sessions.revoked_at RETURNING revoked_at",
        session, user_id, revoked_at)
    await conn.execute("UPDATE refresh_tokens SET used = true WHERE session = $1 AND NOT used", session)
    event = TokensRevoked(subject=str(user_id), revoked_before=first, session=str(session))
    await add_event(conn, subjects.EVENT_TOKENS_REVOKED, event)
    return event


async def revoked_sessions(pool: asyncpg.Pool, since: float) -> dict[str, float]:
    """Sessions revoked at or after `since` (epoch s) -> when."""
    rows = await pool.fetch("SELECT session::text, revoked_at FROM revoked_sessions WHERE revoked_at >= $1", since)
    return {r["session"]: float(r["revoked_at"]) for r in rows}


# --- workspaces ----------------------------------------------------------------------------------------


async def create_workspace(conn: asyncpg.Connection, name: str, owner: uuid.UUID) -> int:
    workspace_id = await conn.fetchval(
        "INSERT INTO workspaces (name, created_by) VALUES ($1, $2) RETURNING id", name, owner)
    await conn.execute(
        "INSERT INTO workspace_members (workspace_id, user_id, user_type) VALUES ($1, $2, 'OWNER')",
        workspace_id, owner,
    )
    return workspace_id


async def role_in(pool: asyncpg.Pool | asyncpg.Connection, user_id: uuid.UUID, workspace_id: int) -> str | None:
    return await pool.fetchval(
        "SELECT m.user_type FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id"
        " WHERE m.workspace_id = $1 AND m.user_id = $2 AND NOT w.archived",
        workspace_id, user_id,
    )


async def workspaces_of(pool: asyncpg.Pool, user_id: uuid.UUID, after: int | None = None, limit: int | None = None,
                        only: int | None = None) -> list[asyncpg.Record]:
    """A user's workspaces, oldest first: those with an id above `after` (a page's cursor), `limit` at most (None:
    all), only workspace `only` when given (a task run's token)."""
    return await pool.fetch(
        "SELECT w.id, w.name, w.created_at, w.created_by, w.archived,"
        " COALESCE(array_agg(r.resource_id ORDER BY r.resource_id) FILTER (WHERE r.kind = 'model'), '{}') AS models,"
        " COALESCE(array_agg(r.resource_id ORDER BY r.resource_id) FILTER (WHERE r.kind = 'pipeline'), '{}')"
        "   AS pipelines"
        " FROM workspaces w JOIN workspace_members m ON m.workspace_id = w.id AND m.user_id = $1"
        " LEFT JOIN workspace_resources r ON r.workspace_id = w.id"
        " WHERE ($2::bigint IS NULL OR w.id > $2) AND ($4::bigint IS NULL OR w.id = $4)"
        " GROUP BY w.id ORDER BY w.id LIMIT $3",
        user_id, None if after is None else min(after, 2**63 - 1), limit, only,
    )


async def add_resource(pool: asyncpg.Pool, workspace_id: int, kind: str, resource_id: int) -> None:
    """Record a model or pipeline of a workspace (from the owning service's event); idempotent."""
    await pool.execute(
        "INSERT INTO workspace_resources (workspace_id, kind, resource_id)"
        " SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM workspaces WHERE id = $1) ON CONFLICT DO NOTHING",
        workspace_id, kind, resource_id)


async def add_member(pool: asyncpg.Pool, workspace_id: int, user_id: uuid.UUID, user_type: str) -> bool:
    """Add a member (and, in the same transaction, put events.workspace.membership_changed in the outbox); False if
    the user was a member already (no event then)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "INSERT INTO workspace_members (workspace_id, user_id, user_type) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            workspace_id, user_id, user_type,
        )
        added = status.endswith(" 1")
        if added:
            await add_event(conn, subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, WorkspaceMembershipChanged(
                workspace_id=workspace_id, user_id=user_id, user_type=user_type))
        return added


async def members(pool: asyncpg.Pool, workspace_id: int, after: tuple[datetime, uuid.UUID] | None = None,
                  limit: int | None = None) -> list[asyncpg.Record]:
    """A workspace's members in the order they were added: those after `after` (a page's cursor: added_at, user_id),
    `limit` at most (None: all)."""
    return await pool.fetch(
        "SELECT user_id, user_type, added_at FROM workspace_members WHERE workspace_id = $1 AND ($2::timestamptz IS"
        " NULL OR (added_at, user_id) > ($2, $3::uuid)) ORDER BY added_at, user_id LIMIT $4",
        workspace_id, *(after or (None, None)), limit,
    )


async def owner_count(conn: asyncpg.Connection, workspace_id: int) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM workspace_members WHERE workspace_id = $1 AND user_type = 'OWNER'", workspace_id)


async def remove_member(conn: asyncpg.Connection, workspace_id: int, user_id: uuid.UUID) -> int:
    status = await conn.execute(
        "DELETE FROM workspace_members WHERE workspace_id = $1 AND user_id = $2", workspace_id, user_id)
    return int(status.split()[-1])
