"""What a replica's inference log could not log is in its status (services/engine/replica.py Replica.status: `logs`,
LogBatcher.stats' counts, and a `details` line status/get_deployment and the UI show), not only in its log; and the
log batcher's two ERROR reports (records set aside, a failed flush) are throttled each on its own (logbatcher.py):
sharing one 10-s throttle, a steady run of either hid the other's."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

import services.engine.logbatcher as logbatcher
from services.engine.logbatcher import LogBatcher
from services.engine.replica import Replica, logs_detail
from shared.settings import LogSettings, Settings
from tests.unit.test_log_batcher import DEPLOYMENT, RefusingStream, malformed, record

SPEC = {"deployment": {"name": "d-1", "pipeline": "p", "pipeline_version": "v", "workspace_id": 1},
        "steps": [{"kind": "ModelInference", "models": [{"name": "m", "model_version": "1", "sha": "abc"}]}]}


def _replica(tmp_path) -> Replica:
    replica = Replica(SPEC, "r1", Settings(stack={"data_dir": tmp_path}))
    replica.steps = [SimpleNamespace(models=SPEC["steps"][0]["models"])]
    replica.batcher = LogBatcher(RefusingStream(), DEPLOYMENT, LogSettings(), 8 * 1024 * 1024)
    return replica


def test_a_replica_that_set_records_aside_says_so_in_its_status(tmp_path):
    replica = _replica(tmp_path)
    clean = replica.status()
    assert clean["logs"] == replica.batcher.stats() and clean["logs"]["lost_rows"] == 0
    assert "details" not in clean  # nothing lost: the deployer's empty details stay
    assert clean["model_statuses"]["models"] == [{"name": "m", "version": "1", "sha": "abc", "status": "Running"}]

    replica.batcher.set_aside([(malformed(3), ValueError("3 rows in, 2 out"))])
    status = json.loads(json.dumps(replica.status()))  # as the probe's answer travels
    assert {k: status["logs"][k] for k in ("lost_rows", "lost_records", "malformed_rows", "malformed_records")} == {
        "lost_rows": 3, "lost_records": 1, "malformed_rows": 3, "malformed_records": 1}
    [line] = status["details"]
    assert line.startswith("inference log: 3 rows not logged since this replica started: 1 malformed records (3 rows)"
                           " set aside"), line


def test_the_details_line_names_each_cause():
    counts = {"held_rows": 0, "held_bytes": 0, "lost_rows": 120, "lost_records": 5, "refused_publishes": 40,
              "malformed_rows": 3, "malformed_records": 1, "failed_flushes": 2, "failed_records": 0,
              "refused_segments": 0}
    line = logs_detail(counts)
    assert "120 rows not logged" in line and "1 malformed records (3 rows) set aside" in line
    assert "2 log flushes failed" in line and "4 records the log buffer could not take" in line
    assert "refused 40 publishes" in line
    assert logs_detail(counts | {"lost_rows": 0, "lost_records": 0, "malformed_rows": 0, "malformed_records": 0,
                                 "failed_flushes": 0}) is None


async def test_a_failed_flushs_records_are_not_called_records_the_buffer_could_not_take(tmp_path):
    """lost_records holds a failed flush's records too (failed_records, e6f0e66a): the details line took every lost
    record but the malformed ones for one the buffer refused, so a replica whose flush failed said its buffer was
    full. Two records lost in a failed flush, one refused by a full buffer: each said as what it is."""
    replica = _replica(tmp_path)
    replica.batcher = batcher = LogBatcher(RefusingStream(), DEPLOYMENT, LogSettings(engine_max_pending_rows=5),
                                           8 * 1024 * 1024)

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    batcher._publish = broken
    batcher.add(record(1.0, rows=3))
    batcher.add(record(2.0, rows=2))
    with pytest.raises(RuntimeError):
        await batcher.flush()
    batcher._flush_failed(RuntimeError("a bug"))  # as LogBatcher.run does with what flush raised
    batcher.add(record(3.0, rows=6))  # over engine_max_pending_rows: the buffer cannot take it
    status = json.loads(json.dumps(replica.status()))
    assert {k: status["logs"][k] for k in ("lost_rows", "lost_records", "failed_flushes", "failed_records")} == {
        "lost_rows": 11, "lost_records": 3, "failed_flushes": 1, "failed_records": 2}
    [line] = status["details"]
    assert "1 log flushes failed (2 records)" in line, line
    assert "1 records the log buffer could not take" in line, line  # the old arithmetic said 3


def test_set_aside_and_failed_flush_reports_are_throttled_each_on_its_own(monkeypatch, caplog):
    """A malformed record set aside every second and a flush failing now and then: each kind reported at most every
    REPORT_EVERY, whatever the other does. Before, set_aside's report at t=10 hid the failed flush at t=15, and
    every later one while records kept being set aside."""
    caplog.set_level(logging.ERROR)
    now = [0.0]
    monkeypatch.setattr(logbatcher.time, "monotonic", lambda: now[0])
    batcher = LogBatcher(RefusingStream(), DEPLOYMENT, LogSettings(), 8 * 1024 * 1024)
    flushes_at = {0.5, 15.5, 31.5}
    for tick in range(40):
        now[0] = float(tick)
        batcher.set_aside([(malformed(1), ValueError("bad"))])
        if tick + 0.5 in flushes_at:
            now[0] = tick + 0.5
            batcher._flush_failed(RuntimeError("boom"))
    failed = [r for r in caplog.records if "a log flush of" in r.getMessage()]
    aside = [r for r in caplog.records if "could not be made into a log batch" in r.getMessage()]
    assert len(failed) == 3  # every failed flush here is REPORT_EVERY or more after the one before
    assert len(aside) == 4  # t = 0, 10, 20, 30: the failed flushes' reports do not hold these back either


@pytest.mark.parametrize("field", ["lost_rows", "lost_records", "failed_flushes"])
def test_any_loss_gives_a_line(field):
    counts = dict.fromkeys(("held_rows", "held_bytes", "lost_rows", "lost_records", "refused_publishes",
                            "malformed_rows", "malformed_records", "failed_flushes", "failed_records",
                            "refused_segments"), 0)
    assert logs_detail(counts | {field: 1}) is not None
