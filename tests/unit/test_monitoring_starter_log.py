"""What the training starter says when a training cannot be started (services/monitoring/continuous.py
start_training, TrainingStarter.sweep): a claimed training is asked for again RESUME_START after its claim (resume,
with its task id), one whose claim itself failed is started by a later sweep. Before, the sweep said "asked again in
60 s" of both."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

from services.monitoring import continuous
from services.monitoring.continuous import ContinuousDeps
from tests.unit.test_monitoring_continuous import _StarterPool


class _ClaimPool:
    """A pool stand-in whose claim (start_training's conditional UPDATE) claims the training."""

    def __init__(self, training: dict) -> None:
        self.training = training

    def acquire(self):
        pool = self

        class _Conn:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            def transaction(self):
                return self

            async def fetchrow(self, sql, *args):
                assert sql.startswith("UPDATE trainings SET run_claimed_at = now()")
                return pool.training

        return _Conn()


async def test_a_claimed_training_that_cannot_be_started_is_asked_for_again_later(monkeypatch, caplog):
    training = {"id": uuid.uuid4(), "deployment_id": 3, "run_task_id": uuid.uuid4()}

    async def start_claimed(deps, claimed):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(continuous, "_start_claimed", start_claimed)
    deps = ContinuousDeps(base=SimpleNamespace(pool=_ClaimPool(training)), verify=None,
                          events_committed=lambda: None, max_task_timeout=3600)
    with caplog.at_level(logging.ERROR, logger="railyard.monitoring.continuous"):
        assert await continuous.start_training(deps, training["id"]) is True  # claimed: not raised to the sweep
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert said == [f"continuous training {training['id']} of deployment 3 could not be started; asked again in"
                    f" {continuous.RESUME_START:.0f} s"]


async def test_a_training_whose_claim_failed_is_started_at_the_next_sweep(monkeypatch, caplog):
    rows = [{"id": uuid.uuid4(), "deployment_id": 1, "overdue": False}]

    async def start_training(deps, training_id, late=False):
        raise ConnectionError("the claim's UPDATE failed")

    monkeypatch.setattr(continuous, "start_training", start_training)
    deps = ContinuousDeps(base=SimpleNamespace(pool=_StarterPool(rows)), verify=None, events_committed=lambda: None,
                          max_task_timeout=3600)
    with caplog.at_level(logging.ERROR, logger="railyard.monitoring.continuous"):
        await continuous.TrainingStarter(deps).sweep()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and "not claimed" in said[0] and "next sweep" in said[0], said
    assert "asked again" not in said[0]
