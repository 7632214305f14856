"""An assay runner pass works with `postgres.pool_max` 1: it reads the assay again and commits its results on the
connection that holds the assay's advisory lock (store.claim). Before, the pass held that connection while taking
another from the pool for each, and with a pool of one waited for ever (the scheduler stuck on its first due assay,
no assay scored again).

The assay runner's own run_due (the scheduler's pass) on a schema of the test's own (its migrations), with a pool of
at most one connection, and the log store's field read answered in the test."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from services.assay_runner import handlers, store
from shared.db import create_pool
from shared.settings import AssaySettings
from tests.integration.conftest import service_schema
from tests.unit.test_assay_schedule import _row

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ASSAY_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "assay_runner" / "migrations"


def test_a_pass_scores_and_commits_with_a_pool_of_one_connection(stack):
    async def scenario() -> None:
        async with service_schema(stack, "assaypool", ASSAY_MIGRATIONS) as setup:
            schema = await setup.fetchval("SELECT current_schema()")
            now = datetime.now(UTC)
            row = _row(next_run=now - timedelta(seconds=5))
            assay_id = await store.create(
                setup, 1, 1, "p", "pool of one", True, "created", json.loads(row["config"]), None, 100.0, 1.0, 1.0,
                None, row["next_run"], json.loads(row["baseline_summary"]), None)
            one = await create_pool(stack.settings().postgres.model_copy(update={"pool_max": 1}), schema)
            try:
                async def read_field(*args) -> np.ndarray:
                    return np.asarray([1.0, 2.0])

                deps = handlers.Deps(pool=one, settings=AssaySettings(close_delay=1.0), membership=None,
                                     read_field=read_field, pipeline_of=None, log_page=None)
                stored = await asyncio.wait_for(handlers.run_due(deps), 30)  # it waited for ever
                assert stored >= 4  # the windows due since next_run, committed
                moved = await setup.fetchrow("SELECT next_run, (SELECT count(*) FROM results) AS n FROM assays"
                                             " WHERE id = $1", assay_id)
                assert moved["n"] == stored and moved["next_run"] > row["next_run"]
            finally:
                await one.close()

    asyncio.run(scenario())
