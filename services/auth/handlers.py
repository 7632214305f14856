"""Business logic of the auth service, as plain async functions.

Tokens are RS256 JWTs signed with the service's active key (kept in its schema, rotatable); the public
keys are served as a JWKS so the gateway and services verify tokens locally. Passwords are argon2 hashes,
checked in a worker thread so hashing never blocks the event loop. Client secrets are random and long, so a
guess costs nothing to refuse: they are kept as a keyed hash (HMAC-SHA256 with the server's key) and compared
in constant time, which costs microseconds where argon2 cost 64 MiB and ~50 ms per token request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jwt
import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from services.auth import store, task_tokens
from services.auth.hashing_turns import HashingTurns, SourceFailures
from shared import paging, subjects
from shared.authz import (
    ALGORITHM,
    KIND_INFERENCE,
    KIND_USER,
    TASK_TOKEN_MAX_TTL,
    Principal,
    out_of_scope,
    require_admin,
    require_member,
    require_unscoped,
    require_user,
    scoped_workspace,
)
from shared.bus import EncodedData, byte_size
from shared.db import xact_lock
from shared.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ReplyTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    echo,
)
from shared.messages.auth import (
    ActivateUser,
    AddWorkspaceUser,
    AffectedRows,
    AuthorizationCodeIssued,
    AuthorizeUser,
    CreateInferenceClient,
    CreateWorkspace,
    DeactivateUser,
    Empty,
    EndSession,
    Features,
    InferenceClientCreated,
    InferenceClientRecord,
    InferenceClients,
    InviteUser,
    IssueToken,
    ListWorkspaces,
    Membership,
    QueryUsers,
    RemoveWorkspaceUser,
    Revocations,
    SigningKeyRotated,
    SigningKeys,
    TokenIssued,
    UpdatePassword,
    UserActivated,
    UserCreated,
    UserDeactivated,
    UserInvited,
    UserRecord,
    Users,
    WorkspaceCreated,
    WorkspaceMember,
    WorkspaceMembershipChanged,
    WorkspaceRecord,
    Workspaces,
    WorkspaceUsers,
    WorkspaceWasCreated,
)
from shared.messages.tasks import IssueTaskToken, TaskTokenIssued
from shared.outbox import SendRound
from shared.settings import AuthSettings

log = logging.getLogger("railyard.auth")

WORKSPACE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CLIENT_HASH_PREFIX = "hmac-sha256$"
# the web UI's public client (no secret: a browser cannot keep one); services/gateway/ui.html signs in with it
UI_CLIENT_ID = "railyard-ui"
# the password grant is for the SDK and CLI (api-client): a page that takes the password itself is what the
# authorization endpoint replaces (OAuth 2.1 drops the password grant; browsers use the code flow with PKCE)
PUBLIC_GRANTS = ("authorization_code", "refresh_token")
# RFC 7636: a verifier is 43-128 unreserved characters; its S256 challenge, BASE64URL without padding, is 43
CODE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
CODE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8
_hasher = PasswordHasher()
# verified against when a login names no user, so unknown and known users take the same time. Made with the
# configured cost at the service's start (configure_password_hashing), or at the first such login of a process that
# did not configure it; not at import, where a hash of the default cost (64 MiB, 0.21-0.23 s of CPU) was made and thrown
# away at every start of the service
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def configure_password_hashing(settings: AuthSettings) -> None:
    """New hashes with the configured argon2id cost (stored hashes keep theirs: a hash names its parameters)."""
    global _hasher, _DUMMY_HASH
    _hasher = PasswordHasher(time_cost=settings.password_hash_time_cost,
                             memory_cost=settings.password_hash_memory_kib,
                             parallelism=settings.password_hash_parallelism)
    _DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass
class AuthDeps:
    """What the auth handlers need."""

    pool: asyncpg.Pool
    settings: AuthSettings
    keys: dict[str, Any]  # kid -> private key object (parsed once)
    # auth's events are written to the outbox in the change's transaction (store.EVENT_TYPES; shared/outbox.py), not
    # published after the commit: a publish failing there made a committed change a 500 and lost the event. Called
    # after such a commit: the outbox (app.py) sends them now
    events_committed: Callable[[], None] = lambda: None
    # the bytes a reply may carry on the bus (its payload limit less shared.bus.REPLY_HEADROOM), once connected; None:
    # not known (a whole users/query is then built and encode_reply refuses it if it does not fit)
    reply_limit: Callable[[], int | None] = lambda: None
    # a round of the outbox's sending now, telling what it did with each row (app.py: Outbox.send_round), for a
    # change that answers only once its event is out (`_published`); None: not known (tests), the outbox is woken
    send_events: Callable[[], Awaitable[SendRound]] | None = None


# --- passwords -----------------------------------------------------------------------------------------


# argon2 takes its memory cost (64 MiB by default) per hash and the cores while it runs (4 lanes, ~165 ms of CPU at
# the default cost): token requests are handled many at once (app.py), so no more hashes than this run together,
# which is enough to keep 2 cores busy (docs/auth.md, "Sign-in capacity", has the figures)
HASHING_AT_ONCE = 2
# waiting checks are served by their source's recent failures, fewest first (hashing_turns.py: a flood's checks no
# longer go before a person's); a semaphore served them in arrival order
_hashing = HashingTurns(HASHING_AT_ONCE)
_source_failures = SourceFailures()
# A hash that waits longer than this for its turn is not made: the request is answered 503 with Retry-After instead.
# Queued without a bound, above capacity every wait grew past the gateway's 5 s (nats.request_timeout), which answered
# 504 while the hash was still made for nobody, and its retry met 429 (its user's attempt still being answered): at
# 48 connections 1.2 sign-ins/s got through instead of ~5.
HASH_WAIT_SECONDS = 2.0


@contextlib.asynccontextmanager
async def _hashing_turn(priority: int = 0) -> AsyncIterator[None]:
    try:
        failing = await _hashing.acquire(priority, HASH_WAIT_SECONDS)
    except TimeoutError:
        raise Unavailable("the auth service is checking as many passwords as it can; retry in a moment") from None
    try:
        yield
    finally:
        _hashing.release(failing)


async def hash_secret(secret: str) -> str:
    async with _hashing_turn():
        return await asyncio.to_thread(_hasher.hash, secret)


async def secret_matches(stored_hash: str, secret: str, priority: int = 0) -> bool:
    """`priority`: the place of this check among those waiting for a turn, lowest first (a sign-in's: its source's
    recent failures, _priority)."""
    def check() -> bool:
        try:
            return _hasher.verify(stored_hash, secret)
        except (VerificationError, InvalidHashError):
            return False

    async with _hashing_turn(priority):
        return await asyncio.to_thread(check)


def _priority(source: str) -> int:
    """A sign-in's place among the checks waiting for a hashing turn: its source's failed checks lately (this process's
    count), known and unknown users' alike, so the order tells nothing of whether a name exists."""
    return _source_failures.priority(source)


def client_secret_hash(key: str, secret: str) -> str:
    """The keyed hash a client secret is stored as."""
    digest = hmac.new(key.encode(), secret.encode(), hashlib.sha256).hexdigest()
    return CLIENT_HASH_PREFIX + digest


def client_secret_matches(key: str, stored_hash: str, secret: str) -> bool:
    """Constant-time comparison of a presented secret with the stored keyed hash."""
    return hmac.compare_digest(client_secret_hash(key, secret).encode(), stored_hash.encode())


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD} characters")


# --- keys ----------------------------------------------------------------------------------------------


