"""Data connections: named, typed, encrypted details, attached to workspaces (seed section 10).

Who sees a connection: its creator, and the members of the workspaces it is attached to; to anyone else it
does not exist (404). Details come back whole from get/get_by_id; list responses mask secret-looking fields.
`workspace_names` lists only the attached workspaces the caller is a member of (a task run's token: its workspace
only; administrators: all): a connection shared with workspace B must not tell A's members that B exists.
A task run's token may read the connections of its workspace but not create, attach, detach or delete any (403
`out_of_scope`): stored secrets and who reaches them are changed by people, not by a run's code.

Names are unique per owner, and among the connections attached to one workspace (migration 005), not across the
platform: a global name made create answer 409 for a name any other tenant used, which told anyone whether a name
existed anywhere. A lookup by name (get, get_by_id given a name, delete) reads only what the caller sees (`_named`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from services.registry import store
from shared import paging, subjects
from shared.authz import (
    Principal,
    require_member,
    require_owner_or_member,
    require_unscoped,
    require_user,
    scoped_workspace,
)
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.messages.registry import (
    AddConnectionToWorkspace,
    ConnectionChanged,
    ConnectionId,
    ConnectionRecord,
    Connections,
    CreateConnection,
    NoContent,
)
from shared.urlcheck import OutboundRules, address_port, default_port, endpoints_in, valid_port

SECRET_KEY = re.compile(r"pass|secret|token|key|credential|private|auth", re.IGNORECASE)
# keys whose value is a server even as a bare name (`{"host": "db", "port": 5432}`)
HOST_KEYS = {"host", "hostname", "hostaddr", "hosts", "server", "servers", "address", "addr", "url", "uri",
             "endpoint", "endpoints"}
MAX_SERVERS = 64  # judged locally, without DNS (`OutboundRules.check_host`)
MAX_DETAILS = 64 * 1024
MASK = "********"


def _mask(details: Any) -> Any:
    if isinstance(details, dict):
        return {k: (MASK if SECRET_KEY.search(str(k)) else _mask(v)) for k, v in details.items()}
    if isinstance(details, list):
        return [_mask(v) for v in details]
    return details


def _port(details: dict[str, Any], path: str) -> int | None:
    """The `port` beside a host in `details` (any case; absent, null or "": None); 400 naming the key path for one
    that is not a port (`valid_port`: 1-65535), rather than a crash in the resolver or a silently skipped check."""
    for key, value in details.items():
        if str(key).lower() == "port" and value not in (None, ""):
            try:
                return valid_port(value)
            except ValueError as error:
                raise InvalidRequest(f"{path}.{key}: {error}") from None
    return None


def _address(value: str, port: int | None) -> tuple[str, int | None]:
    """A `host` or scheme-less `endpoint` detail as (host, port) (`address_port`): a port written in the value wins
    over the details' `port` (`127.0.0.1:15432` was checked as a host name that does not resolve, and let through).
    ValueError for a value that is no host (`a]b`)."""
    address = address_port(value)
    return (address[0], address[1] or port) if address else (value.strip(), port)


def _named_servers(details: dict[str, Any], type_port: int | None) -> dict[tuple[str, int | None], str]:
    """Every server the details name, (host, port) -> the first key path naming it (`details.options.dsn`,
    `details.hosts[1]`): each string anywhere in them, nested dicts and lists included, read by `endpoints_in` (URLs of
    any scheme, key=value DSNs, `host:port`), and a name alone under a host-like key, with the `port` beside it, else
    the connection type's default port (`POSTGRES`: 5432)."""
    found: dict[tuple[str, int | None], str] = {}

    def walk(value: Any, path: str, host_key: bool = False, port: int | None = None) -> None:
        if isinstance(value, dict):
            beside = _port(value, path) or type_port
            for key, item in value.items():
                walk(item, f"{path}.{key}", str(key).lower() in HOST_KEYS, beside)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]", host_key, port)
        elif isinstance(value, str):
            # a string Python's URL parser refuses names no host in free text, but is refused under a host-like key
            try:
                named = endpoints_in(value, strict=host_key)
                if not named and host_key and value.strip():
                    named = [_address(value, port)]
            except ValueError:
                raise InvalidRequest(f"{path}: not a valid host or URL (an unbalanced '[' or ']', or characters"
                                     " a host cannot have): give the server's name or address") from None
            for host, named_port in named:
                found.setdefault((host.lower(), named_port), path)

    walk(details, "details")
    return found


