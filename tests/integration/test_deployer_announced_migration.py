"""Migration 006 (services/deployer/migrations/006_deployments_announced.sql) on a database the earlier deployer
used: a deployment serving before the upgrade, whose events.pipeline.deployed was written (active, owing nothing),
is `announced`, so its undeploy after the upgrade still writes events.pipeline.undeployed (store.deactivate writes
it only for a deployment lineage was told of). Rows added with the column's default alone (false) would lose that
undeployed, and lineage would show every deployment of before the upgrade deployed for good. A row still owing its
deployed event is not announced (nothing tells it was), nor is an inactive one (its undeployed was written).

Runs the deployer's store in the test's process on a schema of the test's own, migrated to 005 first."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.deployer import store
from shared import subjects
from shared.db import load_migrations, migrate
from shared.messages.deployer import PipelineUndeployed
from tests.integration import conftest
from tests.integration.conftest import service_schema
from tests.integration.test_deployer_list_queries import WORKSPACE, make_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MIGRATIONS = Path("services/deployer/migrations")


async def test_deployments_of_before_migration_006_are_announced_as_their_events_were_written(stack, monkeypatch):
    migrations = load_migrations(MIGRATIONS)
    assert [m.name for m in migrations if m.version == 6] == ["deployments_announced"]
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 6])
    async with service_schema(stack, "deployerannounced", MIGRATIONS) as pool:
        for name, active in (("served", True), ("owing", True), ("undeployed", False)):
            await make_pipeline(pool, name, 1, deployed=1, active=active)  # activated: owing its deployed event
        # as the deployer before 006 left them: "served" had its deployed event written, "undeployed" its
        # undeployed (store.deactivate cleared the mark); "owing" still owes it (its restore failed, say)
        await pool.execute("UPDATE deployments SET deployed_pending = false WHERE deploy_id <> 'owing'")
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert await migrate(stack.settings().postgres, schema, migrations) == [6]  # the upgrade
        rows = {row["deploy_id"]: row for row in await pool.fetch(
            "SELECT d.id, d.deploy_id, d.pipeline_id, d.announced FROM deployments d")}
        assert {name: row["announced"] for name, row in rows.items()} == {
            "served": True, "owing": False, "undeployed": False}
        for name in ("served", "owing"):
            row = rows[name]
            assert await store.deactivate(pool, row["id"], PipelineUndeployed(
                deployment_id=row["id"], name=f"{name}-{row['id']}", pipeline_id=row["pipeline_id"],
                workspace_id=WORKSPACE))
        outbox = await pool.fetch("SELECT subject, payload->>'deployment_id' AS deployment_id FROM outbox ORDER BY id")
        assert [(r["subject"], int(r["deployment_id"])) for r in outbox] == [
            (subjects.EVENT_PIPELINE_UNDEPLOYED, rows["served"]["id"])]
