"""`railyard orchestrations ...` and `railyard tasks ...`: upload an orchestration zip (with progress), run it once
or on a schedule, follow its runs and print their logs, over `railyard_client.orchestrations.Orchestrations`."""

from __future__ import annotations

import json
import sys
import time
import uuid

import click

from railyard_client.errors import InvalidInput
from railyard_client.orchestrations import FINISHED, Orchestrations


def _orchestrations(workspace: str | None) -> Orchestrations:
    from railyard_client.cli import _client

    client = _client(workspace)
    return Orchestrations(client, client.current_workspace().id)


def _show(rows, columns, as_json, payload=None) -> None:
    from railyard_client.cli import show

    show(rows, columns, as_json, payload)


def _args(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("--args must be a JSON object (what the run's task_args() returns)")
    return value


class _Id(click.ParamType):
    """An orchestration, task or run id: a UUID, refused before anything is sent with where to find one (the
    server's answer named its own field, `id: Input should be a valid UUID`, not the argument)."""

    name = "uuid"

    def __init__(self, lister: str) -> None:
        self.lister = lister

    def convert(self, value, param, ctx):
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not an id (a UUID; {self.lister} lists them)", param, ctx)


ORCHESTRATION_ID = _Id("`railyard orchestrations list`")
TASK_ID = _Id("`railyard tasks list`")
RUN_ID = _Id("`railyard tasks runs TASK_ID`")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
workspace_option = click.option("--workspace", "-w", help="Workspace name or id (default: as for every command).")
ORCH_COLUMNS = ["id", "name", "status", "sha", "reason", "created_at"]
TASK_COLUMNS = ["id", "name", "status", "schedule", "orch_id", "created_at"]
RUN_COLUMNS = ["run_id", "status", "exit_code", "reason", "created_at", "updated_at"]
# `tasks logs --follow` of a run that failed reads on past its end until SETTLE_QUIET reads in a row (a second apart)
# bring no new line, SETTLE_READS at most: a run marked failed as lost whose supervisor was only paused writes its
# last lines when it wakes (a run that succeeded wrote every line before its end was recorded)
SETTLE_QUIET = 2
SETTLE_READS = 20


@click.group("orchestrations")
def orchestrations_app() -> None:
    """Orchestrations: zips with a main.py that tasks run."""


@orchestrations_app.command("upload")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--name", help="A name for the orchestration.")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting until it is ready.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for packaging.")
@workspace_option
@json_option
def upload(path: str, name: str | None, no_wait: bool, timeout: float, workspace: str | None, as_json: bool) -> None:
    """Upload the orchestration zip at PATH (waits until its requirements are installed)."""
    record = _orchestrations(workspace).upload(path, name, wait=not no_wait, timeout=timeout,
                                               progress=None if not as_json else False)
    _show([record], ORCH_COLUMNS if "status" in record else ["id"], as_json, record)


@orchestrations_app.command("list")
@workspace_option
@json_option
def list_orchestrations(workspace: str | None, as_json: bool) -> None:
    """The workspace's orchestrations and their status."""
    rows = _orchestrations(workspace).list()
    _show(rows, ORCH_COLUMNS, as_json)


@click.group("tasks")
def tasks_app() -> None:
    """Tasks (an orchestration run once or on a schedule) and their runs."""


@tasks_app.command("run")
@click.argument("orchestration_id", type=ORCHESTRATION_ID)
@click.option("--args", "raw_args", help="JSON object the run's task_args() returns.")
@click.option("--name", help="A name for the task.")
@click.option("--timeout", type=int, help="Seconds a run may take before it is stopped.")
@click.option("--wait", is_flag=True, help="Wait for the run to finish, print its logs, exit 1 if it failed.")
@click.option("--id", "task_id", type=click.UUID, help="The task's id, chosen by you: the same again (a retry after "
              "a lost answer) answers that task and starts no second run.")
@workspace_option
@json_option
def run(orchestration_id: str, raw_args: str | None, name: str | None, timeout: int | None, wait: bool,
        task_id: uuid.UUID | None, workspace: str | None, as_json: bool) -> int:
    """Run ORCHESTRATION_ID once."""
    orchestrations = _orchestrations(workspace)
    task = orchestrations.run_once(orchestration_id, _args(raw_args), name=name, timeout=timeout,
                                   task_id=None if task_id is None else str(task_id))
    if not wait:
        _show([task], ["id"], as_json, task)
        return 0
    finished = orchestrations.wait_for_run(task["id"], timeout=(timeout or 600) + 60)
    if as_json:
        _show([], None, True, {"task": task, "run": finished, "logs": orchestrations.logs(finished["run_id"])})
    else:
        for line in orchestrations.logs(finished["run_id"]):
            click.echo(line)
        click.echo(f"run {finished['run_id']}: {finished['status']}"
                   + (f" ({finished['reason']})" if finished.get("reason") else ""), err=True)
    return 0 if finished["status"] == "success" else 1


@tasks_app.command("schedule")
@click.argument("orchestration_id", type=ORCHESTRATION_ID)
@click.argument("cron")
@click.option("--args", "raw_args", help="JSON object the runs' task_args() returns.")
@click.option("--name", help="A name for the task.")
@click.option("--timeout", type=int, help="Seconds a run may take before it is stopped.")
@click.option("--missed", type=click.Choice(["fire_once", "skip"]), help="What a point missed while down does.")
@click.option("--concurrency", type=click.Choice(["allow", "forbid", "replace"], case_sensitive=False),
              help="What a point does while a run of the task is queued or running: allow (default) makes its run "
              "too, forbid makes none, replace stops them and makes its own.")
