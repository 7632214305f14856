"""What the training starter says when a training cannot be started (services/monitoring/continuous.py
start_training, TrainingStarter.sweep): a claimed training is asked for again RESUME_START after its claim (resume,
with its task id), one whose claim itself failed is started by a later sweep. Before, the sweep said "asked again in
60 s" of both."""

from __future__ import annotations

import logging
import uuid

from services.monitoring import continuous
from tests.unit.continuous_world import ClaimPool, continuous_deps, sweep_starting


async def test_a_claimed_training_that_cannot_be_started_is_asked_for_again_later(monkeypatch, caplog):
    training = {"id": uuid.uuid4(), "deployment_id": 3, "run_task_id": uuid.uuid4()}

    async def start_claimed(deps, claimed):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(continuous, "_start_claimed", start_claimed)
    deps = continuous_deps(pool=ClaimPool(training))
    with caplog.at_level(logging.ERROR, logger="railyard.monitoring.continuous"):
        assert await continuous.start_training(deps, training["id"]) is True  # claimed: not raised to the sweep
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert said == [f"continuous training {training['id']} of deployment 3 could not be started; asked again in"
                    f" {continuous.RESUME_START:.0f} s"]


async def test_a_training_whose_claim_failed_is_started_at_the_next_sweep(monkeypatch, caplog):
    rows = [{"id": uuid.uuid4(), "deployment_id": 1, "overdue": False}]

    async def start_training(deps, training_id, late=False):
        raise ConnectionError("the claim's UPDATE failed")

    with caplog.at_level(logging.ERROR, logger="railyard.monitoring.continuous"):
        await sweep_starting(monkeypatch, rows, start_training)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and "not claimed" in said[0] and "next sweep" in said[0], said
    assert "asked again" not in said[0]
