"""The log store's maintenance timer runs passes by itself: rows past their retention go with nobody calling the
maintenance subject. The test stack's log store waits a day between passes (tests/stack.py: a pass at a moment of
its own choosing would spoil the tests that run one themselves), so a second log-store process with a one-second
interval joins the stack for this test only and is stopped at its end (files run one at a time on a worker)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

import nats as nats_client
import pytest

from tests.integration.conftest import post
from tests.integration.test_logs import _create, _publish, _values, all_rows, wait_rows
from tests.stack import service_process

pytestmark = pytest.mark.integration
INTERVAL = 1.0


@contextlib.contextmanager
def _timed_log_store(stack, tmp_path):
    """A second log-store process on the stack, as the supervisor starts one (its own bus identity and database
    role), with maintenance every INTERVAL seconds."""
    env = {k: v for k, v in stack.env.items() if k.startswith("RAILYARD_LOGS__")}
    env["RAILYARD_LOGS__MAINTENANCE_INTERVAL"] = str(INTERVAL)
    log = tmp_path / "log_store.log"
    with service_process(stack, "log_store", log, env) as process:
        yield process, log


async def _old_and_new_rows(stack, alice) -> None:
    """Pipeline "timed" keeping logs 1 day: two rows 10 days old in a segment of their own, one row of now."""
    await asyncio.to_thread(_create, stack, alice, "timed")
    body = {"pipeline_id": "timed", "workspace_id": alice.workspace_id, "retention_days": 1}
    response = await asyncio.to_thread(post, stack, "pipelines/set_log_retention", alice.token, body)
    assert response.status_code == 200, response.text
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        old = int((datetime.now(UTC) - timedelta(days=10)).timestamp() * 1000)
        await _publish(nc, "timed", alice.workspace_id, [1.0, 2.0], old)
        await asyncio.to_thread(wait_rows, stack, alice, "timed", 2)  # stored: the new row cannot join their segment
        await _publish(nc, "timed", alice.workspace_id, [3.0], int(time.time() * 1000))
        rows = await asyncio.to_thread(wait_rows, stack, alice, "timed", 3, order="Asc")
        assert _values(rows) == [1.0, 2.0, 3.0]  # the stack's own log store has not expired them
    finally:
        await nc.close()


async def test_maintenance_timer_expires_old_rows_unasked(stack, alice, tmp_path):
    await _old_and_new_rows(stack, alice)
    with _timed_log_store(stack, tmp_path) as (process, log):
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the log store exited with {process.returncode}:\n{log.read_text()}"
            rows = await asyncio.to_thread(all_rows, stack, alice, "timed", order="Asc", restarting_ok=True)
            # the rows go when the pass's expiry commits; its report is logged when the whole pass (compaction,
            # purge) is done: wait for both, or stopping the process in between loses the line
            if rows is not None and _values(rows) == [3.0] and "log maintenance:" in log.read_text():
                break
            assert time.monotonic() < deadline, f"no timed pass expired the old rows: {rows and _values(rows)}\n" \
                                                f"{log.read_text()[-3000:]}"
            await asyncio.sleep(0.2)
    assert "log maintenance:" in log.read_text()  # the timer's own report of the pass that expired them
