"""External model registries (MLflow), seed section 4: connect, attach to workspaces, browse, and copy a
version's artifact into a workspace as a model.

Who sees a registry: its creator and the members of the workspaces it is attached to (404 otherwise). The
token is stored encrypted; get_registry returns it to those who may see the registry, list responses never.
A task run's token may browse and copy from its workspace's registries but not create, attach or detach any (403
`out_of_scope`): stored credentials and who reaches them are changed by people, not by a run's code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from services.registry import handlers, store
from services.registry.mlflow import MlflowRegistry
from shared import paging, subjects
from shared.authz import Principal, require_member, require_owner_or_member, require_unscoped, require_user
from shared.errors import InvalidRequest, NotFound
from shared.messages.registry import (
    AttachRegistry,
    CreateRegistry,
    ListRegistryArtifacts,
    ListRegistryModels,
    RegistryArtifact,
    RegistryArtifacts,
    RegistryAttachment,
    RegistryChanged,
    RegistryCreated,
    RegistryList,
    RegistryModels,
    RegistryRecord,
    UploadedFromRegistry,
    UploadFromRegistry,
    UploadModel,
)
from shared.objectstore import BUCKET_ARTIFACTS
from shared.staging import staged_key
from shared.urlcheck import OutboundRules

MASK = "********"


EITHER = "id (or registry_id)"
"""What a command taking the registry's id as `id` or `registry_id` (AttachRegistry, GetRegistry, ListRegistryModels)
names when neither is given: the seed's attach/remove examples send `id`, its get_registry `registry_id`, and the
gateway forwards both keys (null when not sent), so the service cannot tell which one a body used. It said
"registry_id is required" to a body of the seed's `{'id': None, 'workspace_id': 1}`, a field the body never had."""


def _registry_id(*candidates: str | None, names: str = "registry_id") -> uuid.UUID:
    value = next((c for c in candidates if c), None)
    if value is None:
        raise InvalidRequest(f"{names} is required: the registry's id (a UUID, as models/list_registries lists it)")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("registry not found") from None


