"""Fixtures for API tests: the admin, fresh users with their own workspaces, raw HTTP calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.client import RailyardAPIError, RailyardClient
from shared.db import create_pool, load_migrations, migrate

PASSWORD = "Snugglebunnies-1"


@dataclass
class Account:
    """A user of the test stack, logged in."""

    email: str
    user_id: str
    client: RailyardClient
    workspace_id: int

    @property
    def token(self) -> str:
        return self.client.token


def client_for(stack) -> RailyardClient:
    secrets = stack.secrets()
    return RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])


@pytest.fixture(scope="session")
def admin(stack) -> RailyardClient:
    client = client_for(stack)
    secrets = stack.secrets()
    client.login(secrets["admin_username"], secrets["admin_password"])
    yield client
    client.close()


def login(client: RailyardClient, username: str, password: str, tries: int = 10) -> None:
    """Sign in as a well-behaved client does: after a 429 from the token endpoint's per-address limit (10 a
    second after a burst of 50; every test signs in from 127.0.0.1, usually two accounts a test, and all the files
    a worker runs share its stack's limit), wait and ask again. A 429 here is the suite's pace, not a product fault:
    test_isolation.py, when it made a new pair of accounts for each parametrised case, was refused at its 64th
    test's sign-in in 2 of 3 runs (134 token requests, inference clients' included, within 16 s; 6 of the 50 left
    at best in a run that passed). Its cases share one pair since ee47093: 41 token requests for the file."""
    for attempt in range(tries):
        try:
            client.login(username, password)
            return
        except RailyardAPIError as exc:
            if exc.status != 429 or attempt == tries - 1:
                raise
            time.sleep(1.0)  # the limit's Retry-After is >= 1 s; the client's error does not carry it


def make_account(stack, admin: RailyardClient, prefix: str = "user") -> Account:
    email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
    invited = admin.post("users/invite", {"email": email, "password": PASSWORD})
    client = client_for(stack)
    login(client, email, PASSWORD)
    name = f"ws-{uuid.uuid4().hex[:12]}"
    workspace_id = client.post("workspaces/create", {"workspace_name": name})["workspace_id"]
    return Account(email=email, user_id=invited["user_id"], client=client, workspace_id=workspace_id)


TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"


def inference_client(account: Account, name: str | None = None) -> tuple[str, str]:
    """A new inference client of the account's workspace: (client id, secret)."""
    created = account.client.post("workspaces/create_inference_client", {
        "workspace_id": account.workspace_id, "name": name or f"test-{uuid.uuid4().hex[:8]}"})
    return created["client_id"], created["client_secret"]


def client_credentials(stack, client_id: str, secret: str) -> httpx.Response:
    """A client_credentials token request with HTTP Basic client authentication."""
    return httpx.post(f"{stack.base_url}{TOKEN_PATH}", data={"grant_type": "client_credentials"},
                      auth=(client_id, secret), timeout=30)


def inference_token(stack, account: Account) -> str:
    """An inference token for the account's workspace, from a new inference client."""
    response = client_credentials(stack, *inference_client(account))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def sdk_client(stack, account: Account):
    """The Python SDK's client signed in as `account`, in its workspace (the CLI's client credentials)."""
    from railyard_client import Client

    secrets = stack.secrets()
    return Client(stack.base_url, username=account.email, password=PASSWORD, client_id=secrets["client_id"],
                  client_secret=secrets["client_secret"], workspace=account.workspace_id)


def cli_env(stack, account: Account, monkeypatch, config_dir: Path) -> None:
    """The `railyard` command's environment (RAILYARD_CLIENT_*) signed in as `account`, in its workspace, with the
    CLI's client credentials and a config directory of its own (`config_dir`)."""
    secrets = stack.secrets()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_dir))
    for name, value in (("URL", stack.base_url), ("USERNAME", account.email), ("PASSWORD", PASSWORD),
                        ("ID", secrets["client_id"]), ("SECRET", secrets["client_secret"]),
                        ("WORKSPACE", str(account.workspace_id))):
        monkeypatch.setenv(f"RAILYARD_CLIENT_{name}", value)


