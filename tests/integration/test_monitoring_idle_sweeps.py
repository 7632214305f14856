"""Monitoring's background sweeps at rest, on the real PostgreSQL (services/monitoring/sweeps.py; docs/performance.md
item 61, docs/monitoring.md "At rest"): a sweep's first look, just after the service's start (what a stopped process
left), closes the connection it opened, as the looks nobody woke after a long wait do; the training starter with
nothing due waits IDLE_WAIT, and a trigger committed by its process wakes it at once; a claimed training's resume
is what it waits for next.

Runs the service's sweepers on a monitoring schema of this test's (its migrations) on the stack's PostgreSQL, as
test_continuous_swap_once does."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest

from services.monitoring import continuous, feedback, reference, sweeps
from shared.background import Sweeper
from shared.messages.assays import AssayThresholdCrossed
from tests.integration.conftest import service_schema
from tests.integration.test_continuous_swap_once import DEPLOYMENT, MONITORING_MIGRATIONS, process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def monitoring_schema(stack):
    async with service_schema(stack, "monitoring_idle", MONITORING_MIGRATIONS) as pool:
        yield pool


def sweeper_of(kind: str, pool) -> Sweeper:
    if kind == "starter":
        return continuous.TrainingStarter(process(pool))
    if kind == "resumer":
        return continuous.DeliveryResumer(process(pool))
    deps = feedback.FeedbackDeps(monitoring=SimpleNamespace(pool=pool, broker=None, timeout=5.0), objects=None)
    return feedback.Exporter(deps) if kind == "exporter" else reference.ReferenceComputer(deps)


class Looks:
    """The waits a started sweeper chose after each look (its next_wait, called once the look's pass ended) and the
    pool's open connections at that moment (`sizes`, with a pool): read there, not once the test runs again, when the
    next look (0.2 s later with `every` 0.2, not a quiet one) may have opened one on a loaded machine."""

    def __init__(self, sweeper: Sweeper, pool=None) -> None:
        self.waits: list[float] = []
        self.sizes: list[int] = []
        self.looked = asyncio.Event()
        chosen = sweeper.next_wait

        def next_wait(result):
            wait = chosen(result)
            self.waits.append(wait)
            if pool is not None:
                self.sizes.append(pool.get_size())
            self.looked.set()
            return wait

        sweeper.next_wait = next_wait

    async def next(self, timeout: float = 10.0) -> float:
        await asyncio.wait_for(self.looked.wait(), timeout)
        self.looked.clear()
        return self.waits[-1]


@pytest.mark.parametrize("kind", ["starter", "exporter", "reference", "resumer"])
async def test_a_sweeper_s_first_look_closes_the_connection_it_opened(monitoring_schema, kind):
    """Before, the first look (1-2 s after the start; the resumer's 15-30 s) kept its connection the pool's 30 s,
    past the start's own close of idle connections (shared/service.py), and the 2 s looks for good."""
    pool = monitoring_schema
    assert pool.get_size() == 0
    sweeper = sweeper_of(kind, pool)
    sweeper.every = 0.2  # the first look soon (the resumer's is 15-30 s after the start)
    looks = Looks(sweeper, pool)
    sweeper.start()
    try:
        await looks.next()
        assert looks.sizes[0] == 0, f"{looks.sizes[0]} connection(s) still open"  # was 1, for 30 s
    finally:
        await sweeper.stop()


def alert() -> AssayThresholdCrossed:
    return AssayThresholdCrossed(assay_id=1, name="drift", workspace_id=1, pipeline_id=9, pipeline_name="p",
                                 iopath="input.0", status="Alert", score=0.9, warning_threshold=None,
                                 alert_threshold=0.5, window_start="a", window_end="b")


async def test_a_trigger_wakes_the_training_starter_waiting_for_nothing(monitoring_schema, monkeypatch):
    """With no training starting the starter waits IDLE_WAIT (was 2 s); the training an assay alert opens in its
    process wakes it, and the run is asked for at once; then it waits for that claim's resume, RESUME_START later."""
    pool = monitoring_schema
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name, pipeline_id, updated_at)"
        " VALUES ($1, 1, 'd-42', $2, 1, $3, 'ASSAY_ALERT', 1, '{}', 'digits', 9, now() - interval '1 minute')",
        DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    started: list[uuid.UUID] = []

    async def start_claimed(deps, training) -> None:  # the run's creation (auth, the task scheduler) left out
        started.append(training["id"])

    monkeypatch.setattr(continuous, "_start_claimed", start_claimed)
    deps = process(pool)
    starter = continuous.TrainingStarter(deps)
    looks = Looks(starter)
    starter.start()
    try:
        assert await looks.next() == sweeps.IDLE_WAIT == 60.0  # nothing starting: was 2.0
        opened = await continuous.check_trigger(deps, DEPLOYMENT, (uuid.uuid4(), alert()))
        assert opened is not None
        await looks.next(timeout=10.0)  # woken: without the wake-up the next look is a minute away
        assert started == [opened]
        assert continuous.RESUME_START - 5 < looks.waits[-1] <= sweeps.IDLE_WAIT  # its resume is next
    finally:
        await starter.stop()


async def test_the_training_starter_waits_for_the_next_claimed_training_s_resume(monitoring_schema):
    """A training claimed 18 s ago whose run was not recorded is asked for again RESUME_START (60 s) after its
    claim: the starter's next look is then, ~42 s away; one claimed before migration 016 (no task id of its own)
    is failed NO_MODEL_GRACE after its claim: ~10 s away."""
    pool = monitoring_schema
    starter = continuous.TrainingStarter(process(pool))
    assert starter.next_wait(await starter.sweep()) == 60.0  # none: was 2.0
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, trigger, run_claimed_at, run_task_id)"
        " VALUES ($1, $2, 1, 'starting', 1, 'FEEDBACK_LOOP', now() - interval '18 seconds', $3)", uuid.uuid4(),
        DEPLOYMENT, uuid.uuid4())
    # the bounds leave a loaded CI worker 12 s (6 s) between the insert and the look's query; the old answer is 2.0
    assert 30.0 < starter.next_wait(await starter.sweep()) <= 42.0
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, trigger, run_claimed_at) VALUES"
        " ($1, $2, 1, 'starting', 1, 'FEEDBACK_LOOP', now() - interval '50 seconds')", uuid.uuid4(), DEPLOYMENT + 1)
    assert 4.0 < starter.next_wait(await starter.sweep()) <= 10.0

