"""Two log-store processes (a rolling update runs the new one beside the old): batches held for a late deployment
announcement are stored as soon as it lands, whichever process holds them. The announcements consumer gives the
announcement to one process; the other learns it from the `deployments` table (`Ingestor.look_up_held`, at most a
second later). Before, only the process that read the announcement asked its held batches back; the other's came
back at their nak's delay (docs/logs.md)."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats as nats_client
import pytest

from shared.logrecords import log_header
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_log_owners import STORED_WITHIN, WAITING, _create_once, _hold, _send, _table
from tests.integration.test_logs import _values, all_rows, wait_rows
from tests.stack import service_process, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
BATCHES = 12


def test_batches_held_by_either_of_two_log_stores_are_stored_as_soon_as_the_announcement_lands(stack, alice,
                                                                                                tmp_path):
    pipeline = f"twostores-{uuid.uuid4().hex[:6]}"
    _create_once(stack, alice, pipeline)
    deployment = fake_deployment(alice.workspace_id, pipeline)
    now = int(time.time() * 1000)
    env = {k: v for k, v in stack.env.items() if k.startswith("RAILYARD_LOGS__")}
    second_log = tmp_path / "log_store.log"
    first_log = stack.data_dir / "logs" / "log_store.log"
    with service_process(stack, "log_store", second_log, env) as second:
        wait_serving(second, second_log, "the second log store")

        async def publish() -> None:
            nc = await nats_client.connect(stack.settings().nats.url)
            try:
                header = log_header(alice.workspace_id, pipeline, deployment, "v")
                for i in range(BATCHES):  # one at a time: each goes to whichever process is pulling
                    await _send(nc, deployment, header, _table([float(i)], now + i))
                    await asyncio.sleep(0.05)
            finally:
                await nc.close()

        started = time.monotonic()
        asyncio.run(publish())
        # the first batches back four times (to either process), their fifth return over 6 s after the announcement
        # (_hold: 21r from the first send); on code that left the other process's batches to their nak's delay, not
        # all twelve are stored within STORED_WITHIN
        _hold(stack, started)
        assert all_rows(stack, alice, pipeline) == []
        # both processes hold some (whichever reads the announcement, the other holds batches of it)
        assert deployment in "".join(line for line in second_log.read_text().splitlines() if WAITING in line)
        assert deployment in "".join(line for line in first_log.read_text(errors="replace").splitlines()
                                     if WAITING in line)

        async def announce_it() -> None:
            nc = await nats_client.connect(stack.settings().nats.url)
            try:
                await announce(nc, alice.workspace_id, deployment)
            finally:
                await nc.close()

        announced = time.monotonic()
        asyncio.run(announce_it())
        rows = wait_rows(stack, alice, pipeline, BATCHES, timeout=30, order="Asc")
        took = time.monotonic() - announced
        assert took < STORED_WITHIN, f"the held batches were stored {took:.1f} s after their deployment's announcement"
        assert _values(rows) == [float(i) for i in range(BATCHES)]
        time.sleep(1.0)  # a second copy (a delayed return as well) would show by now
        assert _values(all_rows(stack, alice, pipeline, order="Asc")) == [float(i) for i in range(BATCHES)]
