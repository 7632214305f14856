"""Orchestrations, tasks and task runs from Python (seed 001's "ML Workload Orchestration"): upload a zip with a
`main.py`, run it once or on a cron schedule, follow its runs and read their logs.

    from railyard_client import Client, Orchestrations

    orchestrations = Orchestrations(Client(), workspace_id)
    orch = orchestrations.upload("my_orchestration.zip", name="retrain")   # waits until ready
    task = orchestrations.run_once(orch["id"], args={"pipeline": "fraud"}, timeout=600)
    run = orchestrations.wait_for_run(task["id"])                            # the first run, finished
    print("\\n".join(orchestrations.logs(run["run_id"])))
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from railyard_client import session as sessions
from railyard_client.errors import InvalidInput, RailyardError, WaitTimeout
from railyard_client.progress import ProgressReader, upload_bar, wanted

FINISHED = ("success", "failure")
RUN_LOG_PAGE = 10_000  # lines a page of task/get_logs_for_run (the service also stops a page at 4 MiB of JSON)


class OrchestrationFailed(RailyardError):
    """An orchestration's packaging (unpacking, installing its requirements) ended in `failed`."""


class Orchestrations:
    """The orchestrations, tasks and task runs of one workspace, over a `Client`.

    An orchestration is a zip with a `main.py` (at the root, else the shallowest in a folder) and at most one
    `requirements.txt` (installed once per distinct file); each run executes `main.py`, where `Client()` connects as
    the task and `task_args()` returns the run's `args` (docs/orchestrations.md):

        orchestrations = Orchestrations(client, client.current_workspace().id)
        orch = orchestrations.upload("orch.zip", name="retrain")                # waits until ready
        task = orchestrations.run_once(orch["id"], args={"pipeline": "fraud"})
        run = orchestrations.wait_for_run(task["id"])                            # its first run, finished
        print("\\n".join(orchestrations.logs(run["run_id"])))
    """

    def __init__(self, client: Any, workspace_id: int) -> None:
        """`Orchestrations(client, client.current_workspace().id)`: the orchestrations, tasks and runs of that
        workspace, signed in as the client is."""
        self._session = client._session
        self.workspace_id = int(workspace_id)

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        return self._session.post(route, body)

    # --- orchestrations ----------------------------------------------------------------------------------

    def upload(self, source: str | Path | bytes | IO[bytes], name: str | None = None, *,
               file_name: str | None = None, wait: bool = True, timeout: float = 600.0,
               progress: bool | None = None) -> dict[str, Any]:
        """Upload an orchestration zip (a path, bytes or an open binary file). With `wait`, returns its record
        once packaging is done and raises `OrchestrationFailed` with the installer's reason if it failed."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():  # "no such file" said the folder was not there
                raise InvalidInput(f"{path} is a folder: upload a zip of it, main.py at its root (cd {path} && zip -r "
                                   f"../{path.name or 'orchestration'}.zip .)")
            if not path.is_file():
                raise InvalidInput(f"no such file: {path}")
            handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
            file_name, size, opened = file_name or path.name, path.stat().st_size, True
        elif isinstance(source, (bytes, bytearray, memoryview)):
            handle, size, opened = io.BytesIO(bytes(source)), len(source), False
            file_name = file_name or "orchestration.zip"
        else:
            handle, opened = source, False
            size = os.fstat(source.fileno()).st_size if hasattr(source, "fileno") else 0
            file_name = file_name or os.path.basename(str(getattr(source, "name", "orchestration.zip")))
        metadata: dict[str, Any] = {"workspace_id": self.workspace_id}
        if name:
            metadata["name"] = name
        try:
            with upload_bar(file_name, size, wanted(progress, size)) as (bar, task):
                reader = ProgressReader(handle, size, bar, task)
                response = self._session.send(
                    "POST", "/v1/api/orchestration/upload",
                    files={"file": (file_name, reader, "application/zip"),
                           "metadata": (None, json.dumps(metadata), "application/json")})
        finally:
            if opened:
                handle.close()
        created = response.json()
        return self.wait_ready(created["id"], timeout) if wait else created

    def list(self) -> list[dict[str, Any]]:
        """The workspace's orchestrations, oldest first, each with its status (packaging, ready, failed) and reason
        (read a page at a time: docs/api-paging.md)."""
        return list(self._session.post_pages("orchestration/list", {"workspace_id": self.workspace_id}))

    def get(self, orchestration_id: str) -> dict[str, Any]:
        """One orchestration's record, by id (the list read up to the page that holds it)."""
        for record in self._session.post_pages("orchestration/list", {"workspace_id": self.workspace_id}):
            if str(record["id"]) == str(orchestration_id):
                return record
        from railyard_client.errors import NotFound

        raise NotFound(404, "not_found", f"no orchestration {orchestration_id} in workspace {self.workspace_id}")

    def wait_ready(self, orchestration_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until packaging is done: the record when ready, `OrchestrationFailed` when it failed."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(orchestration_id)
            if record["status"] == "ready":
                return record
            if record["status"] == "failed":
                raise OrchestrationFailed(f"orchestration {orchestration_id} failed to package: {record['reason']}")
            if time.monotonic() > deadline:
                raise WaitTimeout(f"orchestration {orchestration_id} still packaging after {timeout:g}s")
            time.sleep(0.5)

    # --- tasks --------------------------------------------------------------------------------------------

    def run_once(self, orchestration_id: str, args: dict[str, Any] | None = None, *, name: str | None = None,
                 timeout: int | None = None, task_id: str | None = None) -> dict[str, Any]:
        """Run an orchestration once; `args` is what the run's `task_args()` returns. Returns `{"id": task}`.
        `task_id` (a UUID you choose) makes the call safe to retry after an answer that never came (a timeout): the
        same `task_id` again, for the same orchestration, answers the task the first call made and starts no
        second run (`Conflict`, code `task_id_taken`, if another task has it)."""
        body: dict[str, Any] = {"orch_id": str(orchestration_id), "workspace_id": self.workspace_id,
                                "json": args or {}}
        if name:
            body["name"] = name
        if timeout is not None:
            body["timeout"] = timeout
        if task_id is not None:
            body["id"] = str(task_id)
        return self._post("task/run_once", body)

    def run_scheduled(self, orchestration_id: str, schedule: str, args: dict[str, Any] | None = None, *,
                      name: str | None = None, timeout: int | None = None,
                      missed_run_policy: str | None = None, task_id: str | None = None,
                      concurrency_policy: str | None = None, max_queued: int | None = None) -> dict[str, Any]:
        """Run an orchestration on a cron schedule (minute hour day-of-month month day-of-week, in UTC; a sixth
        field, last, is seconds; or a macro: @hourly, @daily, @weekly, @monthly, @yearly) until killed;
        `missed_run_policy` is `fire_once` (the default) or `skip`; `task_id` as in `run_once` (the same again
        makes no second task). `concurrency_policy`, as a Kubernetes CronJob's, says what a point does while a run
        of the task is queued or running: `allow` (the default) makes its run all the same, up to `max_queued`
        (1-100, default 10) waiting to start; `forbid` makes none; `replace` stops those runs and makes its own.
        Returns `{"id": task}`."""
        body: dict[str, Any] = {"orch_id": str(orchestration_id), "workspace_id": self.workspace_id,
                                "json": args or {}, "schedule": schedule}
        given = {"name": name or None, "timeout": timeout, "missed_run_policy": missed_run_policy or None,
                 "concurrency_policy": concurrency_policy, "max_queued": max_queued,
                 "id": None if task_id is None else str(task_id)}  # an empty name or missed-run policy: not sent
        body |= {key: value for key, value in given.items() if value is not None}
        return self._post("task/run_scheduled", body)

    def task(self, task_id: str) -> dict[str, Any]:
        """A task with its status and last runs."""
        return self._post("task/get_by_id", {"id": str(task_id)})

    def tasks(self) -> list[dict[str, Any]]:
        """The workspace's tasks, oldest first, each with its last runs (read a page at a time:
        docs/api-paging.md)."""
        return list(self._session.post_pages("task/list", {"workspace_id": self.workspace_id}))

    def tasks_by_sha(self, sha: str) -> list[str]:
        """The ids of the tasks of an orchestration, by the sha256 of its zip."""
        return self._post("task/get_tasks_by_orch_sha", {"sha": sha})["ids"]

    def kill(self, task_id: str) -> dict[str, Any]:
        """Stop a task: a scheduled task fires no more, a run in progress is stopped and marked so."""
        return self._post("task/kill", {"id": str(task_id)})

    # --- runs ---------------------------------------------------------------------------------------------

    def runs(self, task_id: str, status: str = "all", limit: int | None = None) -> list[dict[str, Any]]:
        """A task's runs, newest first (by creation: docs/api-paging.md); `status` is all, queued, running, failure
        or success. `limit`: the newest this many (one request up to a page); else all of them, read a page at a
        time."""
        # order "created": the order that pages (the seed's, by update, moves while runs run: docs/api-paging.md)
        body: dict[str, Any] = {"task_id": str(task_id), "status": status, "order": "created"}
        if limit is not None and limit <= sessions.LIST_PAGE:
            return self._post("task/list_task_runs", {**body, "limit": limit})
        pages = self._session.post_pages("task/list_task_runs", body)
        return list(pages if limit is None else itertools.islice(pages, limit))

    def logs(self, run_id: str, lines: int | None = None) -> list[str]:
        """A run's output as the seed's lines (`<RFC 3339 time> stdout F <line>`); `lines`: the last this many."""
        return self.run_logs(run_id, lines)["logs"]

    def run_logs(self, run_id: str, lines: int | None = None) -> dict[str, Any]:
        """`logs` with the run's `task` and `status` (read before the lines: a finished run's come complete).
        Every line is read a page at a time (`limit`, `cursor`: docs/orchestrations.md), so a run whose lines pass
        one reply (8 MiB) reads whole; `lines`: the last this many, in one request."""
        if lines is not None:
            return self._post("task/get_logs_for_run", {"id": str(run_id), "lines": lines})
        return self.run_logs_from(run_id)

    def run_logs_from(self, run_id: str, cursor: str | None = None) -> dict[str, Any]:
        """The run's lines from `cursor` (None: the first) to the last written so far, read a page at a time, with
        the run's `task` and `status` and `next_cursor`: where its next lines will start while the run goes on, None
        once it has finished and every line was read. A follower passes it back (`railyard tasks logs -f`).
        `last_page_cursor` is the cursor the last page was read from and `last_page_lines` how many of `logs` it
        answered: a reader of a finished run's late lines (one marked failed as lost may still write) reads again
        from there, past those lines, not from `cursor`."""
        found: list[str] = []
        while True:
            body: dict[str, Any] = {"id": str(run_id), "limit": RUN_LOG_PAGE}
            if cursor is not None:
                body["cursor"] = cursor
            page = self._post("task/get_logs_for_run", body)
            found += page["logs"]
            following = page.get("next_cursor")
            # no next_cursor: finished and read; a page with no lines: the end of what a live run wrote so far (its
            # next_cursor is the one it was given)
            if following is None or not page["logs"]:
                return {**page, "logs": found, "next_cursor": following, "last_page_cursor": cursor,
                        "last_page_lines": len(page["logs"])}
            cursor = following

    def wait_for_run(self, task_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until the task's newest run has finished (success or failure) and return its record."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(task_id, limit=1)
            if runs and runs[0]["status"] in FINISHED:
                return runs[0]
            if time.monotonic() > deadline:
                raise WaitTimeout(f"task {task_id} has no finished run after {timeout:g}s")
            time.sleep(0.5)