@click.option("--max-queued", type=click.IntRange(1, 100), help="With allow: runs of the task waiting to start at "
              "most (default 10).")
@click.option("--id", "task_id", type=click.UUID, help="The task's id, chosen by you: the same again makes no "
              "second task.")
@workspace_option
@json_option
def schedule(orchestration_id: str, cron: str, raw_args: str | None, name: str | None, timeout: int | None,
             missed: str | None, concurrency: str | None, max_queued: int | None, task_id: uuid.UUID | None,
             workspace: str | None, as_json: bool) -> None:
    """Run ORCHESTRATION_ID on CRON (minute hour day-of-month month day-of-week, in UTC; a sixth field, last, is
    seconds; or @hourly, @daily, @weekly, @monthly, @yearly) until killed: '0 6 * * 1-5' is 06:00 UTC on weekdays."""
    task = _orchestrations(workspace).run_scheduled(orchestration_id, cron, _args(raw_args), name=name,
                                                    timeout=timeout, missed_run_policy=missed,
                                                    task_id=None if task_id is None else str(task_id),
                                                    concurrency_policy=concurrency, max_queued=max_queued)
    _show([task], ["id"], as_json, task)


@tasks_app.command("list")
@workspace_option
@json_option
def list_tasks(workspace: str | None, as_json: bool) -> None:
    """The workspace's tasks."""
    rows = _orchestrations(workspace).tasks()
    _show(rows, TASK_COLUMNS, as_json)


@tasks_app.command("kill")
@click.argument("task_id", type=TASK_ID)
@workspace_option
@json_option
def kill(task_id: str, workspace: str | None, as_json: bool) -> None:
    """Stop TASK_ID (no more scheduled runs; a run in progress is stopped)."""
    record = _orchestrations(workspace).kill(task_id)
    _show([record], TASK_COLUMNS, as_json, record)


@tasks_app.command("runs")
@click.argument("task_id", type=TASK_ID)
@click.option("--status", type=click.Choice(["all", "queued", "running", "failure", "success"]), default="all",
              show_default=True, help="Only the runs in this status.")
@click.option("--limit", type=int, help="At most this many runs.")
@workspace_option
@json_option
def runs(task_id: str, status: str, limit: int | None, workspace: str | None, as_json: bool) -> None:
    """The runs of TASK_ID, newest first."""
    rows = _orchestrations(workspace).runs(task_id, status, limit)
    _show(rows, RUN_COLUMNS, as_json)


@tasks_app.command("logs")
@click.argument("run_id", type=RUN_ID)
@click.option("--lines", "-n", type=click.IntRange(min=1), help="Only the last N lines (with --follow: the last N"
              " written so far, then every new one, as tail -n N -f).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run has finished (one that"
              " failed: until two reads a second apart bring none, as a run marked lost may write after its end).")
@click.option("--task", "task_id", type=TASK_ID,
              help="The run's task, checked if given (not needed: the run's logs name their task).")
@workspace_option
@json_option
def logs(run_id: str, lines: int | None, follow: bool, task_id: str | None, workspace: str | None,
         as_json: bool) -> None:
    """Print the output of run RUN_ID in the seed's format."""
    orchestrations = _orchestrations(workspace)

    def checked(answer: dict) -> dict:
        if task_id and str(answer.get("task")) != str(task_id):  # checked with or without --follow
            raise InvalidInput(f"run {run_id} is a run of task {answer.get('task')}, not of {task_id}")
        return answer

    if not follow:
        # its status is read before its lines: finished = complete; every line a page at a time, or the last N
        found = checked(orchestrations.run_logs(run_id, lines))["logs"]
        if as_json:
            _show([], None, True, found)
        else:
            sys.stdout.write("".join(f"{line}\n" for line in found))
        return
    cursor = None  # the lines not printed yet start there: each poll reads only those (it read every line before)
    printed = quiet = settles = 0  # printed: of the lines from `cursor` on, those printed (a failed run read again)
    skip_to_last = lines  # -n N -f: of what the first read finds, only its last N lines (it printed every line)
    while True:
        answer = checked(orchestrations.run_logs_from(run_id, cursor))
        fresh = answer["logs"][printed:]
        if skip_to_last is not None:
            fresh, skip_to_last = fresh[-skip_to_last:], None
        for line in fresh:
            click.echo(line)
        following, ended = answer.get("next_cursor"), answer.get("status") in FINISHED
        if following is not None and not (ended and not fresh):
            cursor, printed = following, 0  # live, or lines still coming: the next poll from there
        else:  # finished and every line printed: a failed run's last page read again, past its lines (SETTLE_QUIET)
            if answer.get("status") != "failure":
                return
            # from the cursor of the last page read, not from the one this read started at: a run that had ended
            # before -f started was read whole from its first line at each of these reads
            cursor, printed = ((following, 0) if following is not None
                               else (answer["last_page_cursor"], answer["last_page_lines"]))
            quiet = 0 if fresh else quiet + 1
            settles += 1
            if quiet >= SETTLE_QUIET or settles >= SETTLE_READS:
                return
        time.sleep(1.0)
