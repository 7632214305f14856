"""A continuous deployment's delivery or a challenge's swap meeting a 503 (`unavailable`: a service away or its
database failing, the object store unreadable: ml_backend.PackageUnreadable), a 504 (a look-up unanswered) or a 429
(`rate_limited`) before its deploy is not failed: it is left claimed / decided for the resume STALE_SWAP later, as an
unanswered deploy is (services/monitoring/continuous.py _for_now; docs/monitoring.md). Another 4xx and a 500 still
fail it at once, and the last resume (`give_up`, past MAX_RESUMES) fails it whatever the error. Before, every Railyard
error failed it for good."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from services.monitoring import continuous, model_inputs
from services.monitoring.ml_backend import PackageUnreadable
from shared.errors import NotFound, RailyardError, TooManyRequests, Unavailable, UpstreamTimeout
from tests.unit.continuous_world import continuous_deps

CHAMPION = {"name": "digits", "version": "v1", "sha": "a"}
NEW = {"name": "digits", "version": "v2", "sha": "b"}


class _Pool:
    """The continuous_deployment row, and every other statement recorded (none is expected before the failure)."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.held_up: list[tuple] = []  # (sql, args) of each note of what held a delivery or swap up

    async def fetchrow(self, sql, *args):
        assert sql.startswith("SELECT * FROM continuous_deployment"), sql
        return {"deployment_id": 42, "owner_id": uuid.uuid4(), "workspace_id": 1, "deployment": "d-42"}

    async def execute(self, sql, *args):
        if "_held_up = $3" in sql:
            self.held_up.append((sql, args))
            return
        self.executed.append(sql)


def _delivery_world(monkeypatch, fail_at: str, error: RailyardError) -> list[RailyardError]:
    """_deliver's look-ups as stand-ins, `error` raised at `fail_at` (act_as, resolve, check); the failures recorded
    (_delivery_failed) returned."""
    async def act_as(deps, owner_id, workspace_id, purpose):
        if fail_at == "act_as":
            raise error
        return None, "token"

    async def deployed_name(deps, token, name):
        return None

    async def deployment(base, principal, token, name):
        return SimpleNamespace(definition={"steps": [{"ModelInference": {"models": [CHAMPION]}}]})

    async def request(broker, subject, cmd, **kwargs):
        if fail_at == "resolve":
            raise error
        return SimpleNamespace(name=cmd.name, model_version=cmd.version, sha="b")

    async def resolve_served(deps, token, workspace_id, served):
        return SimpleNamespace(sha="a")

    async def check(objects, served, resolved, what, advice):
        raise error

    failed: list[RailyardError] = []

    async def delivery_failed(pool, training, policy, exc, owner_id):
        failed.append(exc)

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "deployed_name", deployed_name)
    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    monkeypatch.setattr(continuous, "request", request)
    monkeypatch.setattr(continuous, "_resolve_served", resolve_served)
    monkeypatch.setattr(model_inputs, "check", check)
    monkeypatch.setattr(continuous, "_delivery_failed", delivery_failed)
    return failed


def _training() -> dict:
    return {"id": uuid.uuid4(), "deployment_id": 42, "model_version": NEW, "delivering_since": "claimed"}


@pytest.mark.parametrize("fail_at,error", [
    ("check", PackageUnreadable("reading model package 'b' failed: the object store did not answer")),
    ("act_as", Unavailable("auth is not running")),
    ("resolve", UpstreamTimeout("registry did not answer within 5s")),
    ("resolve", TooManyRequests("too many requests to the registry; slow down", retry_after=2.0)),
], ids=["package unreadable", "auth away", "registry unanswered", "registry 429"])
@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_a_delivery_meeting_a_5xx_is_left_claimed_for_the_resume(monkeypatch, caplog, fail_at, error, policy):
    failed = _delivery_world(monkeypatch, fail_at, error)
    pool = _Pool()
    deps = continuous_deps(pool=pool, broker=None, timeout=5.0, objects=None)
    training = _training()
    assert await continuous._deliver(deps, training, policy) is False
    assert failed == []  # not failed: its claim (delivering_since) stays, for resume_deliveries
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert error.msg in record.getMessage() and "delivered again in" in record.getMessage()
    # and what held it up is kept for its give-up's reason, while its claim holds (migration 027)
    [(sql, args)] = pool.held_up
    assert sql.startswith("UPDATE trainings SET delivery_held_up = $3 WHERE id = $1 AND delivering_since = $2"), sql
    assert args == (training["id"], "claimed", f"{error.status} {error.code}: {error.msg}")


