"""The one authorization module: who is calling (token verification) and what they may touch.

The gateway and every service that owns resources use the same `TokenVerifier`: RS256 only (`alg`
pinned, so `none` and HS256-signed-with-the-public-key are refused), keys from the auth service's JWKS
cached locally (no bus round trip per request; an unknown `kid` refetches, at most every few seconds),
`exp`, `iss` and `aud` checked, and tokens of deactivated users refused (revocations arrive as events,
and what changed in the revocation list is read periodically, so a missed event costs at most one poll interval;
the whole list is read at the start and every FULL_READ_INTERVAL).

Workspace rules: a resource inside a workspace is visible only to the workspace's members; to anyone
else it does not exist (404 for reads and writes alike). Admin-only operations are 403 for others.
Inference tokens (client_credentials of a workspace's inference client) may call inference routes only, and
only for that workspace's deployments: `require_inference_access` is the one check, and it answers a deployment
out of reach exactly as one that does not exist.

Task-run tokens (`railyard_task` + `railyard_workspace`, minted by auth for the task scheduler) carry their user's
rights in the run's workspace only: every membership check here (`require_member`, `require_owner_or_member`,
`require_inference_access`, and auth's `auth.workspaces.check_member` that the other services' lookups ask) treats
any other workspace as one the caller is not in (`out_of_scope`); lists of "my workspaces" narrow to it
(`scoped_workspace`); actions beyond a workspace, or granting access or credentials, are 403
(`require_unscoped`). docs/security.md, "Task-run tokens".
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import Forbidden, InvalidRequest, NotFound, RailyardError, Unauthorized, Unavailable, echo
from shared.settings import AuthSettings

log = logging.getLogger("railyard.authz")

ALGORITHM = "RS256"
KIND_USER = "user"
KIND_INFERENCE = "inference"
KEY_REFETCH_INTERVAL = 1.0
# s: the longest the poll keeps the signing keys without reading them again. Keys are read when a token names a key
# not known (at most every KEY_REFETCH_INTERVAL), on `events.auth.signing_key_rotated`, and when the poll's answer
# names another fingerprint of them (Revocations.keys: a key that left the JWKS without an event, retired or cut by
# an operator, docs/security.md "Task-run tokens", is dropped at the next poll); this age bounds it only where auth
# names no fingerprint (an auth of before session 33). Every poll (20 s) read them, in every service: ten reads of
# auth's database a poll
KEY_MAX_AGE = 300.0
VERIFIED_CACHE = 10_000
STARTUP_RETRY = 0.5  # s: the first wait before reading the revocation list again while it was never read (doubling)
STARTUP_GRACE = 30.0  # s after a feed's start in which a failed first read is expected (auth starting), told at INFO
# s: the longest a token auth issues can live: IssueTaskToken.ttl's bound (a task run's token: its timeout + 60 s, at
# most RAILYARD_TASKS__TOKEN_TTL); access and refresh tokens are counted from the settings (_longest_token_lifetime)
TASK_TOKEN_MAX_TTL = 24 * 3600 + 60
# s between reads of the whole revocation list; the polls in between read only what changed since the last read (auth
# migration 020). The safety net for what a change read could not tell (a database restored from a backup, whose
# positions moved back); a change read auth cannot answer (a position it no longer covers, an older auth) reads the
# whole list at once
FULL_READ_INTERVAL = 600.0


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    subject: str
    kind: Literal["user", "inference"]
    admin: bool
    client_id: str
    username: str | None
    issued_at: float
    workspace_id: int | None = None  # inference tokens: the one workspace whose deployments they may call
    # task-run tokens: a user's token scoped to the run's workspace (other workspaces do not exist for it)
    scoped_task: str | None = None
    # ...and the run it was minted for (the card the seed's input/output methods default to)
    scoped_run: str | None = None
    session: str | None = None  # the token's session_state: a revoked session's tokens are all refused

    @property
    def user_id(self) -> str:
        return self.subject


class TokenVerifier:
    """Verifies access tokens locally with the auth service's public keys."""

    def __init__(self, settings: AuthSettings, fetch_keys: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        self._settings = settings
        self._fetch_keys = fetch_keys
        self._keys: dict[str, dict[str, Any]] = {}  # kid -> public JWK, as the auth service lists them
        self._parsed: dict[str, tuple[dict[str, Any], Any]] = {}  # kid -> (that JWK, its key object)
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._revoked: dict[str, float] = {}
        self._revoked_sessions: dict[str, float] = {}  # session -> until when its revocation is kept (epoch s)
        # (until, session) for every value _revoked_sessions took, soonest first: what to forget is popped from it,
        # not found by a pass over every session (an entry whose session was kept longer since is skipped)
        self._session_expiry: list[tuple[float, str]] = []
        # Where the full revocation list comes from (VerifierFeed.start sets it) and whether it was ever read: a
        # process that started while auth was not answering yet must not accept a token revoked before its start
        self._fetch_revocations: Callable[[], Awaitable[Any]] | None = None
        self._revocations_read = False
        # where the last read stood (Revocations.position): the next poll asks for the changes since it; None: it
        # reads the whole list. And when the whole list was last read (monotonic s)
        self._position: str | None = None
        self._full_read_at = 0.0
        # the first read in flight, shared by every token met meanwhile (one read, one outcome for all of them)
        self._first_read: asyncio.Future | None = None
        # whether _first_read's failure spaces the tokens' reads (first_revocation_read)
        self._first_read_counted = True
        # when such a read last failed (monotonic s, 0 never) and what it said: a token met within
        # KEY_REFETCH_INTERVAL after it is refused 503 without a read of its own (_read_revocations_once)
        self._revocations_failed_at = 0.0
        self._revocations_failure = ""
        self._key_refresh: asyncio.Future | None = None  # a fetch of the keys for an unknown kid, shared likewise
        # when a read of the keys last failed (monotonic s, 0 never) and what it said: an unknown kid reads them at
        # most every KEY_REFETCH_INTERVAL after a failed read as after a good one (_key_for)
        self._keys_failed_at = 0.0
        self._keys_failure = ""
        # the keys' fingerprint the last revocation read named (Revocations.keys; None: auth named none), and the one
        # named when the keys last read were read: they differ, the keys changed since and the poll reads them
        self._keys_told: str | None = None
        self._keys_read_under: str | None = None
        # verified tokens -> (principal, exp); revocation and expiry are still checked on every use
        self._verified: dict[str, tuple[Principal, float]] = {}

    # --- keys and revocations ------------------------------------------------------------------

    async def refresh_keys(self, counted: bool = True) -> None:
        """Read the keys. A failed read spaces the reads of tokens of unknown kids (KEY_REFETCH_INTERVAL, `_key_for`)
        unless `counted` is false: the feed's poll within STARTUP_GRACE of its start (VerifierFeed._poll_forever),
        whose failure a token right after it does not wait out: it reads the keys itself."""
        async with self._lock:
            told = self._keys_told  # (one named while this read is under way is read again at the next poll)
            try:
                jwks = await self._fetch_keys()
            except Exception as exc:
                if not counted:
                    raise
                self._keys_failed_at = time.monotonic()
                # what a client's 503 says until the next read (_key_for): not an unexpected error's text
                self._keys_failure = exc.msg if isinstance(exc, RailyardError) else "the read failed"
                raise
            keys = {jwk["kid"]: jwk for jwk in jwks if jwk.get("kty") == "RSA" and jwk.get("kid")}
            if any(kid not in keys or keys[kid] != jwk for kid, jwk in self._keys.items()):
                # a key left (or changed): the tokens it verified are checked again at their next use, not taken
                # from the cache until they expire (an operator's cut of a leaked key reached only new tokens)
                self._verified.clear()
            self._keys = keys
            self._parsed = {kid: key for kid, key in self._parsed.items() if kid in keys and key[0] == keys[kid]}
            self._fetched_at = time.monotonic()
            self._keys_read_under = told

    def keys_told(self, fingerprint: str | None) -> None:
        """A revocation read named the keys' fingerprint (Revocations.keys; None: an auth that names none)."""
        self._keys_told = fingerprint

    @property
    def keys_stale(self) -> bool:
        """The keys were never read, the last revocation read named another fingerprint of them than the one named
        when they were read, or they were read KEY_MAX_AGE or longer ago: the poll reads them again."""
        return (not self._fetched_at or time.monotonic() - self._fetched_at >= KEY_MAX_AGE
                or (self._keys_told is not None and self._keys_told != self._keys_read_under))

    async def _key_for(self, kid: str | None) -> Any:
        if kid not in self._keys:
            # read the keys again (one read shared by the tokens met meanwhile) unless a read ended, good or failed,
            # less than KEY_REFETCH_INTERVAL ago. Before session 34 only a good read counted: while auth failed fast
            # (its database down) a flood of tokens of unknown kids read the keys back to back, one read after another
            last = max(self._fetched_at, self._keys_failed_at)
            if self._key_refresh is not None or not last or time.monotonic() - last >= KEY_REFETCH_INTERVAL:
                try:
                    await self._shared_refresh()
                except RailyardError as exc:
                    # the key may well exist: auth did not say (a service started before auth answers, as they
                    # start together, or auth away). 503 to try again, not 401 'unknown key', which tells a client
                    # its token is bad (fac827b's 503 for the revocation list was never reached: this came first)
                    raise self._keys_unread(exc.msg) from None
            elif self._keys_failed_at > self._fetched_at:  # the last read failed just now: not read again yet
                raise self._keys_unread(self._keys_failure)
        if kid not in self._keys:
            if not self._keys:
                # the last read was good but listed no key (every key cut by an operator; auth then issues no token
                # either): knowing none, the verifier cannot tell a bad token from one of a key it has not seen, so
                # 503 as while no read answered, for the token that read them as for one met within
                # KEY_REFETCH_INTERVAL after, not 401 'unknown key', which tells a client to sign in again. A kid
                # that the keys read less than a second ago do not name is still 401 without a read (docs/auth.md)
                raise self._keys_unread("auth listed no signing keys")
            raise Unauthorized("token signed with an unknown key")
        jwk = self._keys[kid]
        parsed = self._parsed.get(kid)
        if parsed is None or parsed[0] != jwk:
            # Parsed when a token signed with it first comes, not when the JWKS is fetched (at start and on every
            # poll): PyJWT and cryptography (~8 MiB) load only in a process that checks tokens.
            from jwt.algorithms import RSAAlgorithm

            parsed = self._parsed[kid] = (jwk, RSAAlgorithm.from_jwk(json.dumps(jwk)))
        return parsed[1]

    @staticmethod
    def _keys_unread(why: str) -> Unavailable:
        return Unavailable(f"tokens cannot be checked yet: the signing keys could not be read from the auth service "
                           f"({why}); try again in a moment")

    async def _shared_refresh(self) -> None:
        """`refresh_keys` for a token whose key is not known, shared by every token met while it is under way: each
        took the lock in turn for a fetch of its own, so while auth took its full timeout to fail, the n-th request
        waited n timeouts. A task of its own, which a caller going away does not cancel."""
        if self._key_refresh is None:
            self._key_refresh = asyncio.ensure_future(self.refresh_keys())
            self._key_refresh.add_done_callback(self._key_refresh_done)
        await asyncio.shield(self._key_refresh)

    def _key_refresh_done(self, refresh: asyncio.Future) -> None:
        if self._key_refresh is refresh:
            self._key_refresh = None
        if not refresh.cancelled() and isinstance(refresh.exception(), RailyardError):
            log.warning("could not fetch signing keys: %s", refresh.exception().msg)  # once, not once a waiter

    def set_revocations(self, users: dict[str, float], sessions: dict[str, float] | None = None,
                        session_expiry: dict[str, float] | None = None, position: str | None = None) -> None:
        """Merge a full list: revocation moments only ever move forward, so merging by max is safe even
        when a poll that started before an event finishes after it. `position`: the list's (None: an auth that
        answers none; the next poll reads the whole list again). A read that started before another one and ends
        after it sets an older position: the next change read re-reads a little more, nothing is missed."""
        self._merge(users, sessions, session_expiry, whole=True)
        self._revocations_read = True
        self._position = position
        self._full_read_at = time.monotonic()

    def apply_changes(self, users: dict[str, float], sessions: dict[str, float] | None = None,
                      session_expiry: dict[str, float] | None = None, position: str | None = None) -> None:
        """Merge what changed since `position` was read (a read of changes), and move to the read's position."""
        self._merge(users, sessions, session_expiry)
        self._position = position

    def _merge(self, users: dict[str, float], sessions: dict[str, float] | None,
               session_expiry: dict[str, float] | None, whole: bool = False) -> None:
        for user_id, before in users.items():
            self.revoke(user_id, before)
        for session, revoked_at in (sessions or {}).items():
            self.revoke_session(session, revoked_at, (session_expiry or {}).get(session), prune=False)
        # once a read: once an entry, a list of n sessions took n² steps. A read of the whole list (at the start and
        # every FULL_READ_INTERVAL) also rebuilds the expiry heap in one pass, dropping the entries it holds for
        # values a session no longer has (each later revocation of a session with a later expiry adds one)
        if whole:
            self._rebuild_sessions(time.time())
        else:
            self._prune_sessions(time.time())

    @property
    def position(self) -> str | None:
        """Where the last read of the revocation list stood (to read the changes since), or None."""
        return self._position

    @property
    def full_read_at(self) -> float:
        """When the whole list was last read (time.monotonic()), 0 never."""
        return self._full_read_at

    @property
    def revocations_read(self) -> bool:
        return self._revocations_read

    def read_revocations_from(self, fetch: Callable[[], Awaitable[Any]]) -> None:
        """Where the full revocation list comes from (answers `shared.messages.auth.Revocations`): read at the
        first token met while it was never read."""
        self._fetch_revocations = fetch

    async def _read_revocations_once(self) -> None:
        """Before the first token is accepted, the full revocation list must have been read once (events only
        cover what happens after the subscription): read it now if the feed's reads have not succeeded yet. The
        tokens met while a read is under way wait for that one read and share its outcome (they took a lock in
        turn, each reading again after the one before failed: while auth took its full timeout to fail, the n-th
        request met waited n timeouts). The read is a task of its own, which a caller going away (a client that
        disconnects) does not cancel. A read that failed is not started again until KEY_REFETCH_INTERVAL after its
        end: a token met meanwhile gets the same 503 without a read (before session 34, while auth failed fast, its
        database down, the tokens met read the list back to back: one read in flight, the next as soon as it failed).
        """
        if self._revocations_read or self._fetch_revocations is None:
            return
        if (self._first_read is None and self._revocations_failed_at
                and time.monotonic() - self._revocations_failed_at < KEY_REFETCH_INTERVAL):
            raise self._revocations_unread(self._revocations_failure)
        try:
            revocations = await self.first_revocation_read()
        except RailyardError as exc:
            raise self._revocations_unread(exc.msg) from None
        if not self._revocations_read:  # (applied by _first_read_done already, which runs first)
            self.set_revocations(revocations.users, revocations.sessions, revocations.session_expiry,
                                 getattr(revocations, "position", None))

    async def first_revocation_read(self, counted: bool = True) -> Any:
        """The read of the whole list while it was never read, shared: the one under way (a token's or the feed's
        poll's), else a new one; its outcome applied by `_first_read_done`, its failure counted towards
        KEY_REFETCH_INTERVAL for the tokens met after it unless the read was started with `counted` false (the
        feed's poll within STARTUP_GRACE of its start: the services start together, auth not answering yet is
        expected then and a token right after such a failure reads the list itself, as before session 35: refused
        503 for a second after each failed start-up poll, the first requests after a stack's start failed).
        Raises what the read raised. Not spaced itself: the feed's retries keep their own schedule (0.5, 1, 2 ...
        s), the tokens' reads are spaced here after a counted failed read."""
        if self._first_read is None:
            self._first_read = asyncio.ensure_future(self._fetch_revocations())
            self._first_read_counted = counted
            self._first_read.add_done_callback(self._first_read_done)
        return await asyncio.shield(self._first_read)

    def _first_read_done(self, read: asyncio.Future) -> None:
        """The shared read ended: the next token met (if the list is still unread) starts a new one, after a failed
        one not before KEY_REFETCH_INTERVAL has passed."""
        counted = True
        if self._first_read is read:
            self._first_read, counted = None, self._first_read_counted
        if read.cancelled():
            return
        failure = read.exception()  # retrieved: the callers waiting raise it
        if failure is not None:
            if not counted:  # a start-up poll's (first_revocation_read): the next token reads the list itself
                return
            # counted from the read's end, failed as it did: the next read is not before KEY_REFETCH_INTERVAL, and
            # a client's 503 until then says this (not an unexpected error's text)
            self._revocations_failed_at = time.monotonic()
            self._revocations_failure = failure.msg if isinstance(failure, RailyardError) else "the read failed"
            return
        revocations = read.result()  # applied even when every caller went away meanwhile
        self.set_revocations(revocations.users, revocations.sessions, revocations.session_expiry,
                             getattr(revocations, "position", None))
        self.keys_told(getattr(revocations, "keys", None))

    @staticmethod
    def _revocations_unread(why: str) -> Unavailable:
        return Unavailable(f"tokens cannot be checked yet: the list of revoked tokens could not be read from the auth "
                           f"service ({why}); try again in a moment")

    def revoke(self, user_id: str, before: float) -> None:
        """Refuse the user's tokens issued at or before `before`. A moment that is no finite number (a NaN or
        infinity from the list or an event) counts as now, the moment it is applied: failing closed. Kept as it was
        (`max` keeps a NaN), it dropped the earlier revocation or refused the user's every token for good; ignored,
        it left the tokens it revokes accepted until the next poll."""
        before = _finite_or_now(before, f"user {user_id}'s revocation moment")
        self._revoked[user_id] = max(before, self._revoked.get(user_id, 0))

    def revoke_session(self, session: str, revoked_at: float, expires: float | None = None, *,
                       prune: bool = True) -> None:
        """Refuse every token of a session, whenever issued (a reused authorization code's, an ended task run's).
        Kept while an access token of it could be valid: issued by the revocation, give or take a moment, plus its
        lifetime, or (`expires`: a task run's tokens, whose lifetime is the run's timeout) until the last expires,
        give or take a minute."""
        now = time.time()
        # fail closed: a moment that is no finite number is now, an expiry that is none is now + the longest lifetime
        # a token can have (a NaN kept nothing, so the session's tokens were accepted until the next poll)
        revoked_at = _finite_or_now(revoked_at, f"session {session}'s revocation moment")
        if expires is not None:
            expires = _finite_or_now(expires, f"session {session}'s expiry",
                                     _longest_token_lifetime(self._settings))
        keep_until = revoked_at + self._settings.access_token_ttl + 60 if expires is None else float(expires) + 60
        if prune:  # (`prune=False`: the caller prunes once after many, as _merge does)
            self._prune_sessions(now)
        if keep_until >= now and keep_until > self._revoked_sessions.get(session, -math.inf):
            self._revoked_sessions[session] = keep_until
            heapq.heappush(self._session_expiry, (keep_until, session))

    def _prune_sessions(self, now: float) -> None:
        """Forget the revoked sessions none of whose tokens can be valid any more: those at the top of the expiry
        heap, in O(log n) each. It was a pass over every session kept, for each revocation event: a stack holding the
        day's ended task runs' sessions (tens of thousands) spent that on the event loop per event."""
        heap, kept = self._session_expiry, self._revoked_sessions
        while heap and heap[0][0] < now:
            until, session = heapq.heappop(heap)
            if kept.get(session) == until:  # else kept longer since (a later entry holds it), or already gone
                del kept[session]

    def _rebuild_sessions(self, now: float) -> None:
        """_prune_sessions by one pass over every session kept, and the heap made again from what stays."""
        kept = {session: until for session, until in self._revoked_sessions.items() if until >= now}
        self._revoked_sessions = kept
        self._session_expiry = [(until, session) for session, until in kept.items()]
        heapq.heapify(self._session_expiry)

    def _is_revoked(self, principal: Principal) -> bool:
        if principal.session is not None and principal.session in self._revoked_sessions:
            return True
        return principal.subject in self._revoked and principal.issued_at <= self._revoked[principal.subject]

    # --- verification --------------------------------------------------------------------------

    async def verify(self, token: str | None) -> Principal:
        """The caller behind a bearer token, or Unauthorized."""
        if not token:
            raise Unauthorized("missing bearer token")
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() >= expires + 5:
                del self._verified[token]
                raise Unauthorized("token expired")
            if self._is_revoked(principal):
                raise Unauthorized("token revoked")
            return principal
        import jwt  # (see refresh_keys)

        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        key = await self._key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token from another issuer") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if claims.get("typ") != "Bearer":
            raise Unauthorized("not an access token")
        subject = str(claims["sub"])
        issued_at = float(claims["iat"])
        kind = claims.get("railyard_kind", KIND_USER)
        if kind not in (KIND_USER, KIND_INFERENCE):
            raise Unauthorized("invalid token")
        workspace = claims.get("railyard_workspace")
        if kind == KIND_INFERENCE and not isinstance(workspace, int):
            # inference tokens minted before they were scoped to a workspace are worth nothing
            raise Unauthorized("inference token without a workspace: get one from a workspace's inference client")
        principal = Principal(
            subject=subject,
            kind=kind,
            admin=bool(claims.get("railyard_admin", False)),
            client_id=str(claims.get("azp", "")),
            username=claims.get("preferred_username"),
            issued_at=issued_at,
            workspace_id=workspace if kind == KIND_INFERENCE or claims.get("railyard_task") else None,
            scoped_task=str(claims["railyard_task"]) if kind == KIND_USER and claims.get("railyard_task") else None,
            scoped_run=(str(claims["railyard_task_run"]) if kind == KIND_USER and claims.get("railyard_task")
                        and claims.get("railyard_task_run") else None),
            session=str(claims["session_state"]) if claims.get("session_state") else None,
        )
        await self._read_revocations_once()
        parsed = self._parsed.get(kid)
        if parsed is None or parsed[1] is not key:
            # the keys were read while this token waited for the first revocation read, and its key left them (or
            # changed): that read emptied the cache before this token was put in it, which would then have kept a
            # token of a cut key accepted until it expired
            raise Unauthorized("token signed with an unknown key")
        if self._is_revoked(principal):
            raise Unauthorized("token revoked")
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal


def require_user(principal: Principal) -> Principal:
    """Only user tokens: inference tokens may call inference routes only."""
    if principal.kind != KIND_USER:
        raise Forbidden("inference tokens may only call inference routes")
    return principal


def require_admin(principal: Principal, action: str) -> Principal:
    require_user(principal)
    if not principal.admin:
        raise Forbidden(f"only administrators may {action}")
    return principal


MembershipLookup = Callable[[str, int], Awaitable[str | None]]


async def require_owner_or_member(lookup: MembershipLookup, principal: Principal, owner_id: str,
                                  workspace_ids: list[int], what: str) -> None:
    """A resource shared through workspaces (connections, registries): visible to its creator and to members
    of any workspace it is attached to; to anyone else it does not exist (404)."""
    require_user(principal)
    if owner_id == principal.user_id and principal.scoped_task is None:
        return
    for workspace_id in workspace_ids:
        if out_of_scope(principal, workspace_id):
            continue
        if await lookup(principal.user_id, workspace_id) is not None:
            return
    raise NotFound(f"{what} not found")


def bus_membership(broker: Any, token: str | None, timeout: float) -> MembershipLookup:
    """For services other than auth: ask auth (`auth.workspaces.check_member`) on the caller's behalf."""
    from shared import subjects
    from shared.bus import request

    async def lookup(user_id: str, workspace_id: int) -> str | None:
        try:
            reply = await request(broker, subjects.AUTH_WORKSPACES_CHECK_MEMBER, {"workspace_id": workspace_id},
                                  token=token, timeout=timeout)
        except NotFound:
            return None
        return reply["user_type"]

    return lookup


async def require_member(lookup: MembershipLookup, principal: Principal, workspace_id: int) -> str:
    """The caller's role in the workspace; a workspace the caller is not in does not exist (404)."""
    require_user(principal)
    role = None if out_of_scope(principal, workspace_id) else await lookup(principal.user_id, workspace_id)
    if role is None:
        raise NotFound(f"workspace {workspace_id} not found")
    return role


def out_of_scope(principal: Principal, workspace_id: int) -> bool:
    """A task run's token reaches its own workspace only."""
    return principal.scoped_task is not None and principal.workspace_id != workspace_id


def scoped_workspace(principal: Principal) -> int | None:
    """The one workspace a task run's token reaches (what its "all my workspaces" lists narrow to), else None."""
    return principal.workspace_id if principal.scoped_task is not None else None


def require_unscoped(principal: Principal, action: str) -> None:
    """Actions that reach beyond any one workspace (creating a workspace, changing the user's password), and those
    that change who may reach one or what credentials it holds (members, inference clients, connections, model
    registries), are refused to a task run's token (403 `out_of_scope`): it acts for its user inside the run's
    workspace only, and its code is untrusted, so it must not hand an outside account lasting access. Call it after
    the membership check, so that another workspace stays a 404."""
    if principal.scoped_task is not None:
        raise Forbidden(f"a task run's token reaches its own workspace only: it may not {action}", code="out_of_scope")


def deployment_not_found(name: str) -> NotFound:
    """The one answer for a deployment that does not exist and for one the caller may not reach."""
    return NotFound(f"deployment {echo(name)} not found")


async def require_inference_access(lookup: MembershipLookup, principal: Principal, workspace_id: int,
                                   not_found: RailyardError) -> None:
    """May the caller run inferences on a deployment of `workspace_id`? Users: members; inference tokens: their
    own workspace only. Anyone else gets `not_found`, the very error a deployment that does not exist gets, so
    the answer never tells whether a deployment exists in another workspace."""
    if principal.kind == KIND_INFERENCE:
        if principal.workspace_id != workspace_id:
            raise not_found
        return
    if out_of_scope(principal, workspace_id) or await lookup(principal.user_id, workspace_id) is None:
        raise not_found


def bus_verifier(broker: Any, settings: AuthSettings, timeout: float) -> tuple[TokenVerifier, VerifierFeed]:
    """A verifier for a service other than auth, fed from auth over the bus; start the feed once connected:
    `await feed.start(nats_client)`."""
    from shared import subjects
    from shared.bus import request
    from shared.messages.auth import ListRevocations, Revocations, SigningKeys

    async def keys() -> list[dict[str, Any]]:
        return (await request(broker, subjects.AUTH_KEYS_GET, {}, timeout=timeout, reply_model=SigningKeys)).keys

    async def page(after: str | None, **fields: Any) -> Revocations:
        return await request(broker, subjects.AUTH_REVOCATIONS_LIST,
                             revocation_page_request(after, ListRevocations, **fields), timeout=timeout,
                             reply_model=Revocations)

    # whether auth takes `with_keys` (session 33 on): an older one refuses it (messages refuse unknown fields); the
    # whole read (at the start, every FULL_READ_INTERVAL) asks again, so an auth upgraded meanwhile is found
    asks_keys = [True]

    async def revocations() -> Revocations:
        try:
            answer = await read_revocation_pages(lambda after: page(after, with_position=True, with_keys=True))
            asks_keys[0] = True
            return answer
        except InvalidRequest:
            asks_keys[0] = False  # an auth of session 32: no fingerprint, keys read once KEY_MAX_AGE old
        try:
            return await read_revocation_pages(lambda after: page(after, with_position=True))
        except InvalidRequest:
            # an auth of before session 32 refuses `with_position` (messages refuse unknown fields): its whole list,
            # with no position (every poll then reads it whole, as before)
            return await read_revocation_pages(page)

    async def changes(since: str) -> Revocations:
        keys = {"with_keys": True} if asks_keys[0] else {}
        return await read_revocation_pages(lambda after: page(after, since=since, **keys))

    verifier = TokenVerifier(settings, keys)
    return verifier, VerifierFeed(verifier, revocations, settings.revocation_poll_interval, changes=changes)


def revocation_page_request(after: str | None, model: type[Any], **fields: Any) -> dict[str, Any]:
    """The body of `auth.revocations.list` asking for the page after `after` (`model`: ListRevocations). The first
    page's is `{}`, not `{"after": null}`: an auth of before session 29 (its ListRevocations has no field and refuses
    unknown ones) answers it with the whole list and no `next`, which is then read as it was; `{"after": null}` it
    refused (400), so a service upgraded before auth never read the list (every token 503 after its start).
    Unavailable when `after` (a page's `next`) is no cursor the command takes (longer than its 1,024 characters: a
    key of the list that long): the read fails closed as for any page that cannot be read, where the model's
    ValidationError was no RailyardError and a token met before the list was read got a 500, not the 503.
    `fields` (`since`, `with_position`, `with_keys`) are sent only when given: an auth of before session 32 refuses
    the first two, one of before session 33 `with_keys`."""
    if after is None and not fields:
        return {}
    from pydantic import ValidationError

    try:
        return model(after=after, **fields).model_dump(mode="json", exclude_defaults=True)
    except ValidationError:
        raise Unavailable(f"the revocation list's page after {after[:40]!r} ({len(after)} characters) cannot be "
                          "asked for: its cursor is longer than auth.revocations.list takes") from None


MAX_REVOCATION_PAGES = 10_000  # a list of more pages than this (billions of bytes) is a fault, not a list


async def read_revocation_pages(page: Callable[[str | None], Awaitable[Any]]) -> Any:
    """The whole revocation list from auth's pages (`auth.revocations.list` answers one page of it at a time, each
    under the bus's payload limit, `next` naming the following one), merged: the list is applied only once every page
    was read, so a read failing part way (auth away, a page refused) fails as a whole and the verifier keeps what it
    had (and one that never read the list refuses tokens with 503). Unavailable when a page's `next` does not move
    on or there are more than MAX_REVOCATION_PAGES."""
    first = await page(None)
    users, sessions, expiry = dict(first.users), dict(first.sessions), dict(first.session_expiry)
    after, seen = first.next, set()
    while after is not None:
        if after in seen or len(seen) >= MAX_REVOCATION_PAGES:
            raise Unavailable(f"the revocation list's pages do not end (page {len(seen) + 2} after {after[:40]!r})")
        seen.add(after)
        more = await page(after)
        for user_id, before in more.users.items():
            users[user_id] = max(before, users.get(user_id, before))
        for session, revoked_at in more.sessions.items():
            sessions[session] = max(revoked_at, sessions.get(session, revoked_at))
        for session, expires in more.session_expiry.items():
            expiry[session] = max(expires, expiry.get(session, expires))
        after = more.next
    # the first page's position: a later page's snapshot is later, and what a page before it missed may be older
    position = {"position": first.position} if getattr(first, "position", None) is not None else {}
    if getattr(first, "keys", None) is not None:  # the first page's, taken with its position
        position["keys"] = first.keys
    return type(first)(users=users, sessions=sessions, session_expiry=expiry, **position)


def _longest_token_lifetime(settings: AuthSettings) -> float:
    """Seconds the longest-lived token auth issues may be valid: an access, refresh or task run's token."""
    return float(max(settings.access_token_ttl, settings.refresh_token_ttl, TASK_TOKEN_MAX_TTL))


def _finite_or_now(moment: float, what: str, plus: float = 0.0) -> float:
    """`moment` when a finite number, else now (+ `plus`), with a warning: a revocation is applied, not dropped."""
    if isinstance(moment, (int, float)) and not isinstance(moment, bool) and math.isfinite(moment):
        return moment
    log.warning("%s is no finite moment (%r): taken as now%s", what, moment, f" + {plus:.0f} s" if plus else "")
    return time.time() + plus


def _event_moment(value: Any) -> float:
    """An event's `revoked_before` (epoch seconds): a finite number, else ValueError (a malformed event). JSON's
    1e999 reads as infinity, which refused the subject's every token for good, and a NaN (`max` keeps it) dropped
    the subject's earlier revocation."""
    if isinstance(value, bool):
        raise TypeError("a boolean is no moment")
    try:
        moment = float(value)
    except OverflowError:  # an integer past a float's range (JSON's 1 and 400 zeros): no ArithmeticError escapes
        raise ValueError(f"revoked_before is not a finite number: {value!r}") from None
    if not math.isfinite(moment):
        raise ValueError(f"revoked_before is not a finite number: {value!r}")
    return moment


def _moment_heard(event: dict[str, Any], key: str, subject: str, plus: float = 0.0) -> float:
    """The event's `key` as a moment (_event_moment); when it is none (missing, no number, NaN, infinite), now
    (+ `plus`), with a warning: a revocation whose subject or session is known is applied as of the moment it was
    heard, failing closed. Ignored (34178300), it left every token it revokes accepted until the next poll of the
    list (20 s), or for good where the list had it wrong too."""
    try:
        return _event_moment(event.get(key))
    except (ValueError, TypeError):
        log.warning("a malformed %s event: its %s (%r) is no finite moment: applied as of now%s", subject, key,
                    event.get(key), f" + {plus:.0f} s" if plus else "")
        return time.time() + plus


def _event_id(value: Any) -> int:
    """An event's integer id (`workspace_id`): an int or its digits, else TypeError/ValueError (a malformed event).
    `int()` of the float JSON reads 1e999 as raised OverflowError, which no handler caught, and 7.5 became 7."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"not an integer id: {value!r}")
    return int(value)


class VerifierFeed:
    """Keeps a verifier current: `events.user.deactivated` and `events.auth.tokens_revoked` apply at once,
    `events.auth.signing_key_rotated` refetches the keys, and every `interval` seconds what changed in the revocation
    list since the last read is read, in case an event was missed (the whole list at the start, every
    `full_interval` seconds, and whenever a read of changes fails)."""

    def __init__(self, verifier: TokenVerifier, fetch: Callable[[], Awaitable[Any]], interval: float,
                 changes: Callable[[str], Awaitable[Any]] | None = None,
                 full_interval: float = FULL_READ_INTERVAL) -> None:
        """`fetch` answers the full list as `shared.messages.auth.Revocations` (users, sessions, and the `position`
        to read changes from, or None); `changes(position)` what was revoked since that position, with the next
        position (None: the whole list at every poll)."""
        self._verifier = verifier
        self._fetch = fetch
        self._changes = changes
        self._full_interval = full_interval
        self._interval = interval
        verifier.read_revocations_from(fetch)  # a token met before the first read here reads the list itself
        self._started_at = time.monotonic()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._subscriptions: list[Any] = []

    async def start(self, nats_client: Any,
                    on_membership_changed: Callable[[str, int], None] | None = None) -> None:
        """Subscribe to the revocation events and read the list. `on_membership_changed(user_id, workspace_id)`:
        a verifier that caches memberships (the gateway's inference path) drops the user's in that workspace, so a
        removed member is refused at once rather than when the cached entry expires."""
        from shared import subjects
        from shared.dead_letters import ignoring_replays

        # A revocation naming whom it revokes is applied even when its moment is no moment (_moment_heard: now,
        # failing closed); one that names nobody, or is no JSON object (a list: `.get` raised AttributeError out of
        # the callback), is malformed: warned and ignored
        async def on_deactivated(msg: Any) -> None:
            try:
                event = json.loads(msg.data)
                if not isinstance(event, dict):
                    raise TypeError("not a JSON object")
                user_id = str(event["user_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed %s event", subjects.EVENT_USER_DEACTIVATED)
                return
            self._verifier.revoke(user_id, _moment_heard(event, "revoked_before", subjects.EVENT_USER_DEACTIVATED))

        async def on_tokens_revoked(msg: Any) -> None:
            try:
                event = json.loads(msg.data)
                if not isinstance(event, dict):
                    raise TypeError("not a JSON object")
                session = str(event["session"]) if event.get("session") else None
                subject = None if session else str(event["subject"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed %s event", subjects.EVENT_TOKENS_REVOKED)
                return
            heard = _moment_heard(event, "revoked_before", subjects.EVENT_TOKENS_REVOKED)
            if session is not None:  # one session of the subject, every token of it
                # a task run's session is kept until its tokens expire; an expiry that is none: the longest a
                # token can live from now
                expires = None if event.get("expires") is None else _moment_heard(
                    event, "expires", subjects.EVENT_TOKENS_REVOKED,
                    _longest_token_lifetime(self._verifier._settings))
                self._verifier.revoke_session(session, heard, expires)
            else:
                self._verifier.revoke(subject, heard)

        async def on_key_rotated(msg: Any) -> None:
            try:
                await self._verifier.refresh_keys()
            except RailyardError as exc:
                log.warning("could not refetch signing keys: %s", exc.msg)

        async def on_member_changed(msg: Any) -> None:
            try:
                event = json.loads(msg.data)
                user_id, workspace_id = str(event["user_id"]), _event_id(event["workspace_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed %s event", subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED)
                return
            if on_membership_changed is not None:
                on_membership_changed(user_id, workspace_id)

        # a dead letter's replay (railyard dead-letters) comes on these subjects too, for one durable consumer: the
        # original was applied here when it was published
        self._subscriptions = [
            await nats_client.subscribe(subjects.EVENT_USER_DEACTIVATED, cb=ignoring_replays(on_deactivated)),
            await nats_client.subscribe(subjects.EVENT_SIGNING_KEY_ROTATED, cb=ignoring_replays(on_key_rotated)),
            await nats_client.subscribe(subjects.EVENT_TOKENS_REVOKED, cb=ignoring_replays(on_tokens_revoked)),
        ]
        if on_membership_changed is not None:
            self._subscriptions.append(await nats_client.subscribe(
                subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, cb=ignoring_replays(on_member_changed)))
        await self._poll_once()
        self._task = asyncio.create_task(self._poll_forever())

    async def _poll_once(self) -> None:
        position = self._verifier.position
        if (self._changes is not None and position is not None
                and time.monotonic() - self._verifier.full_read_at < self._full_interval):
            try:
                changed = await self._changes(position)
            except Exception as exc:  # noqa: BLE001 - any failed change read: the whole list, in this poll
                # a position auth no longer covers (409 revocation_position_lost), or auth away (the whole list's
                # read below fails too, and says so); an error no read expects (the bus client's, a reply that is
                # not a page) too: let through, it lost this poll and every next one until the full interval
                log.info("could not read the revocations changed since position %s (%s): reading the whole list",
                         position, getattr(exc, "msg", None) or repr(exc))
            else:
                self._verifier.apply_changes(changed.users, changed.sessions, changed.session_expiry,
                                             getattr(changed, "position", None))
                self._verifier.keys_told(getattr(changed, "keys", None))
                return
        try:
            if not self._verifier.revocations_read:
                # never read yet (auth not answering at the start): the read the tokens share, so that a token met
                # meanwhile waits for this one instead of reading too, and, past STARTUP_GRACE, one met within
                # KEY_REFETCH_INTERVAL after it failed reads nothing (before session 35 the poll's failed reads did
                # not count: a token right after one read the failing list again). Within STARTUP_GRACE its failure
                # does not count: auth not answering yet is the stack starting, and the first requests after a
                # healthy start were refused 503 for a second after the last failed poll. Applied by the verifier
                # (_first_read_done); its fetch is this feed's (__init__)
                await self._verifier.first_revocation_read(
                    counted=time.monotonic() - self._started_at >= STARTUP_GRACE)
            else:
                revocations = await self._fetch()
                self._verifier.set_revocations(revocations.users, revocations.sessions, revocations.session_expiry,
                                               getattr(revocations, "position", None))
                self._verifier.keys_told(getattr(revocations, "keys", None))
        except RailyardError as exc:
            # The services start together and auth is often not answering yet at the first read: that is no
            # fault (a token met meanwhile reads the list itself, or is refused with 503), so it is told at INFO
            # until the list was read once or STARTUP_GRACE has passed; after that a failed read is a warning
            starting = not self._verifier.revocations_read and time.monotonic() - self._started_at < STARTUP_GRACE
            log.log(logging.INFO if starting else logging.WARNING, "could not refresh revocations: %s", exc.msg)

    async def _poll_forever(self) -> None:
        # The first wait is between half and all of the interval, at random: the services start together, and
        # polling in step they asked the auth service for its keys at the same moment, which then held one
        # PostgreSQL connection per overlapping request (~15-20 MiB of RSS each; docs/performance.md, "Memory")
        wait = self._interval * (0.5 + random.random() / 2)  # noqa: S311 - a phase, not a secret
        # Until the list was read once (auth was not answering at start), it is read again after 0.5, 1, 2 ... s
        retry = STARTUP_RETRY
        retried = not self._verifier.revocations_read

        def starting() -> bool:
            return time.monotonic() - self._started_at < STARTUP_GRACE

        if retried:
            wait = retry
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except TimeoutError:
                try:
                    await self._poll_once()
                    if not self._verifier.revocations_read:
                        retry = wait = min(retry * 2, self._interval)
                        continue
                    # read after the start's retries (0.5, 1, 2 ... s, the same in every service): phased again as
                    # the first wait, or the services polled in step for good and auth opened a connection each
                    phase = 0.5 + random.random() / 2 if retried else 1.0  # noqa: S311 - a phase, not a secret
                    wait, retried = self._interval * phase, False
                    try:
                        # retired keys leave the JWKS: dropped here too, even with no event, once this poll's answer
                        # names another fingerprint of them (a key cut in the database: at the next poll), or once
                        # they are KEY_MAX_AGE old (an auth naming none), or never read (auth not answering them at
                        # the start). Read at every poll, they cost auth a query per service every 20 s, idle or not
                        # the stack starting, auth may answer the revocation list before its keys subject: FastStream
                        # starts a router's subscribers one by one in the order of the router's WeakSet of them, not
                        # the order services/auth/app.py registers them (auth.revocations.list 1st of 26 when
                        # checked, auth.keys.get 13th, durable consumers' JetStream round trips between), so a
                        # poll's first good list read may meet no responder on the keys. That is no fault: told at
                        # INFO within STARTUP_GRACE, and not counted (refresh_keys): a token met within
                        # KEY_REFETCH_INTERVAL after it reads the keys itself, where it was refused 503 with no read
                        # (the first requests after a healthy stack start, as f4432a0a for the list's reads)
                        if self._verifier.keys_stale:
                            await self._verifier.refresh_keys(counted=not starting())
                    except RailyardError as exc:
                        log.log(logging.INFO if starting() else logging.WARNING, "could not refetch signing keys: %s",
                                exc.msg)
                except Exception:  # noqa: BLE001 - anything else: this read is lost, the poll is not
                    # an exception no read expects (an error of the bus's client) ended this loop for the life
                    # of the process: revocations whose events were missed (published while NATS was away) were
                    # never read, and tokens revoked then were accepted until they expired
                    log.exception("the revocation and key poll failed; it goes on")
                    wait = min(wait, self._interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
