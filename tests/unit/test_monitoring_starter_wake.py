"""The training starter's sweep fails the trainings claimed more than NO_MODEL_GRACE ago whose run was never recorded,
with their events.monitoring.training_finished in the same transaction (e4f659d), and wakes monitoring's outbox once
that transaction has committed (services/monitoring/continuous.py TrainingStarter.sweep). Before, it woke the outbox
inside the transaction: the outbox's round could read the table before the commit, find nothing and wait its IDLE
round (60 s) before sending the training_finished."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import SimpleNamespace
from typing import Any

from services.monitoring.continuous import ContinuousDeps, TrainingStarter


class Conn:
    """A connection whose transaction's commit, and the outbox's wake-up, are told in `steps`."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield
        self.steps.append("commit")

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        # one claimed long ago, its run never recorded (_fail_unstarted); no succeeded run waits for its model
        # version (_fail_modelless, the same sweep since e53d6b9)
        if query.startswith("UPDATE trainings SET state = 'failed'") and "stopped before the training run" in query:
            return [{"id": uuid.uuid4(), "deployment_id": 7, "workspace_id": 1, "state": "failed",
                     "outcome": "failed", "run_id": None, "model_version": None,
                     "reason": "the service stopped before the training run was created"}]
        return []  # no training waits to start, nor to be asked for again (resume) or delivered again

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return None  # the trigger checked again after the failure (recheck_after): continuous training set up no more

    async def fetchval(self, query: str, *args: Any) -> Any:
        return None  # the look for the next training due (TrainingStarter.next_due): none

    async def execute(self, query: str, *args: Any) -> str:
        if "INSERT INTO outbox" in query:
            self.steps.append("training_finished written")
        return "OK"


class Pool(Conn):
    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self


def test_the_sweep_wakes_the_outbox_after_its_failures_commit():
    steps: list[str] = []
    pool = Pool(steps)
    deps = ContinuousDeps(base=SimpleNamespace(pool=pool), verify=None,
                          events_committed=lambda: steps.append("outbox woken"), max_task_timeout=3600)
    asyncio.run(TrainingStarter(deps).sweep())
    # then the trigger's check after the training ended (recheck_after), its own transaction
    assert steps == ["training_finished written", "commit", "outbox woken", "commit"]
