"""Pure parts of continuous training and deployment (services/monitoring/continuous.py): the set-up's trigger and
threshold, what counts as a classification's answer, and the pipeline definitions a promotion, a roll-back and a
shadow set produce."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from services.monitoring import continuous
from services.monitoring.continuous import _serving, top_class
from services.monitoring.sequential import PairCounts
from shared import subjects
from shared.errors import Unavailable, UpstreamTimeout
from shared.messages.monitoring_continuous import SetupContinuousTraining
from tests.unit.continuous_world import continuous_deps, sweep_starting

IMAGE = {"input": "pixels", "kind": "classification", "size": [8, 8]}
CHAMPION = {"name": "digits", "version": "v1", "sha": "a"}
CHALLENGER = {"name": "digits", "version": "v2", "sha": "b"}


def test_the_top_class_is_the_best_scored_one():
    assert top_class({"detection_classes": [3, 7], "detection_scores": [0.2, 0.9]}) == 7
    assert top_class({"detection_classes": [4]}) == 4  # a ground truth without scores
    assert top_class('{"detection_classes": [5], "detection_scores": [1.0]}') == 5  # as jsonb text
    assert top_class({"detection_classes": [], "detection_scores": []}) is None
    assert top_class(None) is None


def test_promotion_and_roll_back_serve_one_model_and_keep_the_image_configuration():
    shadowed = {"steps": [{"ShadowDeploy": {"champion": CHAMPION, "challengers": [CHALLENGER], "image": IMAGE}}]}
    promoted = _serving(shadowed, CHALLENGER, None)
    assert promoted == {"steps": [{"ModelInference": {"models": [CHALLENGER], "image": IMAGE}}]}
    rolled_back = _serving(shadowed, CHAMPION, None)
    assert rolled_back == {"steps": [{"ModelInference": {"models": [CHAMPION], "image": IMAGE}}]}
    assert shadowed["steps"][0]["ShadowDeploy"]["challengers"] == [CHALLENGER]  # the input is left as it was


def test_a_shadow_set_turns_the_model_step_into_a_shadow_deploy():
    plain = {"steps": [{"ModelInference": {"models": [CHAMPION], "image": IMAGE}}]}
    shadowed = _serving(plain, CHAMPION, CHALLENGER)
    assert shadowed == {"steps": [{"ShadowDeploy": {"champion": CHAMPION, "challengers": [CHALLENGER],
                                                    "image": IMAGE}}]}
    assert _serving(shadowed, CHAMPION, CHALLENGER) == shadowed  # nothing to redeploy


def test_pairs_are_counted_by_outcome():
    counts = PairCounts.from_pairs([(True, True), (True, False), (False, True), (False, True), (False, False)])
    assert (counts.n11, counts.n10, counts.n01, counts.n00, counts.pairs) == (1, 1, 2, 1, 5)


def test_the_trigger_and_its_threshold_are_checked_at_set_up():
    base = {"deployment": "d-1", "project_id": 1, "experiment_parameters": {}}
    assert SetupContinuousTraining.model_validate(base | {"threshold": 5}).trigger == "FEEDBACK_LOOP"
    assert SetupContinuousTraining.model_validate(base | {"trigger": "ASSAY_ALERT"}).threshold == 1  # default 1
    assert SetupContinuousTraining.model_validate(base | {"trigger": "ASSAY_ALERT", "threshold": 3}).threshold == 3
    for bad in ({"threshold": 5, "trigger": "DRIFT"}, {"trigger": "ASSAY_ALERT", "threshold": 0},
                {"trigger": "FEEDBACK_LOOP"}, {}):  # FEEDBACK_LOOP (the default) needs its threshold
        with pytest.raises(ValidationError):
            SetupContinuousTraining.model_validate(base | bad)


class _Pool:
    """A pool stand-in for resume_deliveries: one stale older delivery a newer training was delivered after (the first
    fetch), nothing else stale, the newest delivered training, and the statements executed."""

    def __init__(self, older: dict, newest: dict) -> None:
        self.fetched, self.older, self.newest, self.executed = 0, older, newest, []

    async def fetch(self, sql, *args):
        self.fetched += 1
        return [self.older] if self.fetched == 1 else []

    async def fetchrow(self, sql, *args):
        return self.newest

    async def execute(self, sql, *args):
        self.executed.append((sql, args))


async def test_serving_the_newest_again_closes_the_older_delivery_on_the_resumed_try_whatever_the_error(
        monkeypatch, caplog):
    """resume_deliveries' try at serving the newest again (the second, after _deliver_again's) closes the older
    delivery even when it fails with an unexpected (non-Railyard) error, logged at ERROR with its traceback, the
    failure in the reason. Before, it was left claimed (`continue`): tried every STALE_SWAP without end."""
    older = {"id": uuid.uuid4(), "deployment_id": 42, "model_version": '{"name": "d", "version": "v2"}',
             "delivering_since": "claimed"}
    pool = _Pool(older, {"id": uuid.uuid4(), "deployment_id": 42, "outcome": "deployed"})
    tries = []

    async def deliver(deps, training, policy, **kwargs):
        tries.append((training["id"], kwargs.get("again")))
        raise RuntimeError("boom")

    monkeypatch.setattr(continuous, "_deliver", deliver)
    await continuous.resume_deliveries(continuous_deps(pool=pool))
    assert tries == [(pool.newest["id"], True)]
    [(sql, args)] = pool.executed
    assert sql.startswith("UPDATE trainings SET delivering_since = NULL") and args[:2] == (older["id"], "claimed")
    assert args[2].endswith("; serving the newer one again failed: unexpected error RuntimeError"), args
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "failed unexpectedly" in record.getMessage()


async def test_the_first_try_at_serving_the_newest_again_leaves_the_older_delivery_claimed_whatever_the_error(
        monkeypatch, caplog):
    """_deliver_again: an unexpected error serving the newest again is logged (ERROR, traceback) and leaves the older
    delivery claimed, for resume_deliveries' one more try; before, it was raised to whatever delivered the older one.
    A Railyard one the same (logged as a warning)."""
    pool = _Pool({}, {})
    for error in (RuntimeError("boom"), Unavailable("deployer is away")):
        async def deliver(deps, training, policy, error=error, **kwargs):
            raise error

        monkeypatch.setattr(continuous, "_deliver", deliver)
        await continuous._deliver_again(continuous_deps(pool=pool), {"id": uuid.uuid4(), "outcome": "deployed"},
                                        {"id": uuid.uuid4()}, {"version": "v2"})
    assert pool.executed == []  # not closed
    assert [r.levelno for r in caplog.records if "again failed" in r.getMessage()] == [logging.ERROR, logging.WARNING]


async def test_one_training_that_cannot_be_started_does_not_stop_the_others(monkeypatch, caplog):
    """The first training's start raises (e.g. the write suspending continuous training, its owner refused, or the
    one recording its failure, fails). Before, that ended the starter's sweep: the other deployment's training was
    not started in it, nor in any later sweep while it kept failing (the failing one comes first). Now it is logged
    (ERROR, traceback) and the others start."""
    rows = [{"id": uuid.uuid4(), "deployment_id": 1, "overdue": False},
            {"id": uuid.uuid4(), "deployment_id": 2, "overdue": False}]
    started = []

    async def start_training(deps, training_id, late=False):
        if training_id == rows[0]["id"]:
            raise ConnectionError("the database went away")
        started.append(training_id)
        return True

    assert await sweep_starting(monkeypatch, rows, start_training) is False
    assert started == [rows[1]["id"]]
    assert any(r.levelno == logging.ERROR and "could not be started" in r.getMessage() for r in caplog.records)


async def test_only_the_deploy_going_unanswered_is_an_unknown_outcome(monkeypatch):
    """_serve: the deployer's pipelines/deploy timing out is DeployUnanswered (the deploy may still be served: the
    caller leaves its delivery open / its challenge decided, docs/monitoring.md); pipelines/create timing out is a
    plain UpstreamTimeout (nothing can be served by it: _deliver leaves it for the resume as any 504 before the deploy,
    _for_now)."""
    view = SimpleNamespace(definition={"steps": [{"ModelInference": {"models": [CHAMPION]}}]},
                           route=SimpleNamespace(pipeline_name="p", pipeline_version="1", deployment_id=1),
                           deploy_id="d",
                           pipeline_id=1, engine_config=None, version_pk_id=3)
    deps = continuous_deps(broker=None, timeout=5.0, deploy_timeout=305.0)
    for timing_out in (subjects.DEPLOYER_PIPELINES_DEPLOY, subjects.DEPLOYER_PIPELINES_CREATE):
        async def request(broker, subject, cmd, timing_out=timing_out, **kwargs):
            if subject == timing_out:
                raise UpstreamTimeout("deployer did not answer")
            return SimpleNamespace(pipeline_variant_pk_id=7, pipeline_variant_version="2")

        monkeypatch.setattr(continuous, "request", request)
        with pytest.raises(UpstreamTimeout) as raised:
            await continuous._serve(deps, None, 1, "d-1", CHALLENGER, None, "test", found=("token", view))
        deploying = timing_out == subjects.DEPLOYER_PIPELINES_DEPLOY
        assert isinstance(raised.value, continuous.DeployUnanswered) == deploying


async def test_stop_ends_the_background_work_before_it_returns():
    """A refused swap redone in the background (in_background) is cancelled at stop and has ended when stop returns:
    the service closes its pool and bus right after. Before, it was only asked to cancel (task.cancel()) and stop
    returned with it still pending."""
    deps = continuous_deps()
    started = asyncio.Event()

    async def redo() -> None:
        started.set()
        await asyncio.sleep(3600)  # a swap's deploy, waited for

    task = deps.in_background(redo(), "redoing a refused swap")
    await started.wait()
    await continuous.stop(SimpleNamespace(extras={"continuous": deps}))
    assert task.done() and task.cancelled()
    assert not deps.background
