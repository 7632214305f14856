"""A scheduled task's concurrency policy (task/run_scheduled's concurrency_policy, as a Kubernetes CronJob's
concurrencyPolicy) and its bound of waiting runs (max_queued): the command's rules, what a point does under each
policy (scheduler.fire_due, the store's calls replaced: their SQL is run on PostgreSQL in
tests/integration/test_task_scheduler_wakeups.py), and a replaced run's reason. Left out, both are today's behaviour:
allow, at most QUEUED_PER_TASK (10) waiting, and neither is sent nor answered (readers older than the fields)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from services.task_scheduler import runner, scheduler, store
from services.task_scheduler.scheduler import QUEUED_PER_TASK, REPLACED, Scheduler
from shared.messages.tasks import RunTaskScheduled, TaskRecord

TASK = uuid.uuid4()
POINT = datetime(2026, 12, 5, 14, 0, 2, tzinfo=UTC)
BODY = {"workspace_id": 5, "orch_id": str(uuid.uuid4()), "schedule": "*/5 * * * *", "json": {}}


# --- the command ---------------------------------------------------------------------------------------------------

def test_left_out_they_are_todays_behaviour_and_not_sent():
    cmd = RunTaskScheduled.model_validate(BODY)
    assert (cmd.concurrency_policy, cmd.max_queued) == (None, None)
    sent = cmd.model_dump(mode="json", by_alias=True)
    assert "concurrency_policy" not in sent and "max_queued" not in sent  # an older scheduler reads it as before


@pytest.mark.parametrize("given, read", [("Forbid", "forbid"), ("REPLACE", "replace"), ("allow", "allow")])
def test_a_policy_is_read_in_either_case(given, read):
    cmd = RunTaskScheduled.model_validate({**BODY, "concurrency_policy": given})
    assert cmd.concurrency_policy == read
    assert cmd.model_dump(mode="json", by_alias=True)["concurrency_policy"] == read


@pytest.mark.parametrize("extra, said", [
    ({"concurrency_policy": "sometimes"}, "concurrency_policy"),
    ({"concurrency_policy": 1}, "concurrency_policy"),
    ({"max_queued": 0}, "max_queued"),
    ({"max_queued": 101}, "max_queued"),
    # strict (before: read as 1, 5, 5): a bool, a string or a float is no bound
    ({"max_queued": True}, "max_queued"),
    ({"max_queued": "5"}, "max_queued"),
    ({"max_queued": 5.0}, "max_queued"),
    ({"concurrency_policy": True}, "concurrency_policy"),
    ({"concurrency_policy": "forbid", "max_queued": 3}, "max_queued bounds the waiting runs of concurrency_policy"),
    ({"concurrency_policy": "Replace", "max_queued": 3}, "replace keeps no backlog of the task's runs"),
])
def test_a_bad_policy_or_bound_is_refused(extra, said):
    with pytest.raises(ValidationError) as refused:
        RunTaskScheduled.model_validate({**BODY, **extra})
    assert said in str(refused.value)
    with pytest.raises(ValidationError) as refused:  # as the bus carries it (JSON)
        RunTaskScheduled.model_validate_json(json.dumps({**BODY, **extra}))
    assert said in str(refused.value)


def test_a_record_shows_them_only_when_given():
    base = dict(name=None, id=TASK, orch_id=TASK, image="i", image_tag="t", bind_secrets=[], extra_env_vars={},
                auth_init=True, workspace_id=5, flavor="exec_orch_cron", reap_threshold_secs=9, exec_type="cron_job",
                schedule="* * * * *", status="started", input_data={}, killed=False, created_at="c", updated_at="u",
                last_runs=[])
    assert "concurrency_policy" not in TaskRecord(**base).model_dump(mode="json")
    shown = TaskRecord(**base, concurrency_policy="allow", max_queued=3).model_dump(mode="json")
    assert (shown["concurrency_policy"], shown["max_queued"]) == ("allow", 3)
    assert TaskRecord.model_validate(shown).max_queued == 3


# --- a point under each policy ------------------------------------------------------------------------------------

class Conn:
    @contextlib.asynccontextmanager
    async def transaction(self):
        yield


def fire_due(monkeypatch, policy: str | None, max_queued: int | None = None, *, waiting: int = 0,
             active: bool = False, replaced: tuple[int, int] = (0, 0)) -> tuple[dict, Scheduler]:
    seen: dict = {"fired": [], "next": [], "counted": [], "asked": [], "replaced": [], "events": 0}

    async def due_tasks(conn, limit, held=None):
        return [{"id": TASK, "workspace_id": 7, "schedule": "* * * * * */2", "missed_run_policy": None,
                 "concurrency_policy": policy, "max_queued": max_queued, "next_fire": POINT,
                 "now": POINT + timedelta(milliseconds=20)}]

    async def queued_of_task(conn, task_id, workspace_id, at_most):
        seen["counted"].append(at_most)
        return min(waiting, at_most)

    async def active_of_task(conn, task_id, workspace_id):
        seen["asked"].append((task_id, workspace_id))
        return active

    async def replace_active(conn, task_id, workspace_id, point, reason):
        seen["replaced"].append((point, reason, list(seen["fired"])))  # what had fired when it was called
        return replaced

    async def fire(conn, task_id, workspace_id, point):
        seen["fired"].append(point)
        return True

    async def set_next_fire(conn, task_id, next_fire):
        seen["next"].append(next_fire)

    for name, fn in (("due_tasks", due_tasks), ("queued_of_task", queued_of_task), ("fire", fire),
                     ("set_next_fire", set_next_fire), ("active_of_task", active_of_task),
                     ("replace_active", replace_active)):
        monkeypatch.setattr(store, name, fn, raising=False)
    settings = SimpleNamespace(missed_run_grace=30.0, max_concurrent_runs_per_workspace=2)
    sched = Scheduler(deps=SimpleNamespace(settings=settings), mint=None, gateway_url="")
    monkeypatch.setattr(sched, "events_committed", lambda: seen.__setitem__("events", seen["events"] + 1))
    return seen, sched


# "suspend": a policy a newer process stored that this one does not know is read as allow, bounded (was: no bound)
@pytest.mark.parametrize("policy", [None, "allow", "suspend"])
@pytest.mark.parametrize("max_queued, waiting, fires", [(None, QUEUED_PER_TASK - 1, True),
                                                        (None, QUEUED_PER_TASK, False),
                                                        (2, 1, True), (2, 2, False), (50, 20, True)])
async def test_allow_queues_up_to_the_tasks_bound(monkeypatch, policy, max_queued, waiting, fires):
    seen, sched = fire_due(monkeypatch, policy, max_queued, waiting=waiting)
    await sched.fire_due(Conn())
    assert seen["counted"] == [max_queued or QUEUED_PER_TASK]
    assert seen["fired"] == ([POINT] if fires else [])
    assert seen["next"] == [POINT + timedelta(seconds=2)]
    assert seen["asked"] == [] and seen["replaced"] == []


@pytest.mark.parametrize("active", [False, True])
async def test_forbid_skips_a_point_while_a_run_of_the_task_is_queued_or_running(monkeypatch, caplog, active):
    seen, sched = fire_due(monkeypatch, "forbid", active=active)
    with caplog.at_level(logging.INFO, logger=scheduler.log.name):
        await sched.fire_due(Conn())
    assert seen["asked"] == [(TASK, 7)]
    assert seen["fired"] == ([] if active else [POINT])
    assert seen["next"] == [POINT + timedelta(seconds=2)]  # the schedule goes on either way
    assert seen["counted"] == [] and seen["replaced"] == []
    assert ("still queued or running (concurrency_policy forbid)" in caplog.text) == active


@pytest.mark.parametrize("replaced, events", [((0, 0), 0), ((0, 1), 0), ((2, 1), 1)])
async def test_replace_queues_the_point_then_stops_the_tasks_other_runs(monkeypatch, replaced, events):
    seen, sched = fire_due(monkeypatch, "replace", replaced=replaced)
    await sched.fire_due(Conn())
    assert seen["fired"] == [POINT]
    reason = f"{REPLACED} {POINT.isoformat()} (concurrency_policy replace)"
    assert seen["replaced"] == [(POINT, reason, [POINT])]  # after the point's run was queued, keeping it
    assert seen["counted"] == [] and seen["asked"] == []
    assert seen["events"] == events  # the queued runs it failed: their events.task_run.failed are sent now


# --- a replaced run's reason ---------------------------------------------------------------------------------------

class Killed(Scheduler):
    async def _run(self, row):
        await self.kills[row["id"]].wait()
        return runner.RunOutcome("failure", None, runner.KILLED)


@pytest.mark.parametrize("asked, recorded", [(True, runner.KILLED),
                                             ("replaced by the task's run for X", "replaced by the task's run for X")])
async def test_a_run_killed_for_its_replacement_says_so(monkeypatch, asked, recorded):
    run_id = uuid.uuid4()
    ends = []

    async def beat_runs(conn, run_ids, supervisor):
        return {run_id: asked}

    async def finish_run(pool, run, supervisor, status, exit_code, reason):
        ends.append((run, status, reason))
        return True

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "finish_run", finish_run)
    sched = Killed(deps=SimpleNamespace(settings=SimpleNamespace(), pool=None), mint=None, gateway_url="")
    sched.kills[run_id] = asyncio.Event()
    sched.runs[run_id] = asyncio.create_task(sched._supervise({"id": run_id}))
    await sched.heartbeat(None)
    async with asyncio.timeout(10):
        await sched.runs[run_id]
    assert ends == [(run_id, "failure", recorded)]
    assert sched.kill_reasons == {} and sched.runs == {}


# --- the SDK and the CLI ------------------------------------------------------------------------------------------

class Session:
    def __init__(self) -> None:
        self.sent: list = []

    def post(self, route, body):
        self.sent.append((route, body))
        return {"id": str(TASK)}


def test_the_sdk_sends_them_only_when_given():
    from railyard_client.orchestrations import Orchestrations

    session = Session()
    orchestrations = Orchestrations(SimpleNamespace(_session=session), 5)
    orchestrations.run_scheduled("o", "* * * * *")
    orchestrations.run_scheduled("o", "* * * * *", concurrency_policy="replace")
    orchestrations.run_scheduled("o", "* * * * *", max_queued=3)
    orchestrations.run_scheduled("o", "* * * * *", concurrency_policy="")  # sent: the API's 400 names it
    bodies = [body for _, body in session.sent]
    assert "concurrency_policy" not in bodies[0] and "max_queued" not in bodies[0]  # as before the fields
    assert bodies[1]["concurrency_policy"] == "replace" and "max_queued" not in bodies[1]
    assert bodies[2]["max_queued"] == 3 and "concurrency_policy" not in bodies[2]
    assert bodies[3]["concurrency_policy"] == ""  # was dropped: the task silently allow


def test_the_cli_passes_them(monkeypatch):
    from click.testing import CliRunner
    from railyard_client import cli_orchestrations
    from railyard_client.orchestrations import Orchestrations

    session = Session()
    monkeypatch.setattr(cli_orchestrations, "_orchestrations",
                        lambda workspace: Orchestrations(SimpleNamespace(_session=session), 5))
    orch = str(uuid.uuid4())
    for extra in ([], ["--concurrency", "Forbid"], ["--max-queued", "4"]):
        result = CliRunner().invoke(cli_orchestrations.tasks_app, ["schedule", orch, "* * * * *", "--json", *extra])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli_orchestrations.tasks_app, ["schedule", orch, "* * * * *", "--max-queued", "0"])
    assert result.exit_code == 2 and "--max-queued" in result.output  # refused before anything is sent
    bodies = [body for _, body in session.sent]
    assert len(bodies) == 3 and "concurrency_policy" not in bodies[0] and "max_queued" not in bodies[0]
    assert bodies[1]["concurrency_policy"] == "forbid" and bodies[2]["max_queued"] == 4