@pytest.mark.parametrize("fail_at,error", [
    ("check", model_inputs.IncompatibleModel("the version takes other inputs")),
    ("act_as", continuous.OwnerRefused("user is not a member of the workspace")),
    ("resolve", NotFound("model version v2 not found")),
    ("resolve", RailyardError("the registry failed: internal error")),
], ids=["incompatible", "owner refused", "version gone", "500"])
async def test_a_delivery_meeting_a_4xx_still_fails_at_once(monkeypatch, fail_at, error):
    failed = _delivery_world(monkeypatch, fail_at, error)
    deps = continuous_deps(pool=_Pool(), broker=None, timeout=5.0, objects=None)
    assert await continuous._deliver(deps, _training(), "DEPLOY_AUTO") is False
    assert failed == [error]


async def test_the_last_resume_fails_a_delivery_meeting_a_5xx(monkeypatch):
    """The resumes are bounded: past MAX_RESUMES (`give_up`), a 503 of its look fails it, the 503 in the reason."""
    error = PackageUnreadable("reading model package 'b' failed: the object store did not answer")
    failed = _delivery_world(monkeypatch, "check", error)
    deps = continuous_deps(pool=_Pool(), broker=None, timeout=5.0, objects=None)
    assert await continuous._deliver(deps, _training(), "DEPLOY_AUTO", give_up="given up") is False
    [exc] = failed
    assert exc.msg == f"given up; its last look at what serves failed: 503 {error.code}: {error.msg}"


class _SwapPool(_Pool):
    def acquire(self):
        pool = self

        class Conn:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            def transaction(self):
                return self

            async def execute(self, sql, *args):
                pool.executed.append(sql)

        return Conn()


@pytest.mark.parametrize("error,give_up,fails", [
    (Unavailable("the deployer's database did not answer within 4 s"), None, False),
    (UpstreamTimeout("deployer did not answer within 5s"), None, False),
    (TooManyRequests("too many deploys; slow down", retry_after=1.0), None, False),
    (NotFound("pipeline 5 not found"), None, True),
    (RailyardError("the deployer failed: internal error"), None, True),
    (Unavailable("the deployer's database did not answer within 4 s"), "given up", True),
], ids=["503", "504", "429", "404", "500", "503 at the last resume"])
async def test_a_swap_meeting_a_5xx_is_left_decided_for_the_resume(monkeypatch, error, give_up, fails):
    async def swap_overtaken(conn, challenge, say=True):
        return None

    async def serve(*args, **kwargs):
        raise error

    monkeypatch.setattr(continuous, "_swap_overtaken", swap_overtaken)
    monkeypatch.setattr(continuous, "_serve", serve)
    pool = _SwapPool()
    challenge = {"id": uuid.uuid4(), "deployment_id": 42, "champion": CHAMPION, "challenger": NEW}
    evidence = SimpleNamespace(decision=SimpleNamespace(value="promote"), n01=9, n10=1, pairs=10, log_evidence=3.2,
                               threshold=3.0, alpha=0.05, min_sample=10)
    await continuous._apply_decision(continuous_deps(pool=pool), challenge, "promoting", evidence, give_up=give_up)
    assert [sql.startswith("UPDATE challenges SET state = 'failed'") for sql in pool.executed] == (
        [True] if fails else [])
    # left decided: what held it up is kept for its give-up's reason, while it is still decided (migration 027)
    assert [(sql, args) for sql, args in pool.held_up] == ([] if fails else [(
        "UPDATE challenges SET swap_held_up = $3 WHERE id = $1 AND state = $2 AND ($4::timestamptz IS NULL OR"
        " decided_at = $4)", (challenge["id"], "promoting", f"{error.status} {error.code}: {error.msg}", None))])


