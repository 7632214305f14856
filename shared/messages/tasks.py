"""Orchestration, task and task-run messages (task_scheduler service), with the seed's field names (section 11,
"ML Workload Orchestration"). Railyard additions are marked so in their descriptions."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from shared.messages.base import WITHOUT_CONTROLS, Command, Event, Message, omit_when_unset
from shared.paging import NextCursor, cursor_field, key_cursor_field, limit_field, too_large_hint

MAX_LOG_PAGE = 100_000
"""Lines a page of task/get_logs_for_run holds at most (`limit`; fewer past 4 MiB of JSON)."""

RunStatus = Literal["queued", "running", "success", "failure"]
TaskStatus = Literal["pending", "started", "failed", "pending_kill", "killed"]
"""A task's status (a run's is RunStatus): the seed's pending, started and failed, and a killed task's."""
MissedRunPolicy = Literal["fire_once", "skip"]
ConcurrencyPolicy = Literal["allow", "forbid", "replace"]
QUEUED_PER_TASK = 10
"""A scheduled task's runs waiting to start (`queued`) at most, unless its `max_queued` says otherwise."""
MAX_QUEUED = 100
"""The largest `max_queued` a task may be given."""


class UploadOrchestration(Command):
    """An orchestration zip the gateway has staged in object storage (multipart `file` + `metadata`)."""

    workspace_id: int
    name: str | None = Field(None, max_length=200, pattern=WITHOUT_CONTROLS)
    file_name: str = Field(min_length=1, max_length=300, pattern=WITHOUT_CONTROLS)
    staged_key: str = Field(min_length=1, description=(
        "Railyard: key of the uploaded zip in the orchestrations bucket, staging/<user id>/<uuid> "
        "(staging/<user id>/ws-<workspace id>/<uuid> for a task run's token): staged for the caller by the HTTP "
        "upload (another user's key: 403; one staged with another token scope: 403 out_of_scope)."))


class OrchestrationCreated(Message):
    """orchestration/upload's answer."""

    id: uuid.UUID


class ListOrchestrations(Command):
    """orchestration/list: a workspace's orchestrations, oldest first; all, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("orchestrations")
    cursor: str | None = key_cursor_field("orchestration/list")


class OrchestrationRecord(Message):
    """One orchestration as orchestration/list shows it."""

    id: uuid.UUID
    sha: str
    name: str | None
    file_name: str
    task_id: uuid.UUID = Field(description="The packaging job (unpacking and installing requirements).")
    owner_id: str
    workspace_id: int
    status: Literal["packaging", "ready", "failed"] = Field(description="Railyard: packaging, then ready or failed.")
    reason: str | None = Field(None, description="Railyard: why packaging failed (the installer's last lines).")
    created_at: str
    updated_at: str


class Orchestrations(Message, NextCursor):
    orchestrations: list[OrchestrationRecord]


class RunTaskOnce(Command):
    """task/run_once: run an orchestration's main.py once with `json` as its task_args()."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, max_length=200, pattern=WITHOUT_CONTROLS)
    orch_id: uuid.UUID
    workspace_id: int
    args: dict[str, Any] = Field(default_factory=dict, alias="json", description="What task_args() returns.")
    timeout: int | None = Field(None, gt=0, description="Seconds a run may take before it is stopped.")
    id: uuid.UUID | None = Field(None, description="Railyard: the task's id, chosen by the caller, so that a call "
                                 "retried after its answer was lost (a timeout) makes no second task: the same id "
                                 "again, for the same orchestration in the same workspace, answers that task and "
                                 "queues nothing; an id taken otherwise is refused (409 task_id_taken).")


