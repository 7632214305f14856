"""What code running as an orchestration task reads from its environment.

The task scheduler starts every task run with these environment variables (the contract; nothing else is
needed to use the SDK inside a run):

| variable | meaning |
|---|---|
| `TASK_ID` | the task's UUID (as in the seed's task records) |
| `TASK_RUN_ID` | this run's UUID |
| `ORCH_SHA` | sha256 of the orchestration's zip |
| `ORCH_OWNER_ID` | the user id of the orchestration's owner |
| `TASK_ARGS_FILE` | path of a JSON object: the run's arguments (`json` of `run_once`/`run_scheduled`) |
| `TASK_ARGS` | the same JSON object inline (used when `TASK_ARGS_FILE` is not set) |
| `RAILYARD_CLIENT_URL` | the gateway's URL as the run reaches it |
| `RAILYARD_CLIENT_TOKEN` | a short-lived token scoped to the task's workspace |
| `RAILYARD_CLIENT_WORKSPACE` | the task's workspace id |

So `Client()` with no arguments connects as the task, `in_task()` is true and `task_args()` returns the
arguments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from railyard_client.errors import ConfigurationError

ENV_TASK_ID = "TASK_ID"
ENV_TASK_RUN_ID = "TASK_RUN_ID"
ENV_ORCH_SHA = "ORCH_SHA"
ENV_ORCH_OWNER_ID = "ORCH_OWNER_ID"
ENV_TASK_ARGS_FILE = "TASK_ARGS_FILE"
ENV_TASK_ARGS = "TASK_ARGS"


def in_task() -> bool:
    """True when this code runs as an orchestration task (the scheduler set `TASK_ID` and `ORCH_SHA`)."""
    return bool(os.environ.get(ENV_TASK_ID)) and bool(os.environ.get(ENV_ORCH_SHA))


def task_args() -> dict[str, Any]:
    """The arguments the task was run with ({} outside a task or when it was given none)."""
    if not in_task():
        return {}
    path = os.environ.get(ENV_TASK_ARGS_FILE)
    raw = None
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the task's arguments from {path}: {exc}") from None
    elif os.environ.get(ENV_TASK_ARGS):
        raw = os.environ[ENV_TASK_ARGS]
    if not raw or not raw.strip():
        return {}
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"the task's arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ConfigurationError("the task's arguments must be a JSON object")
    return args


def task_info() -> dict[str, str]:
    """The run's identity: task_id, task_run_id, orch_sha, orch_owner_id (empty outside a task)."""
    if not in_task():
        return {}
    names = {"task_id": ENV_TASK_ID, "task_run_id": ENV_TASK_RUN_ID, "orch_sha": ENV_ORCH_SHA,
             "orch_owner_id": ENV_ORCH_OWNER_ID}
    return {key: os.environ.get(env, "") for key, env in names.items()}