@pytest.mark.parametrize("error,said", [
    (continuous.DeployUnanswered("deployer did not answer within 305s"),
     "504 upstream_timeout: deployer did not answer within 305s"),
    (continuous.DeployHeldUp("another deploy of pipeline 5 is under way"),
     "409 deploy_in_progress: another deploy of pipeline 5 is under way"),
    (continuous.DeployUnavailable("the replicas could not be ready in time", "deploy_out_of_time"),
     "503 deploy_out_of_time: the replicas could not be ready in time"),
    (TooManyRequests("too many deploys; slow down", retry_after=3.0), "429 rate_limited: too many deploys; slow down"),
    (Unavailable("x" * 1000), "503 unavailable: " + "x" * (continuous.HELD_UP_CHARS - 18) + "…"),
], ids=["unanswered", "held up", "deployer 503", "429", "cut"])
def test_what_held_a_delivery_up_is_said_with_its_status_and_code(error, said):
    assert continuous._held_up(error) == said
    assert len(said) <= continuous.HELD_UP_CHARS


class _Locks:
    def lock(self, deployment_id):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("held_up", ["503 unavailable: auth is not running", None], ids=["held up", "not recorded"])
async def test_the_give_up_s_reason_quotes_what_held_the_delivery_up_last(monkeypatch, held_up):
    """Past MAX_RESUMES the delivery's last resume gives up (_resume_delivery's give_up, the reason users read in
    retrieve_information): it says what held its tries up last, recorded by them (delivery_held_up). Before, that
    was in the WARNING log only and the reason named the possible causes in general."""
    asked: list[str | None] = []

    async def deliver(deps, training, policy, give_up=None):
        asked.append(give_up)

    monkeypatch.setattr(continuous, "_deliver", deliver)
    deps = continuous_deps(pool=_Pool())
    deps.lock = _Locks().lock
    training = {**_training(), "outcome": "deployed", "delivery_resumes": continuous.MAX_RESUMES + 1,
                "delivery_held_up": held_up}
    await continuous._resume_delivery(deps, training)
    [give_up] = asked
    assert give_up.startswith(f"its delivery did not finish after {continuous.MAX_RESUMES + 1} tries"), give_up
    if held_up:
        assert give_up.endswith(f"; its last held-up try met {held_up}"), give_up
    else:
        assert "held-up" not in give_up and give_up.endswith("made only over the version it was made from")


async def test_the_give_up_s_reason_quotes_what_held_the_swap_up_last(monkeypatch):
    asked: list[str | None] = []

    async def apply_decision(deps, row, state, evidence, *, resumed=False, give_up=None, looked_again=False):
        asked.append(give_up)

    class SwapRows(_Pool):
        async def fetchrow(self, sql, *args):
            assert sql.startswith("UPDATE challenges SET decided_at = now(), swap_resumes"), sql
            return {"id": uuid.uuid4(), "deployment_id": 42, "state": "promoting",
                    "swap_resumes": continuous.MAX_RESUMES + 1, "evidence": None,
                    "swap_held_up": "409 deploy_in_progress: another deploy of pipeline 5 is under way"}

    monkeypatch.setattr(continuous, "_apply_decision", apply_decision)
    monkeypatch.setattr(continuous, "_evidence", lambda row: None)
    deps = continuous_deps(pool=SwapRows())
    deps.lock = _Locks().lock
    await continuous.resume_swap(deps, 42)
    [give_up] = asked
    assert give_up.startswith(f"its swap did not finish after {continuous.MAX_RESUMES + 1} tries"), give_up
    assert give_up.endswith("; its last held-up try met 409 deploy_in_progress: another deploy of pipeline 5 is under"
                            " way"), give_up