class RunTaskScheduled(RunTaskOnce):
    """task/run_scheduled: run on a cron schedule until killed."""

    schedule: str = Field(min_length=1, max_length=200, description="Cron: minute hour day-of-month month "
                          "day-of-week (Railyard: an optional 6th field is seconds).")
    missed_run_policy: MissedRunPolicy = Field(
        "fire_once", description="Railyard: a point missed while no scheduler ran fires once late, or is skipped.")
    concurrency_policy: ConcurrencyPolicy | None = Field(None, description=(
        "Railyard, as a Kubernetes CronJob's concurrencyPolicy (Allow, Forbid, Replace; either case): what a point "
        "does while a run of the task is queued or running. allow (the default): it makes a run all the same, up to "
        "`max_queued` waiting; forbid: it makes none (skipped); replace: those runs are stopped (a queued one failed "
        "at once, a running one killed) and the point makes its run."))
    # strict: a JSON integer only (true, "5" and 5.0 are refused, naming the field), as a new field has no client
    # sending it otherwise; the seed's fields (workspace_id, timeout) stay lax for the clients that send "5"
    max_queued: int | None = Field(None, ge=1, le=MAX_QUEUED, strict=True, description=(
        f"Railyard: with concurrency_policy allow, the task's runs waiting to start (queued) at most, 1 to "
        f"{MAX_QUEUED} (default {QUEUED_PER_TASK}): a point that comes while it has that many makes no run."))

    @field_validator("concurrency_policy", mode="before")
    @classmethod
    def _policy_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _queued_with_allow(self) -> RunTaskScheduled:
        if self.max_queued is not None and self.concurrency_policy in ("forbid", "replace"):
            raise ValueError(f"max_queued bounds the waiting runs of concurrency_policy allow; "
                             f"{self.concurrency_policy} keeps no backlog of the task's runs (leave out max_queued, or "
                             f"use allow)")
        return self

    # left out when unset: a gateway forwards the command as it was before the fields to an older scheduler
    # (shared/omit_unset.py)
    _without_unset_policy = omit_when_unset("concurrency_policy", "max_queued")


class TaskCreated(Message):
    id: uuid.UUID


class GetTask(Command):
    id: uuid.UUID


class KillTask(Command):
    id: uuid.UUID


class GetTasksByOrchSha(Command):
    sha: str = Field(min_length=1, max_length=64)


class TaskIds(Message):
    ids: list[uuid.UUID]