class RegistryService:
    """The registry handlers, over the registry service's pool, secret box and membership lookups."""

    QUERY = ("SELECT r.id, r.name, r.url, r.token_encrypted, r.owner_id, r.created_at, r.updated_at,"
             " COALESCE(array_agg(w.workspace_id) FILTER (WHERE w.workspace_id IS NOT NULL), '{}') AS workspace_ids"
             " FROM registries r LEFT JOIN registry_workspaces w ON w.registry_id = r.id")

    def __init__(self, deps: handlers.RegistryDeps, box, rules: OutboundRules,
                 client: Callable[..., MlflowRegistry] = MlflowRegistry) -> None:
        self.deps = deps
        self.pool: asyncpg.Pool = deps.pool
        self.box = box
        self.rules = rules  # what a registry's URL may reach (checked at creation and before every request)
        self.client = client

    def _record(self, row: asyncpg.Record, *, reveal: bool) -> RegistryRecord:
        token = self.box.open(row["token_encrypted"]) if row["token_encrypted"] is not None else None
        return RegistryRecord(id=str(row["id"]), name=row["name"], url=row["url"],
                              token=token if reveal or token is None else MASK,
                              created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat())

    async def _visible(self, principal: Principal, token: str | None, registry_id: uuid.UUID) -> asyncpg.Record:
        require_user(principal)
        row = await self.pool.fetchrow(f"{self.QUERY} WHERE r.id = $1 GROUP BY r.id", registry_id)
        if row is None:
            raise NotFound("registry not found")
        await require_owner_or_member(self.deps.membership(token), principal, str(row["owner_id"]),
                                      list(row["workspace_ids"]), "registry")
        return row

    def _mlflow(self, row: asyncpg.Record, principal: Principal) -> MlflowRegistry:
        token = self.box.open(row["token_encrypted"]) if row["token_encrypted"] is not None else None
        return self.client(row["url"], token, rules=self.rules, caller=principal.user_id)

    async def create(self, principal: Principal, token: str | None, cmd: CreateRegistry) -> RegistryCreated:
        await require_member(self.deps.membership(token), principal, cmd.workspace_id)
        require_unscoped(principal, "create registries")
        if not cmd.name.strip():
            raise InvalidRequest("name is required")
        url = (await self.rules.check(cmd.url.strip(), caller=principal.user_id)).url
        registry_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO registries (id, name, url, token_encrypted, owner_id) VALUES ($1, $2, $3, $4, $5)",
                registry_id, cmd.name, url, self.box.seal(cmd.token) if cmd.token else None,
                uuid.UUID(principal.user_id))
            await conn.execute("INSERT INTO registry_workspaces (registry_id, workspace_id) VALUES ($1, $2)",
                               registry_id, cmd.workspace_id)
            await self._changed(conn, registry_id, "created", cmd.workspace_id)
        self.deps.events_committed()
        return RegistryCreated(id=str(registry_id), workspace_id=cmd.workspace_id)

    async def _changed(self, conn: asyncpg.Connection, registry_id: uuid.UUID, action: str,
                       workspace_id: int) -> None:
        """The change's events.registry.changed, to the outbox in the change's transaction (`conn`)."""
        await store.add_event(conn, subjects.EVENT_REGISTRY_CHANGED, RegistryChanged(
            registry_id=registry_id, action=action, workspace_id=workspace_id))

    async def attach(self, principal: Principal, token: str | None, cmd: AttachRegistry) -> RegistryAttachment:
        await require_member(self.deps.membership(token), principal, cmd.workspace_id)
        require_unscoped(principal, "attach registries to workspaces")
        row = await self._visible(principal, token, _registry_id(cmd.registry_id, cmd.id, names=EITHER))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO registry_workspaces (registry_id, workspace_id) VALUES ($1, $2)"
                               " ON CONFLICT DO NOTHING", row["id"], cmd.workspace_id)
            await self._changed(conn, row["id"], "attached", cmd.workspace_id)
        self.deps.events_committed()
        return RegistryAttachment(id=str(row["id"]), registry_id=str(row["id"]), workspace_id=cmd.workspace_id)

    async def detach(self, principal: Principal, token: str | None, cmd: AttachRegistry) -> RegistryAttachment:
        await require_member(self.deps.membership(token), principal, cmd.workspace_id)
        require_unscoped(principal, "remove registries from workspaces")
        row = await self._visible(principal, token, _registry_id(cmd.registry_id, cmd.id, names=EITHER))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM registry_workspaces WHERE registry_id = $1 AND workspace_id = $2",
                               row["id"], cmd.workspace_id)
            await self._changed(conn, row["id"], "detached", cmd.workspace_id)
        self.deps.events_committed()
        return RegistryAttachment(id=str(row["id"]), registry_id=str(row["id"]), workspace_id=cmd.workspace_id)

    async def get(self, principal: Principal, token: str | None, registry_id: uuid.UUID) -> RegistryRecord:
        return self._record(await self._visible(principal, token, registry_id), reveal=True)

    async def list(self, principal: Principal, token: str | None, workspace_id: int, limit: int | None = None,
                   cursor: str | None = None) -> RegistryList:
        """The workspace's registries, oldest first: all, or a page (shared/paging.py; the cursor: created_at, id)."""
        after = paging.after_key(cursor, "models/list_registries")
        await require_member(self.deps.membership(token), principal, workspace_id)
        rows = await self.pool.fetch(
            f"{self.QUERY} WHERE r.id IN (SELECT registry_id FROM registry_workspaces WHERE workspace_id = $1)"
            " AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3::uuid))"
            " GROUP BY r.id ORDER BY r.created_at, r.id LIMIT $4", workspace_id, *(after or (None, None)),
            None if limit is None else limit + 1)
        registries, next_cursor = await paging.page(rows, limit, lambda r: self._record(r, reveal=False),
                                                    paging.key_cursor)
        return RegistryList(registries=registries, next_cursor=next_cursor)

    async def list_models(self, principal: Principal, token: str | None, cmd: ListRegistryModels) -> RegistryModels:
        row = await self._visible(principal, token, _registry_id(cmd.registry_id, cmd.id, names=EITHER))
        return RegistryModels(**await self._mlflow(row, principal).search_models(cmd.page_token, cmd.max_results))

    async def list_artifacts(self, principal: Principal, token: str | None,
                             cmd: ListRegistryArtifacts) -> RegistryArtifacts:
        row = await self._visible(principal, token, _registry_id(cmd.registry_id))
        found = await self._mlflow(row, principal).list_artifacts(cmd.name, cmd.version)
        return RegistryArtifacts(artifacts=[RegistryArtifact(**a) for a in found])

    async def upload(self, principal: Principal, token: str | None, cmd: UploadFromRegistry) -> UploadedFromRegistry:
        await require_member(self.deps.membership(token), principal, cmd.workspace_id)
        row = await self._visible(principal, token, _registry_id(cmd.registry_id))
        staged = staged_key(principal)  # upload_model takes it from this user and token scope only
        try:
            source = self._mlflow(row, principal).download(cmd.path)
            await self.deps.objects.put_stream(BUCKET_ARTIFACTS, staged, source)
        except BaseException:
            await self.deps.objects.delete(BUCKET_ARTIFACTS, staged)
            raise
        inserted = await handlers.upload_model(self.deps, principal, token, UploadModel(
            workspace_id=cmd.workspace_id, name=cmd.name, visibility=cmd.visibility, conversion=cmd.conversion,
            input_schema=cmd.input_schema, output_schema=cmd.output_schema, staged_key=staged,
            file_name=cmd.path.rstrip("/").split("/")[-1]))
        made = inserted.insert_models["returning"][0]["models"][0]  # the version too: a client reads it by its UUID
        return UploadedFromRegistry(model_id=made["id"], model_version=made["model_version"])
