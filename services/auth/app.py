"""auth: transport only. Subscribers parse their typed message, identify the caller and call one handler."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
from faststream.nats import NatsRouter
from pydantic import BaseModel

from services.auth import handlers, store, token_sweep
from shared import paging, subjects
from shared.authz import Principal, TokenVerifier, VerifierFeed
from shared.bus import CallContext, EncodedData, command, publish_event, reply_limit
from shared.consumers import DeliveryPolicy, durable_subscriber, json_model
from shared.data_errors import is_database_unavailable
from shared.errors import Unavailable
from shared.messages.auth import (
    ActivateUser,
    AddWorkspaceUser,
    AffectedRows,
    AuthorizationCodeIssued,
    AuthorizeUser,
    CheckMembership,
    CreateInferenceClient,
    CreateWorkspace,
    DeactivateUser,
    Empty,
    EndSession,
    Features,
    GetSigningKeys,
    InferenceClientCreated,
    InferenceClients,
    InviteUser,
    IssueToken,
    ListFeatures,
    ListInferenceClients,
    ListRevocations,
    ListWorkspaces,
    ListWorkspaceUsers,
    Membership,
    QueryUsers,
    RemoveWorkspaceUser,
    Revocations,
    RevokeInferenceClient,
    RotateSigningKey,
    SigningKeyRotated,
    SigningKeys,
    TokenIssued,
    UpdatePassword,
    UserInvited,
    WorkspaceCreated,
    Workspaces,
    WorkspaceUsers,
)
from shared.messages.deployer import PipelineVersionCreated
from shared.messages.registry import ModelUploaded
from shared.messages.tasks import IssueTaskToken, TaskRunEvent, TaskTokenIssued
from shared.outbox import Outbox
from shared.service import Runtime, ServiceSpec

NAME = "auth"
log = logging.getLogger("railyard.auth")
# token requests handled at once: each waits mostly on its failed-login delay or the database (pool_max), while
# password hashing runs HASHING_AT_ONCE at a time (handlers.py)
TOKEN_WORKERS = 64


def build_router(runtime: Runtime) -> NatsRouter:
    router = NatsRouter()

    def deps() -> handlers.AuthDeps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    policy = DeliveryPolicy.from_settings(runtime.settings.nats)

    def resources_subscriber(subject: str, durable: str, model: type[BaseModel]):
        # a message that does not decode, or whose handler fails at every delivery, is kept in dead_letters
        # (shared/consumers.py) instead of being redelivered for ever
        return durable_subscriber(
            router, subject, durable=durable, service=NAME, decode=json_model(model), pool=lambda: runtime.db,
            policy=policy, ack_wait=5.0, batch_size=16, title=f"{subject}:{model.__name__}",
            description="Keep the ids of each workspace's models and pipelines for workspaces/list.")

    @resources_subscriber(subjects.EVENT_MODEL_UPLOADED, "auth-model-uploaded", ModelUploaded)
    async def on_model_uploaded(event: ModelUploaded, message) -> None:
        await handlers.record_resource(deps(), event.workspace_id, "model", event.model_id)

    @resources_subscriber(subjects.EVENT_PIPELINE_VERSION_CREATED, "auth-pipeline-created", PipelineVersionCreated)
    async def on_pipeline_created(event: PipelineVersionCreated, message) -> None:
        await handlers.record_resource(deps(), event.workspace_id, "pipeline", event.pipeline_id)

    def run_ends_subscriber(subject: str, durable: str):
        return durable_subscriber(
            router, subject, durable=durable, service=NAME, decode=json_model(TaskRunEvent), pool=lambda: runtime.db,
            policy=policy, ack_wait=5.0, batch_size=16, title=f"{subject}:TaskRunEvent",
            description="Revoke an ended task run's tokens (its session; services/auth/task_tokens.py).")

    @run_ends_subscriber(subjects.EVENT_TASK_RUN_SUCCEEDED, "auth-task-runs-succeeded")
    async def on_run_succeeded(event: TaskRunEvent, message) -> None:
        await handlers.task_run_ended(deps(), event.run_id, event.owner_id)

    @run_ends_subscriber(subjects.EVENT_TASK_RUN_FAILED, "auth-task-runs-failed")
    async def on_run_failed(event: TaskRunEvent, message) -> None:
        await handlers.task_run_ended(deps(), event.run_id, event.owner_id)

    # many at once: a failed login's delay (handlers._password_login) sleeps in its handler, and one at a time those
    # sleeps queued every other sign-in behind them, so one address guessing a password stalled everyone's (504)
    @command(router, subjects.AUTH_TOKEN_ISSUE, service=NAME, max_workers=TOKEN_WORKERS)
    async def issue_token(cmd: IssueToken, ctx: CallContext) -> TokenIssued:
        """Issue tokens for the password, refresh_token, client_credentials and authorization_code grants."""
        return await handlers.issue_token(deps(), cmd)

    @command(router, subjects.AUTH_TOKEN_LOGOUT, service=NAME, max_workers=TOKEN_WORKERS)
    async def end_session(cmd: EndSession, ctx: CallContext) -> Empty:
        """The logout endpoint: a refresh token's session ended (gateway only)."""
        return await handlers.end_session(deps(), cmd)

    @command(router, subjects.AUTH_AUTHORIZE, service=NAME, max_workers=TOKEN_WORKERS)
    async def authorize(cmd: AuthorizeUser, ctx: CallContext) -> AuthorizationCodeIssued:
        """The authorization endpoint's sign-in: a user's password for a one-time PKCE-bound code (gateway only)."""
        return await handlers.authorize(deps(), cmd)

    @command(router, subjects.AUTH_TOKEN_ISSUE_TASK, service=NAME)
    async def issue_task_token(cmd: IssueTaskToken, ctx: CallContext) -> TaskTokenIssued:
        """A task run's short-lived token, scoped to its workspace (the task scheduler's bus identity only)."""
        # its database down is a 503 (shared.bus.run_command, shared/data_errors.py database_unavailable), which the
        # task scheduler asks again for MINT_RETRY_SECONDS; the mint's writes can be done again (record_issue keeps
        # the latest expiry)
        return await handlers.issue_task_token(deps(), cmd)

    @command(router, subjects.AUTH_KEYS_GET, service=NAME)
    async def get_keys(cmd: GetSigningKeys, ctx: CallContext) -> SigningKeys:
        """The JWKS that verifies tokens."""
        return await handlers.signing_keys(runtime.db, runtime.settings.auth)

    @command(router, subjects.AUTH_KEYS_ROTATE, service=NAME)
    async def rotate_key(cmd: RotateSigningKey, ctx: CallContext) -> SigningKeyRotated:
        """Make a new signing key active (admin)."""
        return await handlers.rotate_signing_key(deps(), await caller(ctx))

    @command(router, subjects.AUTH_REVOCATIONS_LIST, service=NAME)
    async def list_revocations(cmd: ListRevocations, ctx: CallContext) -> dict:
        """Deactivated users and the moment before which their tokens are refused; revoked sessions (a page); with
        `since`, those written since a previous read's `position`."""
        if cmd.since is not None:
            kept = handlers.key_retention(runtime.settings.auth) if cmd.with_keys else None
            return handlers.revocations_reply(
                await handlers.revocation_changes(runtime.db, cmd.since, cmd.after, deps().reply_limit(), kept))
        return handlers.revocations_reply(await handlers.revocations(
            runtime.db, runtime.settings.auth, cmd.after, deps().reply_limit(), with_position=cmd.with_position,
            with_keys=cmd.with_keys))

    @command(router, subjects.AUTH_USERS_QUERY, service=NAME, too_large_hint=paging.too_large_hint("users/query"))
    async def query_users(cmd: QueryUsers, ctx: CallContext) -> EncodedData:
        """Users, by id or workspace, oldest first (a page with `limit`); a Users encoded from the rows at once."""
        return await handlers.query_users(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_USERS_INVITE, service=NAME)
    async def invite_user(cmd: InviteUser, ctx: CallContext) -> UserInvited:
        """Create a user (admin)."""
        return await handlers.invite_user(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_USERS_DEACTIVATE, service=NAME)
    async def deactivate_user(cmd: DeactivateUser, ctx: CallContext) -> Empty:
        """Deactivate a user (admin)."""
        return await handlers.deactivate_user(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_USERS_ACTIVATE, service=NAME)
    async def activate_user(cmd: ActivateUser, ctx: CallContext) -> Empty:
        """Activate a user (admin)."""
        return await handlers.activate_user(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_USERS_UPDATE_PASSWORD, service=NAME)
    async def update_password(cmd: UpdatePassword, ctx: CallContext) -> Empty:
        """Set your own password (with the current one), or another user's (administrators)."""
        return await handlers.update_password(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_WORKSPACES_LIST, service=NAME,
             too_large_hint=paging.too_large_hint("workspaces/list"))
    async def list_workspaces(cmd: ListWorkspaces, ctx: CallContext) -> Workspaces:
        """Workspaces of a user."""
        return await handlers.list_workspaces(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_WORKSPACES_CREATE, service=NAME)
    async def create_workspace(cmd: CreateWorkspace, ctx: CallContext) -> WorkspaceCreated:
        """Create a workspace owned by the caller."""
        return await handlers.create_workspace(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_WORKSPACES_ADD_USER, service=NAME)
    async def add_user(cmd: AddWorkspaceUser, ctx: CallContext) -> Empty:
        """Add a user to a workspace (owners)."""
        return await handlers.add_workspace_user(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_WORKSPACES_LIST_USERS, service=NAME,
             too_large_hint=paging.too_large_hint("workspaces/list_users"))
    async def list_users(cmd: ListWorkspaceUsers, ctx: CallContext) -> WorkspaceUsers:
        """Members of a workspace, in the order they were added (a page with `limit`)."""
        return await handlers.list_workspace_users(deps(), await caller(ctx), cmd.workspace_id, cmd.limit,
                                                   cmd.cursor)

    @command(router, subjects.AUTH_WORKSPACES_REMOVE_USER, service=NAME)
    async def remove_user(cmd: RemoveWorkspaceUser, ctx: CallContext) -> AffectedRows:
        """Remove a user from a workspace."""
        return await handlers.remove_workspace_user(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_WORKSPACES_CHECK_MEMBER, service=NAME)
    async def check_member(cmd: CheckMembership, ctx: CallContext) -> Membership:
        """The caller's role in a workspace (404 when not a member)."""
        return await handlers.check_membership(deps(), await caller(ctx), cmd.workspace_id)

    @command(router, subjects.AUTH_INFERENCE_CLIENTS_CREATE, service=NAME)
    async def create_inference_client(cmd: CreateInferenceClient, ctx: CallContext) -> InferenceClientCreated:
        """Create an inference client of a workspace (owners); its secret is shown once."""
        return await handlers.create_inference_client(deps(), await caller(ctx), cmd)

    @command(router, subjects.AUTH_INFERENCE_CLIENTS_LIST, service=NAME,
             too_large_hint=paging.too_large_hint("workspaces/list_inference_clients"))
    async def list_inference_clients(cmd: ListInferenceClients, ctx: CallContext) -> InferenceClients:
        """The live inference clients of a workspace (members), oldest first (a page with `limit`)."""
        return await handlers.list_inference_clients(deps(), await caller(ctx), cmd.workspace_id, cmd.limit,
                                                     cmd.cursor)

    @command(router, subjects.AUTH_INFERENCE_CLIENTS_REVOKE, service=NAME)
    async def revoke_inference_client(cmd: RevokeInferenceClient, ctx: CallContext) -> Empty:
        """Revoke an inference client (owners); its live tokens stop working."""
        return await handlers.revoke_inference_client(deps(), await caller(ctx), cmd.workspace_id, cmd.client_id)

    @command(router, subjects.AUTH_FEATURES_LIST, service=NAME)
    async def list_features(cmd: ListFeatures, ctx: CallContext) -> Features:
        """Enabled features of the instance."""
        return await handlers.list_features(runtime.settings.auth, await caller(ctx))

    return router


