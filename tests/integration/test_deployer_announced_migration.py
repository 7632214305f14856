"""Migrations 006 and 007 (services/deployer/migrations) on a database the deployer before them used: a deployment
serving before the upgrade, whose events.pipeline.deployed was written (active, owing nothing), is `announced`, so
its undeploy after the upgrade still writes events.pipeline.undeployed (store.deactivate writes it only for a
deployment lineage was told of). Rows added with the column's default alone (false) would lose that undeployed, and
lineage would show every deployment of before the upgrade deployed for good. A row still owing its deployed event is
not announced (it was not told), nor is an inactive one (its undeployed was written).

The row owing its event is `served` (007): the deployer before 006 wrote the owed event at the undeploy of every such
row, and nothing tells one that served (a deploy answered 200 whose event's write failed) from one whose deployer
died while it loaded. With 006 alone, its undeploy after an upgrade whose restore failed wrote no deployed event (its
replicas did not serve at that moment) and no undeployed (not announced): a deploy acknowledged and never told.

Runs the deployer's store in the test's process on a schema of the test's own, migrated to 005 first."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.deployer import handlers, store
from shared import subjects
from shared.db import load_migrations, migrate
from shared.messages.deployer import PipelineUndeployed
from tests.integration import conftest
from tests.integration.conftest import service_schema
from tests.integration.test_deployer_list_queries import WORKSPACE, make_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MIGRATIONS = Path("services/deployer/migrations")


async def test_deployments_of_before_migration_006_are_announced_and_owed_as_their_events_were_written(
        stack, monkeypatch):
    migrations = load_migrations(MIGRATIONS)
    later = [(m.version, m.name) for m in migrations if m.version >= 6]  # 006/007 under test, then what came after
    assert later[:2] == [(6, "deployments_announced"), (7, "deployments_served")]
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 6])
    async with service_schema(stack, "deployerannounced", MIGRATIONS) as pool:
        for name, active in (("served", True), ("owing", True), ("undeployed", False)):
            await make_pipeline(pool, name, 1, deployed=1, active=active)  # activated: owing its deployed event
        # as the deployer before 006 left them: "served" had its deployed event written, "undeployed" its
        # undeployed (store.deactivate cleared the mark); "owing" still owes it (its write failed, say)
        await pool.execute("UPDATE deployments SET deployed_pending = false WHERE deploy_id <> 'owing'")
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert await migrate(stack.settings().postgres, schema, migrations) == [v for v, _ in later]  # the upgrade
        rows = {row["deploy_id"]: row for row in await pool.fetch(
            "SELECT d.*, p.workspace_id, v.version AS pipeline_version FROM deployments d"
            " JOIN pipelines p ON p.id = d.pipeline_id JOIN pipeline_versions v ON v.id = d.pipeline_version_id")}
        assert {name: (row["announced"], row["served"]) for name, row in rows.items()} == {
            "served": (True, False), "owing": (False, True), "undeployed": (False, False)}
        for name in ("served", "owing"):  # undeployed after the upgrade, nothing serving (the restore failed)
            row = rows[name]
            assert await store.deactivate(pool, row["id"], PipelineUndeployed(
                deployment_id=row["id"], name=f"{name}-{row['id']}", pipeline_id=row["pipeline_id"],
                workspace_id=WORKSPACE), handlers._deployed_event_of(row), serving=False)
        outbox = await pool.fetch("SELECT subject, payload->>'deployment_id' AS deployment_id FROM outbox ORDER BY id")
        assert [(r["subject"], int(r["deployment_id"])) for r in outbox] == [
            (subjects.EVENT_PIPELINE_UNDEPLOYED, rows["served"]["id"]),
            (subjects.EVENT_PIPELINE_DEPLOYED, rows["owing"]["id"]),
            (subjects.EVENT_PIPELINE_UNDEPLOYED, rows["owing"]["id"])]