async def _check_details(details: dict[str, Any], rules: OutboundRules, kind: str = "") -> None:
    """Every server the details name (`_named_servers`: any scheme, any depth) may not be cloud metadata, a
    link-local address or, by host and port, one of the platform's own servers (shared/urlcheck.py `check_host`,
    judged without DNS: a name only DNS could answer is stored as written). Stored for the tenant's code and never
    fetched here, so any scheme is allowed and loopback or private addresses are the tenant's own (the registry's
    stricter rule is for URLs the platform fetches), but no tenant record may point inside the platform. 400
    `url_not_allowed` names the key path (the first refusal in the details' order)."""
    if len(json.dumps(details)) > MAX_DETAILS:
        raise InvalidRequest(f"details may be at most {MAX_DETAILS} bytes of JSON")
    servers = _named_servers(details, default_port(kind) if kind else None)
    if len(servers) > MAX_SERVERS:
        raise InvalidRequest(f"details name {len(servers)} servers; at most {MAX_SERVERS} are allowed")
    for (host, port), path in servers.items():
        await rules.check_host(host, port, what=f"{path} ({host})")


def _record(row: asyncpg.Record, details: dict[str, Any], seen: set[int] | None) -> ConnectionRecord:
    """`seen`: the workspaces whose names the caller may read (None: all)."""
    names = [name for name, workspace_id in zip(row["workspace_names"], row["workspace_ids"], strict=True)
             if seen is None or workspace_id in seen]
    return ConnectionRecord(id=str(row["id"]), name=row["name"], type=row["type"], details=details,
                            created_at=row["created_at"].isoformat(), workspace_names=names)