async def own_keys(pool: asyncpg.Pool, settings) -> list[dict]:
    """The signing keys auth's own verifier reads (from its database). A database that is down is Unavailable: the
    verifier's 503 'try again in a moment', read again at most every KEY_REFETCH_INTERVAL (shared/authz.py); it
    raised out of the verifier, each token a 500 'internal error' with a logged traceback. Down as every command's 503
    says (shared/data_errors.py is_database_unavailable): an OSError asyncpg did not raise, or asyncpg's
    InterfaceError for a misuse of a connection (a bug), stays the verifier's 500, logged with its traceback (auth's
    own tuple took any of them for the database being down)."""
    try:
        return await store.public_keys(pool, handlers.key_retention(settings))
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        log.warning("could not read the signing keys from the database: %r", exc)
        raise Unavailable("auth's database did not answer") from None


async def own_revocations(pool: asyncpg.Pool, settings) -> Revocations:
    """The whole revocation list auth's own verifier reads (from its database), as own_keys: a database that is down
    is Unavailable, the verifier's 503 'try again in a moment' for a token met before its first read, read again at
    most every KEY_REFETCH_INTERVAL. It raised asyncpg's or the socket's error out of the verifier: a 500 'internal
    error' with a logged traceback for each token auth checked before the list was ever read."""
    try:
        return await handlers.revocations(pool, settings, with_position=True, with_keys=True)
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        log.warning("could not read the revocation list from the database: %r", exc)
        raise Unavailable("auth's database did not answer") from None