class ListTasks(Command):
    """task/list: a workspace's tasks, oldest first; all of them, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("tasks")
    cursor: str | None = key_cursor_field("task/list")


class LastRun(Message):
    run_id: uuid.UUID
    status: RunStatus
    created_at: str


class TaskRecord(Message):
    """A task as get_by_id, list and kill show it."""

    name: str | None
    id: uuid.UUID
    orch_id: uuid.UUID
    image: str
    image_tag: str
    bind_secrets: list[str]
    extra_env_vars: dict[str, str]
    auth_init: bool
    workspace_id: int
    flavor: str
    reap_threshold_secs: int
    exec_type: str
    schedule: str | None = None
    missed_run_policy: MissedRunPolicy | None = None
    concurrency_policy: ConcurrencyPolicy | None = Field(None, description=(
        "Railyard: a scheduled task's concurrency policy (task/run_scheduled); absent when it was not given: allow."))
    max_queued: int | None = Field(None, description=(
        f"Railyard: a scheduled task's bound of waiting runs (task/run_scheduled); absent when it was not given: "
        f"{QUEUED_PER_TASK} (with allow)."))
    status: TaskStatus = Field(description=(
        "The seed's pending (no run of the task has been started: just created, or its runs all wait for room, or "
        "were replaced by the next point while they waited), started (a run of it has been started, whatever came of "
        "it; a one-shot task stays so once its run succeeded) and failed (a "
        "one-shot task whose run failed, or a scheduled task whose schedule cannot be evaluated), and pending_kill "
        "(killed, a run still stopping) and killed."))
    input_data: dict[str, Any]
    killed: bool
    created_at: str
    updated_at: str
    last_runs: list[LastRun]

    # a task that does not set them is answered as before the fields (an older gateway reads it)
    _without_unset_policy = omit_when_unset("concurrency_policy", "max_queued")


class Tasks(Message, NextCursor):
    tasks: list[TaskRecord]


class ListTaskRuns(Command):
    """task/list_task_runs: a task's runs. As the seed: most recently updated first, all of them or the `limit`
    most recently updated. With `order` "created" (Railyard's): newest first by creation, all of them or a page of
    `limit` and then `cursor` for the next (a run's creation never changes, its update does: docs/api-paging.md)."""

    task_id: uuid.UUID
    status: Literal["all", "queued", "running", "failure", "success"] = "all"
    limit: int | None = Field(None, ge=1, le=1000, description="The number of runs to answer (the seed's); with "
                              "`order` \"created\", a page of at most this many and its next cursor when more follow.")
    order: Literal["updated", "created"] = Field("updated", description="Railyard: \"updated\" (the seed's order, "
                                                 "most recently updated first) or \"created\" (newest first by "
                                                 "creation: the order that pages, with `limit` and `cursor`).")
    cursor: str | None = key_cursor_field("task/list_task_runs (order \"created\")")


RUNS_PAGES_HINT = too_large_hint("task/list_task_runs", True).replace("pass limit", 'pass order "created" and limit')
"""How to read a task's runs that pass what one answer carries: in pages of order "created" (the seed's `limit` alone
answers the most recently updated runs, no cursor)."""


class TaskRunRecord(Message):
    task: uuid.UUID
    run_id: uuid.UUID
    status: RunStatus
    exit_code: int | None = Field(None, description="Railyard: the process's exit code.")
    reason: str | None = Field(None, description="Railyard: why a run failed (exit code, limit, kill).")
    scheduled_for: str | None = Field(None, description="Railyard: the schedule point a scheduled run is for.")
    created_at: str
    updated_at: str


class TaskRuns(Message, NextCursor):
    runs: list[TaskRunRecord]


class GetRunLogs(Command):
    """A run's log lines: all of them, the last `lines`, or (Railyard) pages from the first line: `limit`, then the
    answer's `next_cursor` as `cursor` (docs/api-paging.md)."""

    id: uuid.UUID
    lines: int | None = Field(None, gt=0, le=100_000, description="The last this many lines (default: all).")
    limit: int | None = Field(None, ge=1, le=MAX_LOG_PAGE, description=(
        "Railyard: a page of at most this many lines from the first (fewer when they pass 4 MiB of JSON) and "
        "`next_cursor` while more follow or the run is still going; not with `lines`."))
    cursor: str | None = cursor_field("task/get_logs_for_run")


class RunLogs(Message, NextCursor):
    """The seed's `logs`, with the run's task and status (Railyard): a follower knows when the run has finished
    without being told its task. The status is read before the lines: a finished one comes with every line."""

    logs: list[str]
    task: uuid.UUID | None = Field(None, description="The run's task (Railyard).")
    status: RunStatus | None = Field(None, description="The run's status when its lines were read (Railyard).")


class TaskRunEvent(Event):
    """What the lineage and monitoring services learn about a run."""

    run_id: uuid.UUID
    task_id: uuid.UUID
    name: str | None = Field(None, description="The task's name.")
    orch_id: uuid.UUID
    orch_sha: str
    orch_name: str | None = Field(None, description="The orchestration's name (the lineage graph's card title).")
    workspace_id: int
    owner_id: str
    status: RunStatus
    exit_code: int | None = None
    reason: str | None = None


class TaskRunStarted(TaskRunEvent):
    """events.task_run.started"""


class TaskRunQueued(TaskRunEvent):
    """events.task_run.queued: a started run put back in the queue, its main.py never started (Railyard)."""


class TaskRunSucceeded(TaskRunEvent):
    """events.task_run.succeeded"""


class TaskRunFailed(TaskRunEvent):
    """events.task_run.failed"""


class IssueTaskToken(Command):
    """task_scheduler -> auth: a short-lived token for a run, with its task owner's rights in one workspace only
    (no admin rights). Only the task scheduler's bus identity may publish it."""

    user_id: str
    workspace_id: int
    ttl: int = Field(gt=0, le=24 * 3600 + 60)
    task_id: str
    # bounded: the run's id is its session, listed with its end in auth.revocations.list, whose page cursor
    # (ListRevocations.after, `3:<run_id>`) takes 1,024 characters at most; an id longer than that made every
    # verifier's paged read of the list fail (closed) until the run's token expired. The scheduler's are UUIDs
    run_id: str | None = Field(None, max_length=64, description=(
        "The run the token is for (the task scheduler's run id, a UUID; at most 64 characters): what calls that "
        "default a task run (the lineage input/output methods) name."))


class TaskTokenIssued(Message):
    access_token: str
    expires_in: int