async def test_a_resumed_swap_s_note_is_held_to_its_own_claim(monkeypatch):
    """A resume claims the swap by moving decided_at (resume_swap's RETURNING *): its try's note is written only while
    decided_at is still that claim's, so a slower try of another process (its row read before that claim) does not
    write over it. Before, the note was held to the state alone."""
    async def swap_overtaken(conn, challenge, say=True):
        return None

    async def serve(*args, **kwargs):
        raise UpstreamTimeout("deployer did not answer within 5s")

    monkeypatch.setattr(continuous, "_swap_overtaken", swap_overtaken)
    monkeypatch.setattr(continuous, "_serve", serve)
    pool = _SwapPool()
    claimed = datetime(2026, 12, 5, 17, 20, 1, 123456, tzinfo=UTC)
    challenge = {"id": uuid.uuid4(), "deployment_id": 42, "champion": CHAMPION, "challenger": NEW,
                 "decided_at": claimed}
    evidence = SimpleNamespace(decision=SimpleNamespace(value="promote"), n01=9, n10=1, pairs=10, log_evidence=3.2,
                               threshold=3.0, alpha=0.05, min_sample=10)
    await continuous._apply_decision(continuous_deps(pool=pool), challenge, "promoting", evidence, resumed=True)
    [(sql, args)] = pool.held_up
    assert sql.endswith("AND state = $2 AND ($4::timestamptz IS NULL OR decided_at = $4)"), sql
    assert args == (challenge["id"], "promoting", "504 upstream_timeout: deployer did not answer within 5s", claimed)


# --- what held it up, shown while it is under way (retrieve_information's `continuous`) ---------------------------

NOTE = "504 upstream_timeout: deployer did not answer within 305s"
TRAINING_KEYS = ["id", "state", "reviews", "trigger", "alerts", "task_id", "run_id", "model_version", "outcome",
                 "reason", "created_at", "updated_at"]
"""A training record's fields as sent before delivery_held_up: every record without a note is sent so still."""
CHALLENGE_KEYS = ["id", "champion", "challenger", "state", "evidence", "started_at", "decided_at", "reason"]


def _training_row(delivering: bool, held_up: str | None) -> dict:
    """A done training's row (SELECT *) delivered by DEPLOY_AUTO: under way (claimed) or ended, with a note or not."""
    now = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)
    return {"id": uuid.uuid4(), "state": "done", "reviews": 3, "trigger": "FEEDBACK_LOOP", "alerts": None,
            "task_id": uuid.uuid4(), "run_id": uuid.uuid4(), "model_version": '{"name": "digits", "version": "v2"}',
            "outcome": "deployed" if delivering or held_up is None else "failed", "reason": None, "created_at": now,
            "updated_at": now, "delivering_since": now if delivering else None, "delivery_held_up": held_up}


def test_a_delivery_under_way_shows_what_held_its_last_try_up():
    """retrieve_information's last_training says what held its delivery up while it is left for the resume (before,
    only the give-up's reason quoted it, past MAX_RESUMES); ended, or with no note, the field is left out: the bytes
    of before, which a reader older than the field reads (messages refuse unknown fields)."""
    shown = continuous._training_record(_training_row(True, NOTE))
    assert shown.model_dump(mode="json")["delivery_held_up"] == NOTE
    assert f'"delivery_held_up":"{NOTE}"' in shown.model_dump_json()
    for delivering, held_up in [(True, None), (False, NOTE), (False, None)]:  # not held up; ended (kept in the row)
        record = continuous._training_record(_training_row(delivering, held_up))
        assert list(record.model_dump(mode="json")) == TRAINING_KEYS, (delivering, held_up)
        assert "delivery_held_up" not in record.model_dump_json()


def _challenge_row(state: str, held_up: str | None) -> dict:
    now = datetime(2026, 12, 5, 17, 30, tzinfo=UTC)
    return {"id": uuid.uuid4(), "champion": CHAMPION, "challenger": NEW, "state": state, "evidence": None,
            "started_at": now, "decided_at": None if state == "running" else now, "reason": None,
            "swap_held_up": held_up}


@pytest.mark.parametrize("state,under_way", [("promoting", True), ("rolling_back", True), ("running", False),
                                             ("promoted", False), ("rolled_back", False), ("failed", False),
                                             ("superseded", False)])
