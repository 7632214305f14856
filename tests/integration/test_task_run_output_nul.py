"""A task run whose code prints a NUL character (U+0000, which PostgreSQL refuses in text): the run ends as its code
did and keeps every line it printed, the NUL removed (services/task_scheduler/runner.py LogWriter.add). Before, the
first write of its lines failed, the run ended as `failure` ("the run could not be started:
CharacterNotInRepertoireError") though main.py exited 0, and task/get_logs_for_run answered no line at all. And
an orchestration whose requirements.txt holds a NUL (in a comment, which the requirement checks skip) is refused
with 400 invalid_orchestration, not a 500 when its text is stored. Through the HTTP API, on the real stack."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.task_scheduler import store
from tests.integration.conftest import service_schema
from tests.integration.test_orchestrations import (
    logs,
    make_zip,
    orchestrations,
    ready_orchestration,
    run_once,
    text_of,
    upload,
    wait_run,
)

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "task_scheduler" / "migrations"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_run_printing_a_nul_succeeds_and_keeps_its_lines(stack, alice):
    orch = ready_orchestration(stack, alice, {"main.py": "print('before'); print('a\\x00b'); print('after')"})
    task_id = run_once(stack, alice, orch)
    run = wait_run(stack, alice, task_id, {"success", "failure"})
    assert (run["status"], run["exit_code"], run["reason"]) == ("success", 0, None), run
    assert text_of(logs(stack, alice, run["run_id"])) == ["before", "ab", "after"]


def test_a_failing_run_with_a_nul_on_stderr_keeps_its_exit_status_and_lines(stack, alice):
    main = ("import sys\nprint('out\\x00put')\nsys.stderr.write('err\\x00or\\n')\nsys.stderr.flush()\n"
            "sys.exit(3)\n")
    orch = ready_orchestration(stack, alice, {"main.py": main})
    task_id = run_once(stack, alice, orch)
    run = wait_run(stack, alice, task_id, {"success", "failure"})
    assert (run["status"], run["exit_code"]) == ("failure", 3), run
    assert "could not be started" not in (run["reason"] or ""), run
    lines = logs(stack, alice, run["run_id"])
    assert sorted(text_of(lines)) == ["error", "output"]
    assert any(" stderr " in line and line.endswith("error") for line in lines), lines


def test_a_requirements_file_holding_a_nul_is_refused_and_nothing_is_stored(stack, alice):
    """A NUL in a comment passed the requirement checks; storing the file's text failed: a 500, no reason given."""
    for text in ("httpx\n# a\x00b\n", "httpx  # pinned\x00\n"):
        response = upload(stack, alice, make_zip({"main.py": "", "requirements.txt": text}))
        assert response.status_code == 400, (text, response.text)
        assert response.json()["code"] == "invalid_orchestration" and "NUL" in response.json()["msg"], response.text
    assert orchestrations(stack, alice) == []


async def test_a_reason_quoting_output_with_a_nul_is_stored_without_it(stack):
    """A run's reason and an environment's may quote what users' code or an installer printed (the launcher's
    stderr excerpt, pip's last lines): store.finish_run and store.finish_env keep them without NULs; before, the
    UPDATE failed, so the run stayed `running` until declared lost and the environment `installing`."""
    async with service_schema(stack, "task_scheduler_nul", MIGRATIONS) as pool:
        sha = "1" * 64
        orch_id, task_id = uuid.uuid4(), uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            assert await store.ensure_env(conn, sha, "httpx\n") == "installing"
            await store.insert_orchestration(conn, id=orch_id, workspace_id=7, sha="0" * 64, name=None,
                                             file_name="o.zip", entrypoint="main.py", requirements_sha=sha,
                                             owner_id="u", status="packaging", reason=None)
            await store.insert_task(conn, id=task_id, workspace_id=7, orch_id=orch_id, orch_sha="0" * 64, name=None,
                                    owner_id="u", args={}, timeout_seconds=60, schedule=None,
                                    missed_run_policy=None, next_fire=None)
            run_id = await store.queue_once(conn, task_id, 7)
        assert (await store.claim_env(pool, "me", 60))["requirements_sha"] == sha
        assert await store.finish_env(pool, sha, "me", False, "installing the requirements failed:\nbuild said a\x00b")
        assert await pool.fetchval("SELECT reason FROM envs") == "installing the requirements failed:\nbuild said ab"
        assert tuple(await pool.fetchrow("SELECT status, reason FROM orchestrations")) == (
            "failed", "installing the requirements failed:\nbuild said ab")

        await pool.execute("UPDATE runs SET status = 'running', supervisor = 'me' WHERE id = $1", run_id)
        assert await store.finish_run(pool, run_id, "me", "failure", 125, "the sandbox said: x\x00y")
        assert tuple(await pool.fetchrow("SELECT status, exit_code, reason FROM runs")) == (
            "failure", 125, "the sandbox said: xy")
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # its events.task_run.failed