class ConnectionService:
    """The connection handlers, over the registry's pool, secret box and membership lookups."""

    # names and ids in the same order, so that _record can drop the names of workspaces the caller is not in
    QUERY = ("SELECT c.id, c.name, c.type, c.details_encrypted, c.owner_id, c.created_at,"
             " COALESCE(array_agg(w.workspace_name ORDER BY w.workspace_name, w.workspace_id)"
             "   FILTER (WHERE w.id IS NOT NULL), '{}') AS workspace_names,"
             " COALESCE(array_agg(w.workspace_id ORDER BY w.workspace_name, w.workspace_id)"
             "   FILTER (WHERE w.id IS NOT NULL), '{}') AS workspace_ids"
             " FROM connections c LEFT JOIN connection_workspaces w ON w.connection_id = c.id")

    def __init__(self, pool: asyncpg.Pool, box, membership, my_workspaces, rules: OutboundRules,
                 events_committed: Callable[[], None]) -> None:
        # a change's events.connection.changed is written to the outbox in its transaction (`_changed`); called after
        # such a commit: the outbox (app.py) sends it now
        self.events_committed = events_committed
        self.pool = pool
        self.box = box
        self.membership = membership  # token -> MembershipLookup
        # token -> {workspace id: name} of the caller's workspaces (auth's workspaces/list: a run's token, its own)
        self.my_workspaces = my_workspaces
        self.rules = rules

    async def _seen(self, principal: Principal, token: str | None,
                    mine: dict[int, str] | None = None) -> set[int] | None:
        """The workspaces whose names the caller may read in `workspace_names`: the caller's own (a task run's
        token: its workspace only; `mine` when already read), or None (all) for an administrator's unscoped token,
        who may list any user's workspaces anyway (workspaces/list with a user_id)."""
        if principal.admin and scoped_workspace(principal) is None:
            return None
        return set(mine if mine is not None else await self.my_workspaces(token))

    async def _named(self, principal: Principal, token: str | None, name: str,
                     own_only: bool = False) -> tuple[asyncpg.Record, dict[int, str]]:
        """The connection the caller means by `name`, with the caller's workspaces (id -> name). Among what the
        caller sees (their own, and those attached to their workspaces; a task run's token: its workspace's), their
        own wins (unique per owner); else the one attached to their workspaces (unique per workspace, so a run's
        lookup is never ambiguous); two of those in different workspaces are 409 naming those workspaces (get it by
        id). `own_only`: the caller's own alone (what they may delete). Nobody else's connections are read, so an
        answer says nothing of other tenants' names."""
        require_user(principal)
        mine = await self.my_workspaces(token)
        owner = None if principal.scoped_task is not None else uuid.UUID(principal.user_id)
        rows = await self.pool.fetch(
            f"{self.QUERY} WHERE c.name = $1 AND (c.owner_id = $2 OR c.id IN (SELECT connection_id FROM"
            " connection_workspaces WHERE connection_name = $1 AND workspace_id = ANY($3::bigint[])))"
            " GROUP BY c.id ORDER BY c.created_at, c.id", name, owner, list(mine))
        own = [row for row in rows if owner is not None and row["owner_id"] == owner]
        if own_only:
            rows = own
        if own or len(rows) == 1:
            row = (own or rows)[0]
        elif not rows:
            raise NotFound("connection not found")
        else:
            where = sorted({mine[w] for row in rows for w in row["workspace_ids"] if w in mine})
            raise Conflict(f"{len(rows)} connections attached to your workspaces are named {name!r} (in "
                           f"{', '.join(repr(w) for w in where)}): get the one you mean by its id (connections/"
                           "get_by_id, the SDK's Client.connection_by_id; connections/list of a workspace shows the"
                           " ids)")
        await require_owner_or_member(self.membership(token), principal, str(row["owner_id"]),
                                      list(row["workspace_ids"]), "connection")
        return row, mine

    async def _visible(self, principal: Principal, token: str | None, where: str, value: Any) -> asyncpg.Record:
        require_user(principal)
        row = await self.pool.fetchrow(f"{self.QUERY} WHERE {where} GROUP BY c.id", value)
        if row is None:
            raise NotFound("connection not found")
        await require_owner_or_member(self.membership(token), principal, str(row["owner_id"]),
                                      list(row["workspace_ids"]), "connection")
        return row

    async def create(self, principal: Principal, cmd: CreateConnection) -> ConnectionId:
        require_user(principal)
        require_unscoped(principal, "create connections")
        if not cmd.name.strip() or len(cmd.name) > 200:
            raise InvalidRequest("name must be 1-200 characters")
        await _check_details(cmd.details, self.rules, cmd.type)
        connection_id = uuid.uuid4()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO connections (id, name, type, details_encrypted, owner_id) VALUES ($1, $2, $3, $4, $5)",
                    connection_id, cmd.name, cmd.type, self.box.seal(cmd.details), uuid.UUID(principal.user_id))
                await self._changed(conn, connection_id, "created")
        except asyncpg.UniqueViolationError:  # names are unique per owner: only the caller's own conflict
            raise Conflict(f"you already have a connection named {cmd.name!r}: choose another name, or delete that"
                           " one first (connections/delete)") from None
        self.events_committed()
        return ConnectionId(id=str(connection_id))

    async def _changed(self, conn: asyncpg.Connection, connection_id: uuid.UUID, action: str,
                       workspace_id: int | None = None) -> None:
        """The change's events.connection.changed, to the outbox in the change's transaction (`conn`)."""
        await store.add_event(conn, subjects.EVENT_CONNECTION_CHANGED, ConnectionChanged(
            connection_id=connection_id, action=action, workspace_id=workspace_id))

    async def add_to_workspace(self, principal: Principal, token: str | None,
                               cmd: AddConnectionToWorkspace) -> ConnectionId:
        await require_member(self.membership(token), principal, cmd.workspace_id)
        require_unscoped(principal, "attach connections to workspaces")
        row = await self._visible(principal, token, "c.id = $1", _uuid(cmd.connection_id))
        name = (await self.my_workspaces(token)).get(cmd.workspace_id, str(cmd.workspace_id))
        for attempt in (1, 2):
            try:
                link = await self._attach(row["id"], cmd.workspace_id, name)
                break
            except asyncpg.UniqueViolationError:
                # ON CONFLICT answers only for its own key: an attach of the same connection to the same workspace
                # committed while this one was inserting fails on the name's key, not the link's (7 in 1,200 of 4 at
                # once); tried again, this one finds that link and answers it. Twice: another connection of the name
                if attempt == 2:  # the caller is a member: it may list the workspace's connections
                    raise Conflict(f"workspace {name!r} already has a connection named {row['name']!r}: remove that"
                                   " one from it first (connections/remove_from_workspace), or attach a connection"
                                   " of another name") from None
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("connection not found (it was deleted meanwhile)") from None
        self.events_committed()
        return ConnectionId(id=str(link))

    async def _attach(self, connection_id: uuid.UUID, workspace_id: int, workspace_name: str) -> uuid.UUID:
        """The link of a connection to a workspace, made (or its workspace_name renewed), with its event; its id."""
        async with self.pool.acquire() as conn, conn.transaction():
            # the link's connection_name is set by the table's trigger (migration 005); a workspace holds one
            # connection of a name, so a lookup by name in it (a task run's) is never ambiguous
            link = await conn.fetchval(
                "INSERT INTO connection_workspaces (id, connection_id, workspace_id, workspace_name)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (connection_id, workspace_id) DO UPDATE SET workspace_name ="
                " EXCLUDED.workspace_name RETURNING id",
                uuid.uuid4(), connection_id, workspace_id, workspace_name)
            await self._changed(conn, connection_id, "attached", workspace_id)
        return link

    async def list(self, principal: Principal, token: str | None, workspace_id: int, limit: int | None = None,
                   cursor: str | None = None) -> Connections:
        """A workspace's connections, oldest first: all, or a page (shared/paging.py; the cursor: created_at, id)."""
        after = paging.after_key(cursor, "connections/list")
        await require_member(self.membership(token), principal, workspace_id)
        since, last = after or (None, None)
        rows = await self.pool.fetch(
            f"{self.QUERY} WHERE c.id IN (SELECT connection_id FROM connection_workspaces WHERE workspace_id = $1)"
            " AND ($2::timestamptz IS NULL OR (c.created_at, c.id) > ($2, $3::uuid))"
            " GROUP BY c.id ORDER BY c.created_at, c.id LIMIT $4", workspace_id, since, last,
            None if limit is None else limit + 1)
        seen = await self._seen(principal, token)
        records, next_cursor = await paging.page(
            rows, limit, lambda r: _record(r, _mask(self.box.open(r["details_encrypted"])), seen), paging.key_cursor)
        return Connections(connections=records, next_cursor=next_cursor)

    async def get(self, principal: Principal, token: str | None, *, name: str | None = None,
                  connection_id: str | None = None) -> ConnectionRecord:
        if name is None:
            try:
                by_id: uuid.UUID | None = uuid.UUID(str(connection_id))
            except ValueError:  # seed 001's get_by_id example sends the connection's name as `id`
                by_id, name = None, str(connection_id)
        if name is not None:
            row, mine = await self._named(principal, token, name)
            return _record(row, self.box.open(row["details_encrypted"]), await self._seen(principal, token, mine))
        row = await self._visible(principal, token, "c.id = $1", by_id)
        return _record(row, self.box.open(row["details_encrypted"]), await self._seen(principal, token))

    async def remove_from_workspace(self, principal: Principal, token: str | None, workspace_id: int,
                                    connection_id: str) -> NoContent:
        await require_member(self.membership(token), principal, workspace_id)
        require_unscoped(principal, "remove connections from workspaces")
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM connection_workspaces WHERE connection_id = $1 AND workspace_id = $2",
                _uuid(connection_id), workspace_id)
            if status.endswith(" 0"):
                raise NotFound("connection not found in that workspace")
            await self._changed(conn, _uuid(connection_id), "detached", workspace_id)
        self.events_committed()
        return NoContent()

    async def delete(self, principal: Principal, token: str | None, name: str) -> NoContent:
        require_unscoped(principal, "delete connections")
        # an administrator may delete what they see (their own first); anyone else only their own
        row, _ = await self._named(principal, token, name, own_only=not principal.admin)
        if str(row["owner_id"]) != principal.user_id and not principal.admin:
            raise NotFound("connection not found")
        if row["workspace_ids"]:
            raise Conflict(f"connection {name!r} is still attached to {len(row['workspace_ids'])} workspace(s);"
                           " remove it from them first")
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM connections WHERE id = $1", row["id"])
                await self._changed(conn, row["id"], "deleted")
        except asyncpg.ForeignKeyViolationError:
            raise Conflict(f"connection {name!r} was attached to a workspace meanwhile") from None
        self.events_committed()
        return NoContent()


def _uuid(value: str | None) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound("connection not found") from None