def test_a_swap_under_way_shows_what_held_its_last_try_up(state, under_way):
    """As a delivery's: the challenge's swap_held_up while the decision's swap is left for the resume (decided), left
    out once it ended (or with no note), with the bytes of before. Nested in retrieve_information's `continuous`
    (ContinuousInformation, dumped as JSON) it is left out there too."""
    record = continuous._challenge_record(_challenge_row(state, NOTE))
    information = continuous.ContinuousInformation(training=None, deployment=None, last_training=None,
                                                   pending_model_version=None, challenge=record)
    sent = information.model_dump(mode="json")["challenge"]
    if under_way:
        assert sent["swap_held_up"] == NOTE
    else:
        assert list(sent) == CHALLENGE_KEYS
    assert list(continuous._challenge_record(_challenge_row(state, None)).model_dump(mode="json")) == CHALLENGE_KEYS


class _RecordConn:
    """A connection recording each statement; its UPDATE ... RETURNING answers as the row was changed."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def fetchval(self, sql, *args):
        self.statements.append(sql)
        return True


async def test_the_statement_recording_a_delivery_or_a_swap_clears_its_note(monkeypatch):
    """A delivery recorded delivered (_delivered: its own, a resumed one's, a late landing's from the deployer's event
    or the one more look after a give-up) and a swap recorded promoted / rolled back (_swapped) clear what held them
    up in that same statement, so no later read (nor a give-up) finds a cause of a delivery that is done. Before,
    the note stayed for good. A note written after it is refused by its own condition (the claim, the state)."""
    conn = _RecordConn()
    assert await continuous._delivered(conn, uuid.uuid4(), "DEPLOY_AUTO")
    [delivered] = conn.statements
    assert delivered.startswith("UPDATE trainings SET delivering_since = NULL"), delivered
    assert "delivery_held_up = NULL" in delivered.partition(" WHERE ")[0], delivered

    async def event(conn, subject, event):
        pass

    monkeypatch.setattr(continuous, "_event", event)
    conn = _RecordConn()
    challenge = {"id": uuid.uuid4(), "deployment_id": 42, "workspace_id": 1}
    assert await continuous._swapped(conn, challenge, "promoting", NEW, "v7", "promote: ...")
    [swapped] = conn.statements
    assert swapped.startswith("UPDATE challenges SET state = $2"), swapped
    assert "swap_held_up = NULL" in swapped.partition(" WHERE ")[0], swapped


class _AdvanceConn:
    """_advance's transaction: the training succeeded with its model ready, continuous deployment DEPLOY_AUTO."""

    def __init__(self, training: dict) -> None:
        self.training = training
        self.started: list[str] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def transaction(self):
        return self

    def acquire(self):
        return self

    async def fetchrow(self, sql, *args):
        if sql.startswith("SELECT * FROM trainings"):
            return {**self.training, "state": "succeeded", "model_status": "ready"}
        if sql.startswith("SELECT * FROM continuous_deployment"):
            return {"policy": "DEPLOY_AUTO", "active": True}
        assert sql.startswith("UPDATE trainings SET state = 'done'"), sql
        self.started.append(sql)
        return {**self.training, "state": "done", "outcome": "deployed"}


async def test_a_new_delivery_of_a_training_starts_with_no_note(monkeypatch):
    """The statement that starts a training's delivery (_advance: done, delivering_since set) clears any note, so
    what it shows and what its give-up quotes are this delivery's tries' alone."""
    training = {"id": uuid.uuid4(), "deployment_id": 42, "workspace_id": 1, "run_id": None, "reason": None,
                "model_version": NEW}
    conn = _AdvanceConn(training)
    delivered = []

    async def event(conn, subject, event):
        pass

    async def deliver(deps, row, policy, **kwargs):
        delivered.append(policy)
        return True

    monkeypatch.setattr(continuous, "_event", event)
    monkeypatch.setattr(continuous, "_deliver", deliver)
    await continuous._advance(continuous_deps(pool=conn), 42, training["id"], [])
    [started] = conn.started
    assert "delivering_since = CASE" in started and "delivery_held_up = NULL" in started.partition(" WHERE ")[0]
    assert delivered == ["DEPLOY_AUTO"]
