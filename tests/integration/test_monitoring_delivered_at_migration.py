"""Migration 023 (services/monitoring/migrations/023_delivered_at.sql) on a database the monitoring service before it
used: `trainings.delivered_at` is backfilled for the deliveries that were recorded (done, deployed / shadow, no
claim, no reason) and for none other. A challenge's swap gives way only to a newer training whose delivery was
recorded (continuous._swap_overtaken, newest_delivered(recorded=True)), so a recorded delivery of before the upgrade
left unmarked would let an older decision's swap serve over it, and a delivery closed as not delivered (its outcome
kept, its claim cleared, a reason) or one still claimed marked delivered would close a decided swap with nothing
deployed.

Runs the migrations in the test's process on a schema of the test's own, migrated to 022 first."""

from __future__ import annotations

import json
import uuid

import pytest

from services.monitoring import continuous
from shared.db import load_migrations, migrate
from tests.integration import conftest
from tests.integration.conftest import service_schema
from tests.integration.test_continuous_swap_once import CHALLENGER, CHAMPION, DEPLOYMENT, MONITORING_MIGRATIONS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# name: (state, outcome, claimed, reason), as the code before 023 left such a training
TRAININGS = {
    "recorded_auto": ("done", "deployed", False, None),  # _delivered: claim cleared, reason kept (none)
    "recorded_shadow": ("done", "shadow", False, None),
    # closed unrecorded: a newer training delivered meanwhile (_still_due, _delivery_refused, _deliver_again), or
    # resume_deliveries' superseded sweep
    "closed_during_delivery": ("done", "deployed", False, "a newer training of the deployment was delivered during"
                               " its delivery: not delivered"),
    "closed_by_the_resumer": ("done", "shadow", False, "its delivery did not finish (the service stopped, or its"
                              " deploy went unanswered) and a newer training of the deployment was delivered since:"
                              " not delivered again"),
    "claimed": ("done", "deployed", True, None),  # under way (or unanswered): recorded later, by _delivered
    "failed": ("done", "failed", False, "DEPLOY_AUTO failed: the deployer is not reachable"),
    "manual": ("done", "pending", False, None),  # DEPLOY_MANUAL: nothing delivered
    "running": ("running", None, False, None),
}
RECORDED = {"recorded_auto", "recorded_shadow"}


async def test_delivered_at_is_backfilled_for_recorded_deliveries_only(stack, monkeypatch):
    migrations = load_migrations(MONITORING_MIGRATIONS)
    assert [(m.version, m.name) for m in migrations if m.version == 23] == [(23, "delivered_at")]
    later = [m.version for m in migrations if m.version >= 23]  # 023 and every migration that came after it
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 23])
    async with service_schema(stack, "monitoring_delivered_at", MONITORING_MIGRATIONS) as pool:
        ids = {}
        for age, (name, (state, outcome, claimed, reason)) in enumerate(TRAININGS.items()):
            ids[name] = await pool.fetchval(
                "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reason, reviews, task_id,"
                " model_version, model_status, created_at, updated_at, delivering_since) VALUES ($1, $2, 1, $3, $4,"
                " $5, 1, $6, $7, 'ready', now() - make_interval(secs => $8), now() - make_interval(secs => $8),"
                " CASE WHEN $9 THEN now() END) RETURNING id", uuid.uuid4(), DEPLOYMENT, state, outcome, reason,
                uuid.uuid4(), json.dumps(CHALLENGER), 1000.0 - age * 100, claimed)
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert await migrate(stack.settings().postgres, schema, migrations) == later  # the upgrade
        assert await migrate(stack.settings().postgres, schema, migrations) == []  # applied once
        rows = {row["id"]: row for row in await pool.fetch("SELECT id, delivered_at, updated_at FROM trainings")}
        marked = {name for name, training_id in ids.items() if rows[training_id]["delivered_at"] is not None}
        assert marked == RECORDED
        for name in RECORDED:
            assert rows[ids[name]]["delivered_at"] == rows[ids[name]]["updated_at"]

        # a swap of a challenge older than all of them gives way to the newest recorded delivery (recorded_shadow),
        # not to the newer ones closed unrecorded or still claimed
        challenge = {"id": uuid.uuid4(), "deployment_id": DEPLOYMENT, "training_id": None, "champion": CHAMPION,
                     "started_at": await pool.fetchval("SELECT now() - interval '1 hour'")}
        async with pool.acquire() as conn:
            newest = await continuous._swap_overtaken(conn, challenge)
        assert newest is not None and newest["id"] == ids["recorded_shadow"]
