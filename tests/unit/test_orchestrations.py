"""Orchestration zips, requirements files, cron schedules and the log line format, without servers."""

from __future__ import annotations

import asyncio
import stat
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.task_scheduler import handlers, packaging
from shared.errors import InvalidRequest
from shared.settings import TaskSettings

SETTINGS = TaskSettings(max_zip_files=10, max_unpacked_bytes=50 * 1024 * 1024)


def make_zip(path: Path, members: dict[str, bytes | str], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_entrypoint_at_root_wins(tmp_path):
    checked = packaging.check_zip(make_zip(tmp_path / "a.zip", {"b/main.py": "", "main.py": "print(1)"}), SETTINGS)
    assert checked.entrypoint == "main.py" and checked.requirements is None


def test_entrypoint_first_in_a_subdirectory(tmp_path):
    checked = packaging.check_zip(make_zip(tmp_path / "a.zip", {"z/main.py": "", "a/b/main.py": "", "c/main.py": "",
                                                                  "requirements.txt": "httpx\n"}), SETTINGS)
    assert checked.entrypoint == "c/main.py" and checked.requirements == "httpx\n"


@pytest.mark.parametrize(("members", "symlink", "message"), [
    ({"run.py": ""}, None, "no main.py"),
    ({"main.py": "", "requirements.txt": "", "x/requirements.txt": ""}, None, "more than one requirements.txt"),
    ({"main.py": "", "../evil.py": ""}, None, "escapes the archive"),
    ({"main.py": "", "/etc/cron.d/x": ""}, None, "absolute path"),
    ({"main.py": ""}, "link", "symbolic link"),
    ({"main.py": "", **{f"f{i}": "" for i in range(10)}}, None, "more than the 10 allowed"),
    ({"main.py": "", "bomb": b"\0" * (20 * 1024 * 1024)}, None, "compressed more than"),
    ({"main.py": "", "requirements.txt": "--index-url https://evil.example/simple\n"}, None, "options are not"),
])
def test_bad_zips_are_refused(tmp_path, members, symlink, message):
    with pytest.raises(InvalidRequest, match=message):
        packaging.check_zip(make_zip(tmp_path / "a.zip", members, symlink=symlink), SETTINGS)


def test_total_size_and_not_a_zip(tmp_path):
    small = TaskSettings(max_unpacked_bytes=1000)
    with pytest.raises(InvalidRequest, match="unpacks to more than 1000 bytes"):
        packaging.check_zip(make_zip(tmp_path / "a.zip", {"main.py": "x" * 2000}), small)
    (tmp_path / "b.zip").write_bytes(b"PK not really")
    with pytest.raises(InvalidRequest, match="not a zip archive"):
        packaging.check_zip(tmp_path / "b.zip", SETTINGS)


@pytest.mark.parametrize("line", [
    "--index-url https://pypi.example/simple", "--extra-index-url https://x/simple", "-i https://x/simple",
    "-e .", "--editable git+https://github.com/x/y", "git+https://github.com/x/y.git", "https://x/y-1.0.whl",
    "pkg @ https://x/pkg.whl", "./local_pkg", "/abs/path/pkg", "../up", "-r other.txt", "-c constraints.txt",
    "--find-links /tmp/w", "pkg --hash=sha256:abc", "not a requirement!",  # not-a-machine-path: refused input
])
def test_source_changing_requirement_lines_are_refused(line):
    with pytest.raises(InvalidRequest, match="line 2"):
        packaging.check_requirements(f"httpx==0.27.0\n{line}\n")


def test_plain_requirements_pass():
    text = "# pinned\nhttpx==0.27.0\nnumpy>=1.26 ; python_version >= '3.9'\n\nrequests[socks]~=2.31  # comment\n"
    assert packaging.check_requirements(text) == ["httpx==0.27.0", "numpy>=1.26 ; python_version >= '3.9'",
                                                  "requests[socks]~=2.31"]


@pytest.mark.parametrize("schedule", ["*/1 * * * *", "0 6 * * 0", "*/2 * * * * *", " 5  4 * * sun "])
def test_good_schedules(schedule):
    assert handlers.check_schedule(schedule)


@pytest.mark.parametrize("schedule", ["* * * *", "61 * * * *", "* 25 * * *", "hourly", "* * * * * * *", "a b c d e"])
def test_bad_schedules(schedule):
    with pytest.raises(InvalidRequest):
        handlers.check_schedule(schedule)


@pytest.mark.parametrize("schedule", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 5#5"])
def test_a_schedule_no_date_matches_is_refused(schedule):
    """Valid fields, no date (found by hand after `make fuzz-api`): croniter raised storing the task, a 500."""
    with pytest.raises(InvalidRequest, match="never fires: no date matches it") as caught:
        handlers.check_schedule(schedule)
    assert caught.value.code == "invalid_schedule"
    assert handlers.check_schedule("0 0 29 2 *")  # every leap year fires


# the macros a Kubernetes CronJob takes (docs/orchestrations.md): refused before as "has 1 fields; cron needs 5"
@pytest.mark.parametrize(("macro", "expected"), [
    ("@hourly", datetime(2026, 12, 1, 5, 0, tzinfo=UTC)), ("@daily", datetime(2026, 12, 2, tzinfo=UTC)),
    ("@midnight", datetime(2026, 12, 2, tzinfo=UTC)), ("@weekly", datetime(2026, 12, 6, tzinfo=UTC)),  # a Sunday
    ("@monthly", datetime(2027, 1, 1, tzinfo=UTC)), ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
    ("@annually", datetime(2027, 1, 1, tzinfo=UTC)), (" @Hourly ", datetime(2026, 12, 1, 5, 0, tzinfo=UTC))])
def test_kubernetes_cron_macros_are_taken(macro, expected):
    from datetime import timedelta

    from services.task_scheduler.scheduler import due_point

    after = datetime(2026, 12, 1, 4, 30, 15, tzinfo=UTC)
    stored = handlers.check_schedule(macro)
    assert stored == macro.strip().lower()
    assert handlers.next_point(stored, after) == expected
    # the scheduler's reading of the stored schedule: the point is due, the next one follows
    point, following, missed = due_point(stored, expected, expected + timedelta(seconds=1), "fire_once",
                                         timedelta(seconds=30))
    assert point == expected and following > expected and missed == 0


@pytest.mark.parametrize("schedule", ["CRON_TZ=Europe/Paris 0 6 * * *", "TZ=UTC 0 6 * * *",
                                      "cron_tz=Asia/Tokyo @daily"])
def test_a_time_zone_prefix_is_refused_saying_schedules_are_utc(schedule):
    with pytest.raises(InvalidRequest, match="time zones are not supported .*: schedules are UTC") as caught:
        handlers.check_schedule(schedule)
    assert caught.value.code == "invalid_schedule"


def test_other_at_words_and_one_field_are_refused_naming_the_macros():
    for schedule in ("@reboot", "@every", "@"):
        with pytest.raises(InvalidRequest, match="not a cron macro Railyard reads: @yearly, @annually") as caught:
            handlers.check_schedule(schedule)
        assert caught.value.code == "invalid_schedule"
    with pytest.raises(InvalidRequest, match="has 1 field; cron needs 5"):
        handlers.check_schedule("hourly")


@pytest.mark.parametrize("schedule", ["@every 5m", "@every 1h30m", "@hourly 5", "@daily * * * *", "@reboot now"])
def test_an_at_word_with_more_fields_is_refused_as_a_macro_naming_the_forms_taken(schedule):
    """'@every 5m' (robfig/cron's interval) was a 400 "has 2 fields; cron needs 5": it named neither the macro nor the
    macros and forms taken (`railyard tasks schedule X '@every 5m'` showed it as such)."""
    with pytest.raises(InvalidRequest) as caught:
        handlers.check_schedule(schedule)
    assert caught.value.code == "invalid_schedule"
    message = str(caught.value)
    assert "not a cron macro Railyard reads: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly" \
        in message
    assert "5 fields: minute hour day-of-month month day-of-week" in message and "field;" not in message
    assert ("'@every <interval>' is not cron" in message) == schedule.startswith("@every")


def test_schedule_field_order_is_standard_cron():
    # minute hour day-of-month month day-of-week: "30 6 * * *" is 06:30 every day
    after = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert handlers.next_point("30 6 * * *", after) == datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
    # a 6th field is seconds (Railyard): every 2 seconds
    assert handlers.next_point("* * * * * */2", after) == datetime(2026, 12, 1, 4, 0, 2, tzinfo=UTC)


def test_log_line_format():
    at = datetime(2023, 5, 22, 21, 9, 17, 683428, tzinfo=UTC)
    assert handlers.log_line(at, "stdout", False, "Deploying the pipeline.") == \
        "2023-05-22T21:09:17.683428Z stdout F Deploying the pipeline."
    assert handlers.log_line(at, "stderr", True, "x").split()[1:3] == ["stderr", "P"]


async def test_log_writer_cuts_long_lines_and_caps_bytes():
    from services.task_scheduler import runner

    got = []

    async def sink(lines):
        got.extend(lines)

    writer = runner.LogWriter(sink=sink, max_bytes=100_000)
    reader = asyncio.StreamReader()
    reader.feed_data(b"one\r\ntwo\n" + b"x" * (runner.MAX_LINE + 10) + b"\nlast")
    reader.feed_eof()
    await runner._pump(reader, "stdout", writer)
    await writer.flush()
    assert [(s, p, line[:5]) for _, s, p, line in got] == [
        ("stdout", False, "one"), ("stdout", False, "two"), ("stdout", True, "xxxxx"), ("stdout", False, "xxxxx"),
        ("stdout", False, "last")]
    capped = runner.LogWriter(sink=sink, max_bytes=10)
    for _ in range(5):
        capped.add("stdout", False, "abcdef")
    assert len(capped.pending) == 2 and "log cut" in capped.pending[-1][3]


def test_zip_reader_is_bounded(tmp_path):
    # a requirements.txt larger than allowed is refused before it is read
    big = make_zip(tmp_path / "a.zip", {"main.py": "", "requirements.txt": "a\n" * 200_000})
    with pytest.raises(InvalidRequest, match="requirements.txt is larger"):
        packaging.check_zip(big, TaskSettings())


def test_due_point_policies():
    from datetime import timedelta

    from services.task_scheduler.scheduler import due_point

    t0 = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    grace = timedelta(seconds=30)
    # on time: the point itself, the next one after now, nothing missed
    assert due_point("*/5 * * * *", t0, t0 + timedelta(seconds=1), "fire_once", grace) == (
        t0, t0 + timedelta(minutes=5), 0)
    # down for 17 minutes: only the latest point (04:15) is considered, 3 before it were missed
    late = t0 + timedelta(minutes=17)
    assert due_point("*/5 * * * *", t0, late, "fire_once", grace) == (
        t0 + timedelta(minutes=15), t0 + timedelta(minutes=20), 3)
    assert due_point("*/5 * * * *", t0, late, "skip", grace) == (None, t0 + timedelta(minutes=20), 3)
    # skip still runs a point that is only a little late
    assert due_point("*/5 * * * *", t0, t0 + timedelta(seconds=20), "skip", grace)[0] == t0
    # seconds schedules
    assert due_point("* * * * * */2", t0, t0 + timedelta(seconds=5), "fire_once", grace) == (
        t0 + timedelta(seconds=4), t0 + timedelta(seconds=6), 2)


def test_task_status():
    from services.task_scheduler.handlers import _task_status

    once = {"killed": False, "schedule": None}
    assert _task_status(once, []) == "pending"
    assert _task_status(once, [{"status": "queued", "running": True}]) == "pending"
    assert _task_status(once, [{"status": "running", "running": True}]) == "started"
    assert _task_status(once, [{"status": "failure", "running": False}]) == "failed"
    # a scheduled task reads pending until a run of it leaves the queue, as a one-shot task does (seed 001: pending,
    # started, failed; a run "running: The task has started"). Until session 42 it read started with its only run
    # still queued for room
    # (`started`: the run was started, started_at set; a run replaced while it waited was not)
    scheduled = {"killed": False, "schedule": "* * * * *", "next_fire": "2026-12-06T18:00:00+00:00"}
    waiting = {"status": "queued", "running": True, "started": False}
    assert _task_status(scheduled, []) == "pending"
    assert _task_status(scheduled, [waiting]) == "pending"
    assert _task_status(scheduled, [waiting], left_queue=True) == "started"
    assert _task_status(scheduled, [waiting, {"status": "running", "running": True, "started": True}]) == "started"
    assert _task_status(scheduled, [waiting, {"status": "failure", "running": False, "started": True}]) == "started"
    assert _task_status(scheduled, [waiting, {"status": "failure", "running": False, "started": False}]) == "pending"
    cron = {"killed": True, "schedule": "* * * * *"}
    assert _task_status(cron, [{"status": "running", "running": True}]) == "pending_kill"
    assert _task_status(cron, [{"status": "success", "running": False}]) == "killed"