async def start(runtime: Runtime) -> None:
    settings = runtime.settings.auth

    async def publish(subject, event) -> None:
        await publish_event(runtime.broker, subject, event)

    handlers.configure_password_hashing(settings)
    # auth's events go out from the outbox (store.EVENT_TYPES; shared/outbox.py), in order per user, workspace or key:
    # a publish that fails no longer turns a committed change into a 500, nor loses its event
    outbox = Outbox(runtime.db, publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                    what="auth events", rows=store)
    connection = runtime.broker.config.connection_state.connection
    # the server's payload limit is learnt when connecting (as shared.bus.command reads it)
    deps = handlers.AuthDeps(pool=runtime.db, settings=settings, keys={}, events_committed=outbox.wake,
                             send_events=outbox.send_round,
                             reply_limit=lambda: reply_limit(getattr(connection, "max_payload", None)))
    await handlers.bootstrap(deps)
    verifier = TokenVerifier(settings, lambda: own_keys(runtime.db, settings))
    feed = VerifierFeed(verifier, lambda: own_revocations(runtime.db, settings), settings.revocation_poll_interval,
                        changes=lambda since: handlers.revocation_changes(runtime.db, since,
                                                                          keys_kept=handlers.key_retention(settings)))
    await feed.start(connection)
    sweep = token_sweep.AuthStateSweep(runtime.db)
    sweep.start()
    outbox_task = asyncio.create_task(outbox.run())
    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed, auth_state_sweep=sweep, outbox=outbox,
                          outbox_task=outbox_task)


async def stop(runtime: Runtime) -> None:
    if (sweep := runtime.extras.get("auth_state_sweep")) is not None:
        await sweep.stop()
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()
    outbox_task, outbox = runtime.extras.get("outbox_task"), runtime.extras.get("outbox")
    if outbox_task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process)
        await outbox.stop(outbox_task)


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    on_start=start,
    on_stop=stop,
)