def _new_key() -> tuple[str, str, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    kid = secrets.token_urlsafe(16)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
    return kid, pem, jwk


async def ensure_signing_key(pool: asyncpg.Pool) -> None:
    """A first active signing key unless there is one. The key is made only when none is read: an RSA-2048 key
    costs 0.06-0.2 s of CPU, which every start of the service spent and threw away once its first start had made
    one. Replicas starting together may each make one: ensure_first_key keeps the first."""
    if await store.active_key(pool) is not None:
        return
    kid, pem, jwk = await asyncio.to_thread(_new_key)
    if await store.ensure_first_key(pool, kid, pem, jwk):
        log.info("created the first signing key %s", kid)


async def rotate_signing_key(deps: AuthDeps, principal: Principal) -> SigningKeyRotated:
    require_admin(principal, "rotate signing keys")
    kid, pem, jwk = await asyncio.to_thread(_new_key)
    await store.add_active_key(deps.pool, kid, pem, jwk)  # with its events.auth.signing_key_rotated (the outbox)
    deps.events_committed()
    return SigningKeyRotated(kid=kid)


async def signing_keys(pool: asyncpg.Pool, settings: AuthSettings) -> SigningKeys:
    """The JWKS: the active key and the recently retired ones."""
    return SigningKeys(keys=await store.public_keys(pool, key_retention(settings)))


def key_retention(settings: AuthSettings) -> float:
    """Seconds a rotated-out key keeps verifying: the longest access or refresh token lifetime, plus the verifiers'
    leeway; longer while a task token it signed is valid (store.public_keys, issue_task_token)."""
    return max(settings.access_token_ttl, settings.refresh_token_ttl) + 60


async def _active_key(deps: AuthDeps) -> tuple[str, Any]:
    row = await store.active_key(deps.pool)
    if row is None:
        raise Unauthorized("no signing key")
    key = deps.keys.get(row["kid"])
    if key is None:
        key = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
        deps.keys[row["kid"]] = key
    return row["kid"], key


# --- bootstrap -----------------------------------------------------------------------------------------


async def bootstrap(deps: AuthDeps) -> None:
    """First start: a signing key, the admin user (with a default workspace), the confidential client and the web
    UI's public client."""
    await ensure_signing_key(deps.pool)
    settings = deps.settings
    if not settings.client_secret_key:
        raise Unavailable("RAILYARD_AUTH__CLIENT_SECRET_KEY is not set: the auth service needs a server key to hash"
                          " client secrets (the embedded stack generates one into its secrets file)")
    async with deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth-bootstrap'))")
        if settings.bootstrap_client_secret:
            keyed = client_secret_hash(settings.client_secret_key, settings.bootstrap_client_secret)
            if await store.ensure_client(conn, settings.bootstrap_client_id, keyed):
                log.info("created the confidential client %s", settings.bootstrap_client_id)
            else:
                existing = await store.client(conn, settings.bootstrap_client_id)
                # a client created before keyed hashes (argon2): re-hash it if the configured secret is its secret
                if existing and not existing["secret_hash"].startswith(CLIENT_HASH_PREFIX) and await secret_matches(
                        existing["secret_hash"], settings.bootstrap_client_secret):
                    await store.set_client_secret_hash(conn, settings.bootstrap_client_id, keyed)
        if await store.ensure_public_client(conn, UI_CLIENT_ID):
            log.info("created the web UI's public client %s", UI_CLIENT_ID)
        if await store.count_admins(conn, enabled_only=False) == 0:
            if not settings.bootstrap_admin_password:
                log.warning("no admin user and no RAILYARD_AUTH__BOOTSTRAP_ADMIN_PASSWORD: nobody can log in")
                return
            user_id = uuid.uuid4()
            await store.create_user(conn, user_id, settings.bootstrap_admin_username, None,
                                    await hash_secret(settings.bootstrap_admin_password), is_admin=True)
            await store.create_workspace(conn, f"{settings.bootstrap_admin_username} - Default Workspace", user_id)
            log.info("created the admin user %s", settings.bootstrap_admin_username)


# --- tokens --------------------------------------------------------------------------------------------


GRANTS = ("password", "refresh_token", "client_credentials", "authorization_code")


async def issue_token(deps: AuthDeps, cmd: IssueToken) -> TokenIssued:
    """The login client (workspace-less) has the password and refresh_token grants; a workspace's inference
    clients have client_credentials only, and their tokens infer on that workspace's deployments only. The web
    UI's public client has no secret and the authorization_code (PKCE, from the authorization endpoint) and
    refresh_token grants only."""
    client = await store.client(deps.pool, cmd.client_id)
    if client is not None and client["public"]:
        return await _issue_public(deps, cmd)
    stored = client["secret_hash"] if client is not None else CLIENT_HASH_PREFIX
    matches = client_secret_matches(deps.settings.client_secret_key, stored, cmd.client_secret)
    if client is None or not matches or client["revoked_at"] is not None:
        raise Unauthorized("invalid client credentials", code="invalid_client")
    if cmd.grant_type not in GRANTS:
        raise InvalidRequest(f"unsupported grant_type {cmd.grant_type!r}", code="unsupported_grant_type")
    if cmd.grant_type == "authorization_code":
        raise InvalidRequest(f"the authorization_code grant is the web UI's public client's ({UI_CLIENT_ID}) only",
                             code="unauthorized_client")
    inference_client = client["workspace_id"] is not None
    if inference_client != (cmd.grant_type == "client_credentials"):
        if inference_client:
            raise InvalidRequest("an inference client may use the client_credentials grant only",
                                 code="unauthorized_client")
        raise InvalidRequest("the login client cannot use client_credentials: a workspace owner creates an inference"
                             " client (POST /v1/api/workspaces/create_inference_client) and its id and secret get"
                             " inference tokens for that workspace", code="unauthorized_client")
    if cmd.grant_type == "password":
        user = await _password_login(deps, cmd)
        return await _mint(deps, user, cmd.client_id, with_refresh=True)
    if cmd.grant_type == "refresh_token":
        user, session = await _refresh_login(deps, cmd)
        return await _mint(deps, user, cmd.client_id, with_refresh=True, session=session)
    return await _mint_inference(deps, client)


async def _issue_public(deps: AuthDeps, cmd: IssueToken) -> TokenIssued:
    """A public client proves nothing about itself, so it gets nothing a user's password or refresh token does not
    give: never client_credentials (a token without a user). A secret sent with it is refused rather than
    ignored, so nobody believes it authenticates anything."""
    if cmd.client_secret:
        raise Unauthorized(f"{cmd.client_id} is a public client and has no secret: send client_id without one",
                           code="invalid_client")
    if cmd.grant_type not in GRANTS:
        raise InvalidRequest(f"unsupported grant_type {cmd.grant_type!r}", code="unsupported_grant_type")
    if cmd.grant_type == "password":
        raise InvalidRequest(f"the public client {cmd.client_id} signs in through the authorization endpoint "
                             "(authorization code flow with PKCE, S256); the password grant is the SDK's and CLI's "
                             "(the login client and its secret)", code="unauthorized_client")
    if cmd.grant_type not in PUBLIC_GRANTS:
        raise InvalidRequest(f"the public client {cmd.client_id} may use the authorization_code and refresh_token "
                             "grants only; client_credentials needs a workspace's inference client and its secret",
                             code="unauthorized_client")
    if cmd.grant_type == "authorization_code":
        session = uuid.uuid4()
        user = await _code_login(deps, cmd, session)
    else:
        user, session = await _refresh_login(deps, cmd)
    return await _mint(deps, user, cmd.client_id, with_refresh=True, session=session)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def s256_challenge(verifier: str) -> str:
    """RFC 7636's S256: BASE64URL(SHA-256(ASCII(code_verifier))), without padding."""
    return base64.urlsafe_b64encode(_sha256(verifier)).rstrip(b"=").decode()


async def authorize(deps: AuthDeps, cmd: AuthorizeUser) -> AuthorizationCodeIssued:
    """The authorization endpoint's sign-in (authorization code flow with PKCE): the user's password is checked as
    the password grant checks it (failed logins counted and locked per name tried and source), and the answer is a code
    that works once, within `authorization_code_ttl` seconds, for this client, redirect URI and code challenge. The
    gateway has checked the redirect URI is the client's registered one (it serves the page it names)."""
    client = await store.client(deps.pool, cmd.client_id)
    if client is None or not client["public"] or client["revoked_at"] is not None:
        raise InvalidRequest(f"{cmd.client_id!r} is not a client that signs in through the authorization endpoint",
                             code="invalid_client")
    if not CODE_CHALLENGE.fullmatch(cmd.code_challenge):
        raise InvalidRequest("code_challenge must be BASE64URL(SHA-256(code_verifier)) without padding (S256: 43 "
                             "characters of A-Z a-z 0-9 - _)")
    user = await _password_login(deps, IssueToken(
        grant_type="password", client_id=cmd.client_id, client_secret="", username=cmd.username,
        password=cmd.password, source=cmd.source))
    code = secrets.token_urlsafe(32)
    ttl = deps.settings.authorization_code_ttl
    await store.save_authorization_code(deps.pool, _sha256(code), cmd.client_id, user["id"], cmd.redirect_uri,
                                        cmd.code_challenge, ttl, keep=key_retention(deps.settings))
    return AuthorizationCodeIssued(code=code, expires_in=ttl)


async def _code_login(deps: AuthDeps, cmd: IssueToken, session: uuid.UUID) -> asyncpg.Record:
    """Exchange a code: it is spent by this first attempt whatever follows (RFC 6749 4.1.2: once), then it must have
    been issued to this client for this exact redirect URI, and the verifier's S256 must be its challenge. The
    tokens will be minted in `session`, recorded with the code as it is spent (before they exist, so a reuse racing
    this exchange still reaches them); a spent code presented again revokes that session. A code refused is 400
    `invalid_grant` (RFC 6749 5.2, as Keycloak answers it; 401 until session 37): only this page's public client
    exchanges codes, so no released SDK or CLI reads these answers (a refused password or refresh token stays 401,
    docs/auth.md)."""
    if not cmd.code or not cmd.code_verifier or not cmd.redirect_uri:
        raise InvalidRequest("the authorization_code grant needs code, code_verifier and redirect_uri")
    code_hash = _sha256(cmd.code)
    spent = await store.take_authorization_code(deps.pool, code_hash, session)
    if spent is None:
        if await _revoke_reused_code(deps, code_hash):
            raise InvalidRequest("authorization code already used: a code works once, so this one may have leaked "
                                 "and the tokens issued for it are revoked; sign in again", code="invalid_grant")
        raise InvalidRequest("authorization code unknown or already used; sign in again", code="invalid_grant")
    if spent["expired"]:
        raise InvalidRequest(f"authorization code expired (a code works for {deps.settings.authorization_code_ttl} "
                             "s); sign in again", code="invalid_grant")
    if spent["client_id"] != cmd.client_id:
        raise InvalidRequest("authorization code issued to another client", code="invalid_grant")
    if spent["redirect_uri"] != cmd.redirect_uri:
        raise InvalidRequest("redirect_uri is not the one the authorization code was issued for", code="invalid_grant")
    if not CODE_VERIFIER.fullmatch(cmd.code_verifier) or not hmac.compare_digest(
            s256_challenge(cmd.code_verifier), spent["code_challenge"]):
        raise InvalidRequest("code_verifier does not match the authorization code's challenge (S256)",
                             code="invalid_grant")
    user = await store.user_by_id(deps.pool, spent["user_id"])
    if user is None or not user["enabled"]:
        raise InvalidRequest("user is deactivated", code="invalid_grant")
    return user


async def _revoke_reused_code(deps: AuthDeps, code_hash: bytes) -> bool:
    """RFC 6749 4.1.2: a code used twice leaked, so the tokens its exchange issued are revoked (SHOULD): the session
    they were minted in, with every refresh since (its refresh tokens spent at once, its access tokens refused by
    every verifier on `events.auth.tokens_revoked` and through the revocation list). False if the code is unknown
    (never issued, or spent longer ago than its tokens could live)."""
    revoked = await store.revoke_spent_code_session(deps.pool, code_hash, time.time(), key_retention(deps.settings))
    if revoked is None:
        return False
    log.warning("an authorization code of user %s was presented again: its session %s is revoked",
                revoked["user_id"], revoked["session"])
    deps.events_committed()  # its events.auth.tokens_revoked, put in the outbox with the revocation
    return True


async def _password_login(deps: AuthDeps, cmd: IssueToken) -> asyncpg.Record:
    """Failed sign-ins are counted per NAME tried and source address, whether a user has that name or not: each
    recent failure from that source slows the next attempt at that name from it, `lockout_after` of them lock the name
    for that source only (an attacker cannot lock the real user out from elsewhere), and one attempt at a time is
    answered (429 for another meanwhile). Counted per user, a made-up name was never delayed, locked nor refused 429,
    so repeating a guess told whether a name existed; now both take the same steps, the password checked against a
    dummy hash when no user has the name. Commands straight on the bus have no address (`bus`)."""
    if not cmd.username or cmd.password is None:
        raise InvalidRequest("the password grant needs username and password")
    source = cmd.source or "bus"
    async with _one_at_a_time(deps.pool, store.claim_sign_in_attempt, store.release_sign_in_attempt, cmd.username,
                              source):
        return await _checked_login(deps, cmd, source)


# Token requests are handled many at once (app.py), by every auth replica. Attempts on one name from one source are
# not: while one is being answered, by any replica, another is refused at once (429) rather than queued, so a burst of
# guesses cannot all be checked before the first failure is recorded (each attempt reads the failures before it: the
# delay and the lock after `lockout_after` apply one by one), and nobody's attempts wait behind an attacker's delayed
# ones. The attempt being answered is a row of auth.sign_in_attempts (per name; auth.login_attempts per user for
# users/update_password; it was a set in each process's memory, so N replicas checked N guesses at once). A row a
# crashed process left is taken over after ATTEMPT_LEASE_SECONDS, well above the longest attempt: the delay (at most
# 4 s), the wait for argon2 (at most HASH_WAIT_SECONDS) and one hash.
ATTEMPT_LEASE_SECONDS = 30.0


Claim = Callable[[asyncpg.Pool, Any, str, uuid.UUID, float], Awaitable[bool]]
Release = Callable[[asyncpg.Pool, Any, str, uuid.UUID], Awaitable[None]]


@contextlib.asynccontextmanager
async def _one_at_a_time(pool: asyncpg.Pool, claim: Claim, release: Release, key: Any, source: str, *,
                         user_id: uuid.UUID | None = None) -> AsyncIterator[None]:
    """One attempt at `key` from `source` at a time, for every replica: `claim` takes the row (429 while another
    attempt holds it) and `release` gives it back when the attempt is answered. The store's pairs: a sign-in's per
    name tried (claim_sign_in_attempt / release_sign_in_attempt, `key` the name: never logged, people type passwords
    into the name field) and users/update_password's current-password checks per user (claim_login_attempt /
    release_login_attempt, `key` the user's id, also `user_id`: named in the log; the caller is signed in, nothing
    to enumerate). Passed in by the caller, so they are looked up in `store` at each attempt."""
    attempt = uuid.uuid4()
    if not await claim(pool, key, source, attempt, ATTEMPT_LEASE_SECONDS):
        raise TooManyRequests("another sign-in of this user from this address is still being answered; retry after it",
                              retry_after=1.0)
    try:
        yield
    finally:
        try:
            await release(pool, key, source, attempt)
        except (asyncpg.PostgresError, OSError) as exc:  # the attempt's answer stands; its lease ends the claim
            log.warning("could not release a sign-in attempt%s (the claim lapses in %.0f s): %s",
                        "" if user_id is None else f" of user {user_id}", ATTEMPT_LEASE_SECONDS, exc)


def _locked(failures: asyncpg.Record | None) -> bool:
    return failures is not None and failures["locked_until"] is not None and \
        failures["locked_until"] > datetime.now(UTC)


async def _checked_login(deps: AuthDeps, cmd: IssueToken, source: str) -> asyncpg.Record:
    """The same steps whether a user has the name or not (the lock, the delay, one hash, the count), so neither an
    answer, nor its time, nor a run of them tells the two apart."""
    settings = deps.settings
    name = cmd.username or ""
    failures = await store.sign_in_failures(deps.pool, name, source)
    if _locked(failures):
        raise Unauthorized("account temporarily locked after repeated failed logins; try again later",
                           code="account_locked")
    if failures is not None and failures["failures"]:
        await asyncio.sleep(min(4.0, settings.failed_login_delay * failures["failures"]))
    user = await store.user_by_login(deps.pool, name)
    matches = await secret_matches(_dummy_hash() if user is None else user["password_hash"], cmd.password or "",
                                   _priority(source))
    if user is None or not matches:
        _source_failures.failed(source)
        count = await store.record_failed_sign_in(deps.pool, name, source, settings.lockout_after,
                                                  settings.lockout_seconds)
        if count >= settings.lockout_after:
            raise Unauthorized("account temporarily locked after repeated failed logins; try again later",
                               code="account_locked")
        raise Unauthorized("invalid user credentials", code="invalid_grant")
    if not user["enabled"]:
        raise Unauthorized("user is deactivated", code="invalid_grant")
    # the source's counts of every name of this user go (its username's and its email's: two names, counted apart)
    await store.clear_failed_sign_ins(deps.pool, [n for n in (name, user["username"], user["email"]) if n], source)
    return user


async def _refresh_login(deps: AuthDeps, cmd: IssueToken) -> tuple[asyncpg.Record, uuid.UUID]:
    """The refresh token's user and session (the new pair stays in it, so revoking a session reaches every refresh
    of it)."""
    if not cmd.refresh_token:
        raise InvalidRequest("the refresh_token grant needs refresh_token")
    claims = await _refresh_claims(deps, cmd.refresh_token)
    spent = await store.use_refresh_token(deps.pool, uuid.UUID(claims["jti"]), cmd.client_id)
    if spent is None:
        raise Unauthorized("refresh token expired, already used, revoked or issued to another client",
                           code="invalid_grant")
    user = await store.user_by_id(deps.pool, spent["user_id"])
    if user is None or not user["enabled"]:
        raise Unauthorized("user is deactivated", code="invalid_grant")
    return user, spent["session"] or uuid.uuid4()  # (refresh tokens saved before sessions were kept have none)


async def _refresh_claims(deps: AuthDeps, token: str) -> dict[str, Any]:
    """A refresh token's claims, checked (signed by one of our keys, ours, not expired, a refresh token), or
    Unauthorized `invalid_grant`."""
    keys = {k["kid"]: RSAAlgorithm.from_jwk(k)
            for k in await store.public_keys(deps.pool, key_retention(deps.settings))}
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        claims = jwt.decode(token, keys[kid], algorithms=[ALGORITHM], audience=deps.settings.audience,
                            issuer=deps.settings.issuer, options={"require": ["exp", "jti", "sub"]})
    except (jwt.InvalidTokenError, KeyError):
        raise Unauthorized("invalid refresh token", code="invalid_grant") from None
    if claims.get("typ") != "Refresh":
        raise Unauthorized("invalid refresh token", code="invalid_grant")
    return claims


async def end_session(deps: AuthDeps, cmd: EndSession) -> Empty:
    """The logout endpoint: the client authenticated as for a token (its secret; a public client by its id alone)
    ends the session of a refresh token issued to it: every refresh token of the session is spent and its access
    tokens are refused (store.revoke_session, events.auth.tokens_revoked), as a reused authorization code's are.
    A refresh token that is expired, not ours or another client's is 400 `invalid_grant` (nothing revoked); one
    spent already (its session signed out before) ends its session all the same."""
    client = await store.client(deps.pool, cmd.client_id)
    if client is not None and client["public"]:
        if cmd.client_secret:
            raise Unauthorized(f"{cmd.client_id} is a public client and has no secret: send client_id without one",
                               code="invalid_client")
    else:
        stored = client["secret_hash"] if client is not None else CLIENT_HASH_PREFIX
        matches = client_secret_matches(deps.settings.client_secret_key, stored, cmd.client_secret)
        if client is None or not matches or client["revoked_at"] is not None:
            raise Unauthorized("invalid client credentials", code="invalid_client")
    try:
        claims = await _refresh_claims(deps, cmd.refresh_token)
    except Unauthorized as exc:  # RFC 6749 5.2's invalid_grant is a 400 (the refresh grant keeps its 401: auth.md)
        raise InvalidRequest(str(exc), code="invalid_grant") from None
    if claims.get("azp") != cmd.client_id:
        raise InvalidRequest("the refresh token was issued to another client", code="invalid_grant")
    try:
        session = uuid.UUID(str(claims.get("session_state")))
    except ValueError:  # a refresh token saved before sessions were kept: that token alone
        await store.use_refresh_token(deps.pool, uuid.UUID(claims["jti"]), cmd.client_id)
        return Empty()
    event = await store.revoke_session(deps.pool, session, uuid.UUID(claims["sub"]), time.time(),
                                       key_retention(deps.settings))
    log.info("user %s signed out of session %s (client %s)", claims["sub"], session, cmd.client_id)
    # answered once its events.auth.tokens_revoked is out, as a password change is: the session's access tokens are
    # refused when the 204 comes
    await _published(deps, event.event_id, f"user {claims['sub']}'s sign-out")
    return Empty()


def _issued_at() -> float:
    """`iat` in milliseconds (NumericDate may be fractional), rounded down so a token issued before a
    deactivation never looks later than it; whole seconds refused tokens issued just after a re-activation."""
    return math.floor(time.time() * 1000) / 1000


def _base_claims(settings: AuthSettings, subject: str, client_id: str, now: float) -> dict[str, Any]:
    return {"iss": settings.issuer, "aud": settings.audience, "sub": subject, "iat": now,
            "jti": str(uuid.uuid4()), "azp": client_id}


async def _mint(deps: AuthDeps, user: asyncpg.Record, client_id: str, *, with_refresh: bool,
                session: uuid.UUID | None = None) -> TokenIssued:
    """An access token (and refresh token) in `session` (a new one when None): its `session_state`."""
    settings = deps.settings
    kid, key = await _active_key(deps)
    now = _issued_at()
    session = str(session or uuid.uuid4())
    access = _base_claims(settings, str(user["id"]), client_id, now) | {
        "exp": int(now) + settings.access_token_ttl, "typ": "Bearer", "scope": "profile email",
        "preferred_username": user["username"], "email": user["email"], "session_state": session,
        "railyard_kind": KIND_USER, "railyard_admin": bool(user["is_admin"]),
    }
    token = jwt.encode(access, key, algorithm=ALGORITHM, headers={"kid": kid})
    refresh = None
    if with_refresh:
        claims = _base_claims(settings, str(user["id"]), client_id, now) | {
            "exp": int(now) + settings.refresh_token_ttl, "typ": "Refresh", "session_state": session}
        await store.save_refresh_token(deps.pool, uuid.UUID(claims["jti"]), user["id"], client_id,
                                       datetime.fromtimestamp(claims["exp"], UTC), uuid.UUID(session))
        refresh = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    return TokenIssued(access_token=token, expires_in=settings.access_token_ttl, refresh_token=refresh,
                       refresh_expires_in=settings.refresh_token_ttl if refresh else None, session_state=session)


async def _mint_inference(deps: AuthDeps, client: asyncpg.Record) -> TokenIssued:
    settings = deps.settings
    kid, key = await _active_key(deps)
    now = _issued_at()
    claims = _base_claims(settings, str(client["service_account_id"]), client["client_id"], now) | {
        "exp": int(now) + settings.access_token_ttl, "typ": "Bearer", "scope": "profile email",
        "preferred_username": f"service-account-{client['client_id']}", "railyard_kind": KIND_INFERENCE,
        "clientId": client["client_id"], "railyard_workspace": int(client["workspace_id"]),
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    return TokenIssued(access_token=token, expires_in=settings.access_token_ttl)


async def issue_task_token(deps: AuthDeps, cmd: IssueTaskToken) -> TaskTokenIssued:
    """A task run's token: its owner's rights in the run's workspace only (never admin), short-lived. The bus
    permissions let the task scheduler alone publish this command; the owner must still be enabled and a member."""
    try:
        user = await store.user_by_id(deps.pool, uuid.UUID(cmd.user_id))
    except ValueError:
        user = None
    if user is None or not user["enabled"]:
        raise Unauthorized("the task's owner is unknown or deactivated", code="invalid_grant")
    if await store.role_in(deps.pool, user["id"], cmd.workspace_id) is None:
        raise NotFound(f"the task's owner is no longer a member of workspace {cmd.workspace_id}")
    kid, key = await _active_key(deps)
    now = _issued_at()
    expires = int(now) + cmd.ttl
    # a run's token: in the run's own session (its id), revoked when the run ends (task_tokens.py), its expiry
    # written before it is handed out; refused when the run's end was read already
    if cmd.run_id and not await task_tokens.record_issue(deps.pool, cmd.run_id, str(user["id"]), expires):
        raise Unauthorized(f"task run {cmd.run_id} has ended: no token is issued for it", code="invalid_grant")
    # its key stays in the JWKS until the token expires, also when rotated out meanwhile: a run's token may outlive
    # key_retention (access and refresh tokens) by almost a day, and a long run lost it an hour after a rotation
    await store.key_signs_run_token(deps.pool, kid, expires)
    claims = _base_claims(deps.settings, str(user["id"]), "task-scheduler", now) | {
        "exp": expires, "typ": "Bearer", "scope": "profile email",
        "preferred_username": user["username"], "email": user["email"], "railyard_kind": KIND_USER,
        "railyard_admin": False, "railyard_workspace": cmd.workspace_id, "railyard_task": cmd.task_id,
    } | ({"railyard_task_run": cmd.run_id, "session_state": cmd.run_id} if cmd.run_id else {})
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    return TaskTokenIssued(access_token=token, expires_in=cmd.ttl)


REVOCATION_PAGE_SPARE = 4096  # bytes of a page's budget left for the envelope (Reply, field names, `next`)
REVOCATION_ENTRY_SPARE = 28  # bytes an entry takes besides its key's JSON: `:`, `,` and a float's repr (<= 24)


async def revocations(pool: asyncpg.Pool, settings: AuthSettings, after: str | None = None,
                      budget: int | None = None, with_position: bool = False,
                      with_keys: bool = False) -> Revocations:
    """Subjects' revocation moments, the sessions revoked recently enough that an access token of theirs could still
    be valid, and ended task runs' sessions until their tokens expire: what every verifier must have read before it
    accepts a token. An entry that can no longer refuse a valid token is left out, so the list holds only what was
    revoked within a token's lifetime.

    A page of at most `budget` bytes of JSON (None: the whole list), from the start or after `after` (a previous
    page's `next`); `next` is set while more follow. Ended runs grow the list with the platform's use (~120 bytes a
    run within its tokens' lifetime, up to a day): answered whole, ~70k of them passed the bus's 8 MiB limit and the
    list could no longer be read at all, so a service starting then refused every token. Pages stay under the limit
    whatever its length.

    `with_position`: each page names the `position` to ask `revocation_changes` from next (taken before the page is
    read; a verifier keeps the first page's).

    `with_keys`: the first page names `keys`, the JWKS's fingerprint (store.KEYS_FINGERPRINT, in the position's
    statement): a verifier reads the keys again when it changed, so a key cut in the database reaches every verifier
    at its next poll (20 s), with no read of the JWKS at every poll."""
    keys = None
    if with_keys and after is None:
        if with_position:
            number, keys = await store.revocation_position_and_keys(pool, key_retention(settings))
            position: str | None = str(number)
        else:
            position, keys = None, await store.keys_fingerprint(pool, key_retention(settings))
    else:
        position = str(await store.revocation_position(pool)) if with_position else None
    now = time.time()
    longest = max(settings.access_token_ttl, TASK_TOKEN_MAX_TTL)  # a verifier accepts no token living longer
    since = (now - longest - 2 * task_tokens.LEEWAY, now - longest - 2 * task_tokens.LEEWAY,
             now - settings.access_token_ttl - 60, now - task_tokens.LEEWAY)
    part, key = _revocations_cursor(after)
    users: dict[str, float] = {}
    sessions: dict[str, float] = {}
    expiry: dict[str, float] = {}
    left = None if budget is None else max(budget - REVOCATION_PAGE_SPARE, 1)
    while part < len(store.REVOCATION_PARTS):
        # a run's entry is two (sessions and session_expiry): at least ~2 x (38 + 28) bytes, a subject's ~66
        limit = None if left is None else max(left // 60, 1)
        rows = await store.revocation_part(pool, part, since[part], key, limit)
        for row in rows:
            size = (len(orjson.dumps(row["key"])) + REVOCATION_ENTRY_SPARE) * (2 if row["expires"] is not None else 1)
            if left is not None:
                if size > left and (users or sessions):  # it goes on the next page (a page holds one at least)
                    return Revocations(users=users, sessions=sessions, session_expiry=expiry, next=f"{part}:{key}",
                                       position=position, keys=keys)
                left -= size
            _add_entry(users, sessions, expiry, part, row["key"], float(row["at"]),
                       None if row["expires"] is None else float(row["expires"]))
            key = row["key"]
        if limit is not None and len(rows) == limit:
            continue  # this part has more rows (or the budget is spent: the next pass returns the page)
        part, key = part + 1, ""
    return Revocations(users=users, sessions=sessions, session_expiry=expiry, position=position, keys=keys)


def _add_entry(users: dict[str, float], sessions: dict[str, float], expiry: dict[str, float], part: int, key: str,
               at: float, expires: float | None) -> None:
    """An entry of the list's part `part` (store.REVOCATION_PARTS) merged into a page: the later moment refuses more."""
    if part < 2:  # a service account may be a user too
        users[key] = max(at, users.get(key, 0.0))
    else:
        sessions[key] = max(at, sessions.get(key, 0.0))
        if expires is not None:
            expiry[key] = max(expires, expiry.get(key, 0.0))


async def revocation_changes(pool: asyncpg.Pool, since: str, after: str | None = None,
                             budget: int | None = None, keys_kept: float | None = None) -> Revocations:
    """The revocations written since `since` (a previous answer's `position`; migration 020), a page of at most
    `budget` bytes after `after` (a previous page's `next`), and this read's `position`, to ask from next time. Every
    revocation written at or after the transactions still running at `since` is in it, and a few read before may be
    again (merged by max, they change nothing). Entries that can no longer refuse a valid token are not left out:
    verifiers drop them as they do the events'. A position the kept changes no longer cover (older than a day: the
    sweep deleted some) or from another database's history is 409 `revocation_position_lost`: read the whole list.
    `keys_kept` (key_retention, when `with_keys` was asked): each page names `keys`, the JWKS's fingerprint, read in
    the page's own snapshot."""
    if not (since.isascii() and since.isdigit()) or len(since) > 20:  # ('²'.isdigit(): int() refuses it, a 500)
        raise InvalidRequest("since: not a `position` of auth.revocations.list; read the whole list without it")
    start = 0
    if after is not None:
        kind, sep, last = after.partition(":")
        if kind != "c" or not sep or not (last.isascii() and last.isdigit()) or int(last) >= 2 ** 63:
            # (a change id is a bigint: a larger one failed in asyncpg's encoding, a 500)
            raise InvalidRequest("after: not a `next` of this read of auth.revocations.list's changes; ask for the "
                                 "first page without it")
        start = int(last)
    left = None if budget is None else max(budget - REVOCATION_PAGE_SPARE, 1)
    users: dict[str, float] = {}
    sessions: dict[str, float] = {}
    expiry: dict[str, float] = {}
    limit = None if left is None else max(left // 60, 1)  # (as revocations' pages: an entry takes ~60 bytes or more)
    try:
        position, rows, keys = await store.revocation_changes(pool, int(since), start, limit, keys_kept)
    except store.PositionLost:
        raise Conflict(f"the revocations written since position {since} are no longer all kept (or it is another "
                       "database's): read the whole list", code="revocation_position_lost") from None
    for row in rows:
        size = (len(orjson.dumps(row["key"])) + REVOCATION_ENTRY_SPARE) * (2 if row["expires"] is not None else 1)
        if left is not None:
            if size > left and (users or sessions):
                return Revocations(users=users, sessions=sessions, session_expiry=expiry, next=f"c:{start}",
                                   position=str(position), keys=keys)
            left -= size
        _add_entry(users, sessions, expiry, row["part"], row["key"], float(row["at"]),
                   None if row["expires"] is None else float(row["expires"]))
        start = row["id"]
    more = limit is not None and len(rows) == limit  # (a next page may be empty: read to the end all the same)
    return Revocations(users=users, sessions=sessions, session_expiry=expiry, position=str(position),
                       next=f"c:{start}" if more else None, keys=keys)


def revocations_reply(page: Revocations) -> dict[str, Any]:
    """A page of the revocation list as auth.revocations.list answers it: `next` only while more pages follow. A
    verifier of before session 29 (its Revocations has no `next` and refuses unknown fields) then reads a list that
    fits one page as it did, and refuses a paged one, failing closed (it keeps what it had; one started then answers
    503), never taking a first page for the whole list. With `"next": null` in every answer it refused them all, so
    during an upgrade every service not yet upgraded stopped reading the list, whatever its length."""
    return page.model_dump(mode="json", exclude_none=True)


def _revocations_cursor(after: str | None) -> tuple[int, str]:
    """(part, last key) of a revocation page's `next`; (0, '') for the first page."""
    if after is None:
        return 0, ""
    part, sep, key = after.partition(":")
    if not sep or part not in {str(p) for p in range(len(store.REVOCATION_PARTS))}:
        raise InvalidRequest("after: not a `next` of auth.revocations.list; ask for the first page without it")
    return int(part), key


async def task_run_ended(deps: AuthDeps, run_id: uuid.UUID, owner_id: str) -> None:
    """A task run ended (events.task_run.succeeded / failed, read from the EVENTS stream): its tokens stop working
    (task_tokens.revoke_run; its events.auth.tokens_revoked sent from the outbox)."""
    if await task_tokens.revoke_run(deps.pool, str(run_id), owner_id) is not None:
        deps.events_committed()


# --- users ---------------------------------------------------------------------------------------------


def _user_record(row: asyncpg.Record, viewer: Principal) -> UserRecord:
    manage = viewer.admin
    return UserRecord(
        id=str(row["id"]),
        username=row["username"],
        email=row["email"],
        enabled=row["enabled"],
        createdTimestamp=int(row["created_at"].timestamp() * 1000),
        requiredActions=["UPDATE_PASSWORD"] if row["temporary_password"] else [],
        access={"manageGroupMembership": manage, "impersonate": False, "view": True, "manage": manage,
                "mapRoles": manage},
    )


def _user_json(row: asyncpg.Record, manage: bool) -> bytes:
    """A user's record in users/query's answer as _user_record's UserRecord encodes it (the same keys in the same order,
    the same values: tests/unit/test_auth_users_answer.py compares them), encoded from the row at once: a model per
    user, dumped and encoded again with the reply, was most of a 1000-user page's time (docs/performance.md item 57).
    `manage`: the viewer is an administrator. A user without an email (the first admin) has no `email` key, and no
    user has `firstName`/`lastName` (none is stored), as seed 001's admin row shows them absent, not null."""
    email = {"email": row["email"]} if row["email"] is not None else {}
    return orjson.dumps({
        "id": str(row["id"]), "username": row["username"], **email, "emailVerified": False,
        "enabled": row["enabled"],
        "createdTimestamp": int(row["created_at"].timestamp() * 1000), "notBefore": 0,
        "requiredActions": ["UPDATE_PASSWORD"] if row["temporary_password"] else [], "disableableCredentialTypes": [],
        "access": {"manageGroupMembership": manage, "impersonate": False, "view": True, "manage": manage,
                   "mapRoles": manage}})


async def users_answer(rows: list[asyncpg.Record], limit: int | None, viewer: Principal) -> EncodedData:
    """users/query's answer (Users: `next_cursor` when a page is followed by more, then `users` keyed by id) from its
    rows, as JSON bytes the gateway passes on as they are (shared.bus.EncodedData): a page of `limit` as paging.page
    cuts it, every row without."""
    records, next_cursor = await paging.page(rows, limit, lambda row: _user_json(row, viewer.admin),
                                             paging.key_cursor)
    users = {str(row["id"]): orjson.Fragment(record) for row, record in zip(rows, records, strict=False)}
    return EncodedData(orjson.dumps({"next_cursor": next_cursor, "users": users} if next_cursor else {"users": users}))


UUID_ECHO_CHARS = 40  # of a value that is no UUID, its 400 repeats this many characters at most (a UUID is 36)


def _uuid(value: str, what: str) -> uuid.UUID:
    """A user id the caller sent, or 400 naming the field. The answer repeats at most the value's first
    UUID_ECHO_CHARS characters (shared.errors.echo): it repeated all of it, whatever its length (up to the 2 MiB body;
    the commands now bound it to USER_ID_CHARS, but the 400, its log line and bus reply need no more than a prefix)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(f"{what} must be a user id (UUID), got {echo(str(value), UUID_ECHO_CHARS)}") from None


def _is_own_id(value: str, principal: Principal) -> bool:
    """Whether a user id the caller sent is its own (any letter case, as uuid.UUID reads it)."""
    try:
        return str(uuid.UUID(value)) == principal.user_id
    except (ValueError, AttributeError, TypeError):
        return False


def _membership(pool: asyncpg.Pool):
    async def lookup(user_id: str, workspace_id: int) -> str | None:
        return await store.role_in(pool, uuid.UUID(user_id), workspace_id)

    return lookup


def _bytes_per_user(email: str | None = None) -> int:
    """The fewest JSON bytes a user takes in users/query's answer besides its username's and email's own: its
    `"<id>":{...}` entry and comma with an empty username, `email` (None: none, and no key, the least; "": what an
    email's key adds) and every other value at its shortest (a timestamp of one digit, booleans true), from the
    record itself, so a field added to UserRecord counts."""
    row = {"id": uuid.UUID(int=0), "username": "", "email": email, "enabled": True,
           "created_at": datetime.fromtimestamp(0, UTC), "temporary_password": False}
    viewer = Principal(subject=str(uuid.UUID(int=0)), kind=KIND_USER, admin=True, client_id="", username=None,
                       issued_at=0.0)
    record = _user_record(row, viewer)
    return len(Users(users={record.id: record}).model_dump_json()) - len(Users(users={}).model_dump_json()) + 1


BYTES_PER_USER = _bytes_per_user()
EMAIL_KEY_BYTES = _bytes_per_user("") - BYTES_PER_USER  # what an email adds besides its own bytes: its key


async def _refuse_a_whole_answer_too_large(deps: AuthDeps, ids: list[uuid.UUID] | None, workspace_id: int | None,
                                           co_members_of: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None,
                                           member: uuid.UUID | None = None) -> None:
    """A users/query without `limit` longer than a page (_whole_list) whose answer cannot fit a bus reply: 422
    reply_too_large before the rest of its users is read out, counted in PostgreSQL (store.users_answer_size). Built,
    13,000 users with long emails (10 MiB) kept auth busy for seconds (1.3 s idle) after the gateway's wait had ended,
    the requests behind it waiting, to answer the same 422. What is counted is the least the answer takes (every
    user's fixed part and its strings), so nothing that fits is refused; one just above the limit is still refused by
    shared.bus.encode_reply once built. A cursor without `limit` answers the rest of the list whole
    (docs/api-paging.md): only the users after it are counted."""
    limit = deps.reply_limit()
    if limit is None:
        return
    users, text_bytes = await store.users_answer_size(deps.pool, ids=ids, workspace_id=workspace_id,
                                                      co_members_of=co_members_of, after=after, member=member,
                                                      per_email=EMAIL_KEY_BYTES)
    least = users * BYTES_PER_USER + text_bytes
    if least > limit:
        raise ReplyTooLarge(f"the answer would be at least {byte_size(least)} ({users} users), above the "
                            f"{byte_size(limit)} a reply may carry on the bus: {paging.too_large_hint('users/query')}")


async def query_users(deps: AuthDeps, principal: Principal, cmd: QueryUsers) -> EncodedData:
    """Users oldest first (created_at, then id): all, or a page (shared/paging.py; the cursor: created_at, id); the
    answer encoded (users_answer)."""
    require_user(principal)
    after = paging.after_key(cmd.cursor, "users/query")
    ids = [_uuid(u, "user_ids") for u in cmd.user_ids] if cmd.user_ids is not None else None
    # a task run's token sees the users of its own workspace, not everyone its user shares a workspace with
    workspace_id = cmd.workspace_id if cmd.workspace_id is not None else scoped_workspace(principal)
    co_members_of = member = None
    if workspace_id is not None:
        # the caller is a member (admins too), so every member shares a workspace with them: no co-member filter.
        # Checked in the snapshot the users are read in (store.list_users' `member`): checked before in a statement
        # of its own (require_member), a caller removed between the two was listed the workspace's users
        if out_of_scope(principal, workspace_id):
            raise NotFound(f"workspace {workspace_id} not found")
        member = uuid.UUID(principal.user_id)
    elif not principal.admin:
        # themself among them; only themself when in no workspace, read with the users (store.list_users)
        co_members_of = uuid.UUID(principal.user_id)
    try:
        if cmd.limit is None:
            rows = await _whole_list(deps, ids, workspace_id, co_members_of, after, member)
        else:
            rows = await store.list_users(deps.pool, ids=ids, workspace_id=workspace_id, co_members_of=co_members_of,
                                          after=after, limit=cmd.limit + 1, member=member)
    except store.NotMember:  # as require_member says it: a workspace the caller is not in does not exist
        raise NotFound(f"workspace {workspace_id} not found") from None
    return await users_answer(rows, cmd.limit, principal)


async def _whole_list(deps: AuthDeps, ids: list[uuid.UUID] | None, workspace_id: int | None,
                      co_members_of: uuid.UUID | None, after: tuple[datetime, uuid.UUID] | None,
                      member: uuid.UUID | None = None) -> list[asyncpg.Record]:
    """The users of a users/query without `limit`. The first MAX_PAGE + 1 are read first: a list no longer than a page
    (what anyone may read with `limit`) is those rows, with no COUNT before them (an extra query for every whole list
    that fits, most of them: docs/performance.md item 57), and one that does not fit once encoded is refused by
    shared.bus.encode_reply. A longer list is counted before it is read (_refuse_a_whole_answer_too_large: the 422
    without reading thousands of users out), then read whole again in one query: its rest read after the first rows
    would be of another moment, so users joining a workspace together between the two reads could be one listed and
    the other not (the first rows read twice: ~1.2 ms more for 5000 users, bench/users_page.py --whole 5000)."""
    rows = await store.list_users(deps.pool, ids=ids, workspace_id=workspace_id, co_members_of=co_members_of,
                                  after=after, limit=paging.MAX_PAGE + 1, member=member)
    if len(rows) <= paging.MAX_PAGE:
        return rows
    await _refuse_a_whole_answer_too_large(deps, ids, workspace_id, co_members_of, after, member)
    return await store.list_users(deps.pool, ids=ids, workspace_id=workspace_id, co_members_of=co_members_of,
                                  after=after, member=member)


async def invite_user(deps: AuthDeps, principal: Principal, cmd: InviteUser) -> UserInvited:
    require_admin(principal, "invite users")
    email = cmd.email.strip()
    if not EMAIL.match(email):
        raise InvalidRequest(f"not an email address: {cmd.email!r}")
    temporary = cmd.password is None
    password = secrets.token_urlsafe(12) if temporary else cmd.password
    _check_password(password)
    user_id = uuid.uuid4()
    password_hash = await hash_secret(password)
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            await store.create_user(conn, user_id, email, email, password_hash, temporary_password=temporary)
            await store.create_workspace(conn, f"{email} - Default Workspace", user_id)
            await store.add_event(conn, subjects.EVENT_USER_CREATED, UserCreated(user_id=user_id, email=email))
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a user with email {email} already exists") from None
    deps.events_committed()
    return UserInvited(user_id=str(user_id), temporary_password=password if temporary else None)


async def _user_by_email_or_404(pool: asyncpg.Pool, email: str) -> asyncpg.Record:
    """A user by email (or, for accounts without one such as the first admin, by username)."""
    user = await store.user_by_login(pool, email.strip())
    if user is None:
        raise NotFound(f"no user with email {email}")
    return user


async def _user_named(pool: asyncpg.Pool, cmd: DeactivateUser | ActivateUser) -> asyncpg.Record:
    """users/deactivate's and users/activate's user: by email (seed 001's way) or by user_id. An email is at most
    NAME_CHARS since session 41, so a user invited before with a longer one could be neither deactivated nor
    activated by it; its id names it (docs/auth.md, "Users and workspaces"). Asked by administrators only."""
    if (cmd.email is None) == (cmd.user_id is None):
        raise InvalidRequest("give the user's email or user_id (one of them)")
    if cmd.email is not None:
        return await _user_by_email_or_404(pool, cmd.email)
    user = await store.user_by_id(pool, _uuid(cmd.user_id, "user_id"))
    if user is None:
        raise NotFound(f"no user with id {cmd.user_id}")
    return user


async def deactivate_user(deps: AuthDeps, principal: Principal, cmd: DeactivateUser) -> Empty:
    require_admin(principal, "deactivate users")
    user = await _user_named(deps.pool, cmd)
    revoked_before = time.time()
    async with deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth-admins'))")
        if user["is_admin"] and user["enabled"] and await store.count_admins(conn) <= 1:
            raise Conflict("cannot deactivate the last active administrator")
        await store.set_enabled(conn, user["id"], False, revoked_before)
        event = UserDeactivated(user_id=user["id"], revoked_before=revoked_before)
        await store.add_event(conn, subjects.EVENT_USER_DEACTIVATED, event)
    # answered once its events.user.deactivated is published (`_published`): the administrator is told the user's
    # tokens stop working at once. Answered before the outbox had sent it, a token still worked for a few
    # milliseconds after the 200
    await _published(deps, event.event_id, f"user {user['id']}'s deactivation")
    return Empty()


async def activate_user(deps: AuthDeps, principal: Principal, cmd: ActivateUser) -> Empty:
    require_admin(principal, "activate users")
    user = await _user_named(deps.pool, cmd)
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.set_enabled(conn, user["id"], True, None)
        await store.add_event(conn, subjects.EVENT_USER_ACTIVATED, UserActivated(user_id=user["id"]))
    deps.events_committed()
    return Empty()


PASSWORD_CHANGE_SOURCE = "password-change"  # wrong current passwords count like failed logins, on their own


async def update_password(deps: AuthDeps, principal: Principal, cmd: UpdatePassword) -> Empty:
    """Your own password with your current one, or (administrators) another user's, given by email or user_id,
    which then must be changed at next login. Either way every token the user holds stops working
    (`events.auth.tokens_revoked` and the revocation list), refresh tokens included: a stolen session does not outlive
    a password change."""
    require_user(principal)
    require_unscoped(principal, "change passwords")
    _check_password(cmd.password)
    settings = deps.settings
    if cmd.email is not None and cmd.user_id is not None:
        raise InvalidRequest("give the user's email or user_id, not both")
    # by user_id: a user whose email no command takes (over NAME_CHARS, invited before the bound; as `_user_named`).
    # An id other than the caller's own (one that is no UUID too) needs the permission before it is parsed or looked
    # up, as users/deactivate's: a non-administrator is 403 whatever id it sends (it was 400 for one that is no UUID,
    # after a lookup for the others)
    if cmd.user_id is not None:
        if not _is_own_id(cmd.user_id, principal):
            require_admin(principal, "set another user's password")
        named = await store.user_by_id(deps.pool, _uuid(cmd.user_id, "user_id"))
    else:
        named = None if cmd.email is None else await store.user_by_login(deps.pool, cmd.email.strip())
    asked = cmd.email is not None or cmd.user_id is not None
    if asked and (named is None or str(named["id"]) != principal.user_id):
        # another user's (or nobody's): the permission first, so a non-administrator is refused alike whether or not
        # a user has the email or id (a 404 before the 403 told any signed-in user which emails are users')
        require_admin(principal, "set another user's password")
        if named is None:
            raise NotFound(f"no user with email {cmd.email}" if cmd.user_id is None else
                           f"no user with id {cmd.user_id}")
    # your own, by email too: the current password checked one at a time and locked after `lockout_after` wrong ones
    # (by email it was checked with neither: a stolen access token could guess it without end, many at once, each a
    # hashing turn at a clean source's place, ahead of every failing source's sign-in)
    own = named is None or str(named["id"]) == principal.user_id
    if own:
        user = named if named is not None else await store.user_by_id(deps.pool, uuid.UUID(principal.user_id))
        if user is None:
            raise NotFound("no such user")
        # one check at a time for every replica, as sign-ins: the lock after `lockout_after` wrong ones holds exactly
        async with _one_at_a_time(deps.pool, store.claim_login_attempt, store.release_login_attempt, user["id"],
                                  PASSWORD_CHANGE_SOURCE, user_id=user["id"]):
            failures = await store.login_failures(deps.pool, user["id"], PASSWORD_CHANGE_SOURCE)
            if failures is not None and failures["locked_until"] is not None and \
                    failures["locked_until"] > datetime.now(UTC):
                raise Forbidden("too many wrong current passwords; try again later", code="account_locked")
            if cmd.current_password is None or not await secret_matches(user["password_hash"],
                                                                         cmd.current_password):
                await store.record_failed_login(deps.pool, user["id"], PASSWORD_CHANGE_SOURCE,
                                                settings.lockout_after, settings.lockout_seconds)
                raise Forbidden("current_password is missing or wrong: give your current password to set a new one")
            if failures is not None:
                await store.clear_failed_logins(deps.pool, user["id"], PASSWORD_CHANGE_SOURCE)
    else:
        user = named  # an administrator (checked above)
    revoked_before = time.time()
    event = await store.set_password(deps.pool, user["id"], await hash_secret(cmd.password),
                                     temporary=str(user["id"]) != principal.user_id, revoked_before=revoked_before)
    # answered once its events.auth.tokens_revoked (put in the outbox with the password) is published
    # (`_published`): every session of the user has ended when the 200 comes. Answered before the outbox had sent
    # it, an access token issued before the change still worked for a few milliseconds after the 200
    await _published(deps, event.event_id, f"user {user['id']}'s password change")
    return Empty()


# --- inference clients ---------------------------------------------------------------------------------


async def _require_owner(deps: AuthDeps, principal: Principal, workspace_id: int, action: str) -> None:
    role = await require_member(_membership(deps.pool), principal, workspace_id)
    # a run's untrusted code must not hand anyone lasting access (a non-expiring client secret)
    require_unscoped(principal, action)
    if role != "OWNER":
        raise Forbidden(f"only workspace owners may {action}")


async def create_inference_client(deps: AuthDeps, principal: Principal,
                                  cmd: CreateInferenceClient) -> InferenceClientCreated:
    await _require_owner(deps, principal, cmd.workspace_id, "create inference clients")
    if not CLIENT_NAME.fullmatch(cmd.name):
        raise InvalidRequest(f"invalid inference client name {echo(cmd.name)}: use 1-63 letters, digits, '.', '_' or"
                             " '-', starting with a letter or digit")
    client_id = f"inference-{secrets.token_hex(8)}"
    secret = secrets.token_urlsafe(32)
    try:
        await store.create_inference_client(deps.pool, client_id,
                                            client_secret_hash(deps.settings.client_secret_key, secret),
                                            cmd.workspace_id, cmd.name, uuid.UUID(principal.user_id))
    except asyncpg.UniqueViolationError:
        raise Conflict(f"the workspace already has an inference client named {cmd.name!r}") from None
    return InferenceClientCreated(client_id=client_id, client_secret=secret, workspace_id=cmd.workspace_id,
                                  name=cmd.name)


async def list_inference_clients(deps: AuthDeps, principal: Principal, workspace_id: int, limit: int | None = None,
                                 cursor: str | None = None) -> InferenceClients:
    """A workspace's live inference clients oldest first (created_at, then client_id): all, or a page
    (shared/paging.py; the cursor: created_at, client_id)."""
    after = paging.after_name_key(cursor, "workspaces/list_inference_clients")
    await require_member(_membership(deps.pool), principal, workspace_id)
    rows = await store.inference_clients(deps.pool, workspace_id, after, None if limit is None else limit + 1)
    clients, next_cursor = await paging.page(rows, limit, lambda r: InferenceClientRecord(
        client_id=r["client_id"], name=r["name"], workspace_id=r["workspace_id"],
        created_at=r["created_at"].isoformat(), created_by=str(r["created_by"]) if r["created_by"] else None),
        lambda r: paging.name_key_cursor(r["created_at"], r["client_id"]))
    return InferenceClients(clients=clients, next_cursor=next_cursor)


async def revoke_inference_client(deps: AuthDeps, principal: Principal, workspace_id: int, client_id: str) -> Empty:
    await _require_owner(deps, principal, workspace_id, "revoke inference clients")
    revoked_at = time.time()
    event = await store.revoke_inference_client(deps.pool, workspace_id, client_id, revoked_at)
    if event is None:
        raise NotFound(f"no inference client {client_id!r} in workspace {workspace_id}")
    # answered once its events.auth.tokens_revoked (put in the outbox with the revocation) is published
    # (`_published`: what that means on one NATS server and on a cluster): the owner is told the tokens stop
    # working at once. Answered before the outbox had sent it, a token still inferred for ~5-20 ms after the 200
    await _published(deps, event.event_id, f"inference client {client_id}'s revocation")
    return Empty()


EVENT_OUT_WAIT = 2.0  # s: how long a change that is answered once its event is out waits for the outbox at most


async def _published(deps: AuthDeps, event_id: uuid.UUID, what: str) -> bool:
    """Until the outbox has published the event (JetStream acknowledged it, the row gone), at most EVENT_OUT_WAIT:
    a round of this process's sending now (`Outbox.send_round`, which tells what it did with each row it read).
    True once the event is out: sent by that round, or found gone (sent by the loop's round or another process's).
    False, with a warning, as soon as a round of this process tried the row and left it unsent (the stream refused
    it, the bus failed before it, or an earlier row of its key failed): the outbox's next try is its own retry,
    RETRY (2 s) later, so waiting on only delayed the answer by the full EVENT_OUT_WAIT. While another process holds
    the outbox's sender lock (a rolling update: two auth processes), the round reads nothing: the row is looked at
    and a round tried again every 50 ms until one has tried it or it is gone. One round at a time: a row refused
    counts its attempts, and rounds a few milliseconds apart would spend its OWN_RETRIES at once. Also False when
    EVENT_OUT_WAIT passes first (a round hanging on the bus). Either way the change is committed: the event goes out
    when the bus takes it, and every verifier reads it in the revocation list at its next poll
    (RAILYARD_AUTH__REVOCATION_POLL_INTERVAL).

    What True means for the verifiers (core subscriptions, shared/authz.py). On one NATS server (the embedded
    stack, docker-compose): the server queued the event on every subscriber's connection when it read it from
    auth's, before it read anything auth sent after, so before the acknowledgement led to the answer; the gateway
    relaying the answer reads the event first on its connection, and the client's next request there is refused.
    Other verifiers apply it as they read their connection, a moment later. On a NATS cluster (the Kubernetes
    manifests: 3 nodes) the acknowledgement comes from the stream's leader once its replicas stored the event;
    auth's node had forwarded it on its routes, but a verifier connected to another node gets it only when that node
    passes it on, possibly after the answer (not bounded here; the poll bounds it)."""
    deadline = time.monotonic() + EVENT_OUT_WAIT
    if deps.send_events is None:
        deps.events_committed()
        return False
    while True:
        sending = asyncio.ensure_future(deps.send_events())
        # a failed round is the outbox's to tell (it logs and retries): retrieved, also when it ends after this returned
        sending.add_done_callback(lambda done: done.cancelled() or done.exception())
        done: SendRound | None = None
        with contextlib.suppress(Exception):  # TimeoutError, or the round's own failure
            # shielded: a round cut short mid-transaction would publish rows it then does not delete
            done = await asyncio.wait_for(asyncio.shield(sending), max(deadline - time.monotonic(), 0.0))
        if done is not None and event_id in done.sent:
            return True
        if done is not None and done.left_unsent(event_id):
            # this process tried it: the outbox tries again at its own retry pace (send_round asked its loop for a
            # round RETRY on), not woken now: a round milliseconds after this one would count another attempt
            break
        if not await store.event_unsent(deps.pool, event_id):
            return True
        if time.monotonic() >= deadline:
            deps.events_committed()  # a round still under way (the bus hanging): the loop's is the next
            break
        await asyncio.sleep(0.05)  # another process is sending (or the round failed): a round again
    log.warning("%s is committed but its event is not published yet (the bus?): answered; verifiers apply it "
                "when the outbox sends it, or at their next poll of the revocation list", what)
    return False


# --- workspaces ----------------------------------------------------------------------------------------


def _workspace_record(row: asyncpg.Record) -> WorkspaceRecord:
    return WorkspaceRecord(id=row["id"], name=row["name"], created_at=row["created_at"].isoformat(),
                           created_by=str(row["created_by"]), archived=row["archived"],
                           models=list(row["models"]), pipelines=list(row["pipelines"]))


async def list_workspaces(deps: AuthDeps, principal: Principal, cmd: ListWorkspaces) -> Workspaces:
    require_user(principal)
    target = principal.user_id if cmd.user_id is None else str(_uuid(cmd.user_id, "user_id"))
    if target != principal.user_id and not principal.admin:
        raise Forbidden("only administrators may list another user's workspaces")
    after, limit = paging.after(cmd.cursor, "workspaces/list"), cmd.limit
    # a page reads its own rows in SQL; a task run's token reaches its own workspace only (narrowed there, so a
    # page is never emptied after its LIMIT)
    rows = await store.workspaces_of(deps.pool, uuid.UUID(target), after, None if limit is None else limit + 1,
                                     scoped_workspace(principal))
    records, next_cursor = await paging.page(rows, limit, _workspace_record)
    return Workspaces(workspaces=records, next_cursor=next_cursor)


async def create_workspace(deps: AuthDeps, principal: Principal, cmd: CreateWorkspace) -> WorkspaceCreated:
    require_user(principal)
    require_unscoped(principal, "create workspaces")
    name = cmd.workspace_name
    if not WORKSPACE_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid workspace name {echo(name)}: use 1-63 lowercase ASCII letters, digits or dashes,"
            " starting and ending with a letter or digit (DNS-compliant; '.' and '_' are not allowed)")
    owner = uuid.UUID(principal.user_id)
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            workspace_id = await store.create_workspace(conn, name, owner)
            await store.add_event(conn, subjects.EVENT_WORKSPACE_CREATED,
                                  WorkspaceWasCreated(workspace_id=workspace_id, name=name, created_by=owner))
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a workspace named {name!r} already exists") from None
    deps.events_committed()
    return WorkspaceCreated(workspace_id=workspace_id)


async def add_workspace_user(deps: AuthDeps, principal: Principal, cmd: AddWorkspaceUser) -> Empty:
    role = await require_member(_membership(deps.pool), principal, cmd.workspace_id)
    # membership is granted by people, not by a run's code (it could let an outside account in)
    require_unscoped(principal, "add users to workspaces")
    if role != "OWNER":
        raise Forbidden("only workspace owners may add users")
    user = await _user_by_email_or_404(deps.pool, cmd.email)
    # its events.workspace.membership_changed is put in the outbox with the membership
    if await store.add_member(deps.pool, cmd.workspace_id, user["id"], "COLLABORATOR"):
        deps.events_committed()
    return Empty()


async def list_workspace_users(deps: AuthDeps, principal: Principal, workspace_id: int, limit: int | None = None,
                               cursor: str | None = None) -> WorkspaceUsers:
    """A workspace's members in the order they were added: all, or a page (shared/paging.py; the cursor: added_at,
    user_id)."""
    after = paging.after_key(cursor, "workspaces/list_users")
    await require_member(_membership(deps.pool), principal, workspace_id)
    rows = await store.members(deps.pool, workspace_id, after, None if limit is None else limit + 1)
    users, next_cursor = await paging.page(
        rows, limit, lambda r: WorkspaceMember(user_id=str(r["user_id"]), user_type=r["user_type"]),
        lambda r: paging.key_cursor({"created_at": r["added_at"], "id": r["user_id"]}))
    return WorkspaceUsers(users=users, next_cursor=next_cursor)


async def remove_workspace_user(deps: AuthDeps, principal: Principal, cmd: RemoveWorkspaceUser) -> AffectedRows:
    role = await require_member(_membership(deps.pool), principal, cmd.workspace_id)
    require_unscoped(principal, "remove users from workspaces")
    if cmd.user_id is None and cmd.email is None:
        raise InvalidRequest("give user_id or email of the user to remove")
    if cmd.user_id is not None:
        target = _uuid(cmd.user_id, "user_id")
    else:
        named = await store.user_by_login(deps.pool, cmd.email.strip())
        if named is None and role == "OWNER":
            raise NotFound(f"no user with email {cmd.email}")
        # a collaborator may remove themself only: any other email, a user's or nobody's, is the same 403 (a 404
        # before the role check told any member which emails are users')
        target = None if named is None else named["id"]
    if target is None or (str(target) != principal.user_id and role != "OWNER"):
        raise Forbidden("only workspace owners may remove other users")
    async with deps.pool.acquire() as conn, conn.transaction():
        # the workspace's lock in a key space of its own (the deployer locks pipelines by id in the same database)
        await xact_lock(conn, "auth.workspace", int(cmd.workspace_id))
        target_role = await store.role_in(conn, target, cmd.workspace_id)
        if target_role == "OWNER" and await store.owner_count(conn, cmd.workspace_id) <= 1:
            raise Conflict("cannot remove the last owner of a workspace")
        affected = await store.remove_member(conn, cmd.workspace_id, target)
        if affected:
            await store.add_event(conn, subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, WorkspaceMembershipChanged(
                workspace_id=cmd.workspace_id, user_id=target, user_type=None))
    if affected:
        deps.events_committed()
    return AffectedRows(affected_rows=affected)


async def record_resource(deps: AuthDeps, workspace_id: int, kind: str, resource_id: int) -> None:
    """A model or pipeline now exists in a workspace (from the owning service's event), for workspaces/list."""
    await store.add_resource(deps.pool, workspace_id, kind, resource_id)


async def check_membership(deps: AuthDeps, principal: Principal, workspace_id: int) -> Membership:
    role = await require_member(_membership(deps.pool), principal, workspace_id)
    return Membership(workspace_id=workspace_id, user_type=role)


async def list_features(settings: AuthSettings, principal: Principal) -> Features:
    require_user(principal)
    return Features(features={"workspaces": "true", "inference_tokens": "true"}, name=settings.instance_name,
                    is_auth_enabled=True)
