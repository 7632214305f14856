"""An assay turned on again after a long pause (`assays/set_active` true) scores at most the newest `max_windows`
windows it owes; the older ones are not scored (decision of December 2026, docs/assays.md "Scheduling"). Before, it
went on from where it paused: a 1-second assay paused for a day scored its 86,400 windows, a log store read each,
in order before its first new one, while `assays/create` refuses a start with more than `max_windows` closed
windows. The pause is made by moving the paused assay's `next_run` a day back in its table (a day's wait)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import numpy as np
import pytest

from tests.integration.conftest import post, query
from tests.integration.test_assays import config, publish_rows
from tests.integration.test_logs import wait_rows

pytestmark = pytest.mark.integration


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_day_long_pause_resumes_with_the_newest_max_windows_windows(stack, alice):
    max_windows = stack.settings().assays.max_windows
    name = f"resume{uuid.uuid4().hex[:6]}"
    created = post(stack, "pipelines/create", alice.token, {"pipeline_id": name, "workspace_id": alice.workspace_id,
                                                            "definition": {}}).json()
    pipeline = {**created, "name": name}
    body = config(alice, pipeline, "paused", {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}}, None,
                  "1 seconds", active=False)
    answer = post(stack, "assays/create", alice.token, body)
    assert answer.status_code == 200, answer.text
    assay_id = answer.json()["assay_id"]
    # paused a day ago: its next window ended then
    [paused] = query(stack, "UPDATE assay_runner.assays SET next_run = next_run - interval '1 day' WHERE id = $1 "
                            "RETURNING next_run", assay_id)
    paused_at = paused["next_run"]
    now_ms = int(time.time() * 1000)
    # rows in the first window owed, in one owed more than max_windows windows ago, and in one of the newest
    old_ms, skipped_ms, kept_ms = int(paused_at.timestamp() * 1000) - 500, now_ms - (max_windows + 500) * 1000, \
        now_ms - (max_windows * 1000) // 2
    asyncio.run(publish_rows(stack, alice, name, np.linspace(0.0, 1.0, 30),
                             np.repeat(np.asarray([old_ms, skipped_ms, kept_ms], np.int64), 10)))
    wait_rows(stack, alice, name, 30)
    try:
        resumed = time.time()
        assert post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": True}).json() == \
            {"id": assay_id, "active": True}
        # the scheduler only moves next_run on: right after the answer it is at least the first of the newest
        # max_windows windows owed (it was a day back)
        listed = post(stack, "assays/list", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json()[0]
        assert moment(listed["next_run"]).timestamp() > resumed - max_windows, listed["next_run"]
        deadline = time.monotonic() + 120
        while not (results := post(stack, "assays/get_results", alice.token, {"assay_id": assay_id}).json()):
            assert time.monotonic() < deadline, "the newest windows were not scored"
            time.sleep(0.5)
        # windows are scored in order: the one with the kept rows scored, none before it (the older rows' windows
        # were skipped, not scored later)
        [kept] = results
        start = moment(kept["window_start"])
        assert start.timestamp() * 1000 <= kept_ms < start.timestamp() * 1000 + 1000
        assert kept["window_summary"]["count"] == 10
    finally:
        post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False})