def requests_to(client, *routes: str) -> list[tuple[str, dict]]:
    """Records each request an SDK client sends to one of `routes` ("models/list", ...): (route, JSON body)."""
    sent: list[tuple[str, dict]] = []

    def record(request) -> None:
        route = request.url.path.removeprefix("/v1/api/")
        if route in routes:
            sent.append((route, json.loads(request.content)))

    client._session.http.event_hooks["request"].append(record)
    return sent


def undeploy_all(stack, account: Account) -> None:
    """Undeploy what a test left deployed: idle engine replicas of finished tests only load the machine."""
    listed = post(stack, "pipelines/list", account.token, {"workspace_id": account.workspace_id})
    for pipeline in listed.json().get("pipelines", []) if listed.status_code == 200 else []:
        if pipeline.get("deployment"):
            post(stack, "pipelines/undeploy", account.token,
                 {"pipeline_id": pipeline["id"], "deployment_id": pipeline["deployment"]["id"]})


@pytest.fixture(scope="session")
def ui_chromium():
    """The test process's headless Chromium, which each UI module takes fresh (tests/integration/ui_browser.py)."""
    from tests.integration import ui_browser

    yield from ui_browser.chromium()


@pytest.fixture
def alice(stack, admin) -> Account:
    account = make_account(stack, admin, "alice")
    yield account
    undeploy_all(stack, account)
    account.client.close()  # its HTTP connections, else left to the garbage collector (ResourceWarning)


@pytest.fixture
def bob(stack, admin) -> Account:
    account = make_account(stack, admin, "bob")
    yield account
    undeploy_all(stack, account)
    account.client.close()  # its HTTP connections, else left to the garbage collector (ResourceWarning)


def post(stack, path: str, token: str | None, body=None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{stack.api}/{path.lstrip('/')}", json=body if body is not None else {}, headers=headers,
                      timeout=30, **kwargs)


def query(stack, sql: str, *args) -> list[asyncpg.Record]:
    """The rows `sql` answers on the stack's PostgreSQL (its DSN reaches every service's schema: name it, e.g.
    `monitoring.predictions`), over a connection of its own; for synchronous tests reading what a service stored."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def rows_of(stack, deployment_id: int) -> int:
    """How many predictions monitoring has stored for a deployment (`monitoring.predictions`)."""
    return query(stack, "SELECT count(*) AS n FROM monitoring.predictions WHERE deployment_id = $1",
                 deployment_id)[0]["n"]


@contextlib.asynccontextmanager
async def service_schema(stack, prefix: str, migrations: Path) -> AsyncIterator[asyncpg.Pool]:
    """A schema of the test's own (`prefix`_<random>) on the stack's PostgreSQL, made by a service's `migrations`,
    and a pool on it; the schema is dropped afterwards. For a test that runs a service's code in its own process
    against tables no other test or service process uses."""
    settings = stack.settings().postgres
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await migrate(settings, schema, load_migrations(migrations))
    pool = await create_pool(settings, schema)
    try:
        yield pool
    finally:
        await pool.close()
        conn = await asyncpg.connect(settings.dsn)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


async def more_members(stack, account, count: int) -> list[str]:
    """`count` new users (rows: they never sign in) added to the account's workspace as collaborators; the ids of all
    its members in the list's order (the owner first)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        ids = await conn.fetch(
            "INSERT INTO auth.users (id, username, email, password_hash) SELECT gen_random_uuid(), $1 || g,"
            " $1 || g || '@example.com', 'x' FROM generate_series(1, $2) g RETURNING id",
            f"member{uuid.uuid4().hex[:8]}-", count)
        await conn.execute("INSERT INTO auth.workspace_members (workspace_id, user_id, user_type)"
                           " SELECT $1, unnest($2::uuid[]), 'COLLABORATOR'", account.workspace_id,
                           [r["id"] for r in ids])
        rows = await conn.fetch("SELECT user_id FROM auth.workspace_members WHERE workspace_id = $1"
                                " ORDER BY added_at, user_id", account.workspace_id)
    finally:
        await conn.close()
    return [str(r["user_id"]) for r in rows]
