"""A registry conversion's stderr excerpt and a task run's log lines (and its reason, quoted from them) name a
traceback's files as a request's error does (shared/traceback_paths.py, the engine's since f4c57130, 59b346a2 and
8d122876), not by the host's paths. Session 37's note: services/registry/worker.py's excerpt and orchestration task
logs still showed the data directory (the registry's and the runs' work folders), the installation and the
orchestration's environment."""

from __future__ import annotations

import asyncio
import sys

import pytest

from services.registry.worker import MAX_STDERR_EXCERPT, WorkerEnd, answer_and_verdict
from services.task_scheduler import runner
from shared.settings import RegistrySettings
from shared.traceback_paths import named_files, shown_file

HOST = ("/srv/data", "/opt/railyard", "registry-work", "/runs/", ".venv", "envs/", "site-packages", "python3.")
TRACEBACK = ('Traceback (most recent call last):\n'
             '  File "/srv/data/.railyard/registry-work/6f1c/step.py", line 3, in <module>\n'
             '    import sklearn\n'
             '  File "/opt/railyard/.venv/lib/python3.11/site-packages/sklearn/base.py", line 9, in fit\n'
             '  File "/usr/lib/python3.11/json/decoder.py", line 2, in decode\n'
             'ValueError: no\n')


def _excerpt(stderr: str) -> str:
    answer, _ = answer_and_verdict(RegistrySettings(), "python", WorkerEnd(1, b"", stderr, None),
                                   stderr_allowed=True)
    return answer["error"].split("(the end of its output: ", 1)[1]


def test_a_conversions_excerpt_names_files_without_host_paths():
    said = _excerpt(TRACEBACK)
    assert not [part for part in HOST if part in said], said  # before: '/opt/railyard/.venv/lib/python3.11/...'
    assert 'File "step.py"' in said and 'File "sklearn/base.py"' in said and 'File "decoder.py"' in said, said


def test_a_path_cut_by_the_excerpts_start_is_named_too():
    """The excerpt is the output's last 300 characters: a path beginning before them was cut inside the host's
    folders ('railyard/.venv/lib/...'); it is named from the output read with room before the excerpt."""
    frame = '  File "/opt/railyard/.venv/lib/python3.11/site-packages/sklearn/base.py", line 9, in fit\n'
    end = "x" * (MAX_STDERR_EXCERPT - len(frame) + 40) + "\n"  # the excerpt starts 40 characters into the path
    said = _excerpt(TRACEBACK + frame + end)
    assert not [part for part in HOST if part in said], said


def test_a_task_runs_log_lines_and_stderr_tail_name_files_from_the_orchestration():
    async def sink(lines):
        pass

    writer = runner.LogWriter(sink=sink, max_bytes=100_000, roots=("/srv/data/.railyard/tasks/runs/r1",))
    writer.add("stderr", False, '  File "/srv/data/.railyard/tasks/runs/r1/lib/util.py", line 2, in load')
    writer.add("stderr", False, '  File "/srv/data/.railyard/task-envs/ab12/lib/python3.11/site-packages/'
                                'pandas/io/parsers.py", line 7, in read_csv')
    writer.add("stdout", False, '  File "/srv/data/.railyard/tasks/runs/r1/main.py", line 9, in <module>')
    lines = [line for _, _, _, line in writer.pending]
    assert lines == ['  File "lib/util.py", line 2, in load', '  File "pandas/io/parsers.py", line 7, in read_csv',
                     '  File "main.py", line 9, in <module>'], lines
    assert list(writer.stderr_tail) == lines[:2]  # the run's reason quotes these


def test_a_run_names_its_working_folder_for_its_lines(tmp_path, monkeypatch):
    """execute gives the writer the run's folder, as the run's process sees it, before main.py starts."""
    class Started(Exception):
        pass

    async def spawn(spec, **_):
        raise Started

    monkeypatch.setattr(runner, "spawn", spawn)
    plan = runner.RunPlan(run_id="r", workdir=tmp_path / "runs" / "r", zip_path=tmp_path / "o.zip",
                          entrypoint="main.py", python=sys.executable, env_dir=None, env={}, timeout=20,
                          memory_bytes=1 << 30, cpu_seconds=60)

    async def sink(lines):
        pass

    writer = runner.LogWriter(sink=sink, max_bytes=100)
    with pytest.raises(Started):
        asyncio.run(runner.execute(plan, writer, asyncio.Event()))
    assert str((tmp_path / "runs" / "r").resolve()) in writer.roots
    assert shown_file(f"{(tmp_path / 'runs' / 'r').resolve()}/pkg/main.py", writer.roots) == "pkg/main.py"


def test_a_root_names_its_own_files_only():
    assert shown_file("/srv/runs/r1/main.py", ("/srv/runs/r1",)) == "main.py"
    assert shown_file("/srv/runs/r10/lib/x.py", ("/srv/runs/r1",)) == "x.py"  # not under it: its name
    assert shown_file("/srv/runs/r10/x/site-packages/a/b.py", ("/srv/runs/r1/",)) == "a/b.py"


@pytest.mark.parametrize("text", ['wrote File "/data/out/model.onnx" (3 MB)', 'File "/ is the root", said the doc',
                                  'File "/srv/data/report.csv", lines 3-9 read'])
def test_a_runs_own_text_that_is_no_traceback_line_is_kept_as_printed(text):
    """A task run's log lines are its output: only a traceback's frame (`File "/...", line N`) is renamed. e0e12372
    renamed any `File "/...` a run printed ('wrote File "model.onnx"', 'File " is the root"')."""
    async def sink(lines):
        pass

    writer = runner.LogWriter(sink=sink, max_bytes=100_000, roots=("/srv/data",))
    writer.add("stdout", False, text)
    writer.add("stderr", False, text + '\n  File "/srv/data/main.py", line 2, in <module>')
    assert [line for _, _, _, line in writer.pending] == [text, text + '\n  File "main.py", line 2, in <module>']


ROOT = "/srv/data/.railyard/tasks/runs/r1"
SAID = ['  File "/srv/data/.railyard/task-envs/ab12/lib/python3.11/site-packages/pandas/io/parsers.py", line 7, in f',
        f"FileNotFoundError: [Errno 2] No such file or directory: '{ROOT}/data/in.csv' (read by main.py)",
        f'{{"exc_info": "  File \\"{ROOT}/lib/util.py\\", line 2, in load"}}']


@pytest.mark.parametrize("ended", [True, False], ids=["line-ended", "line-arriving"])
@pytest.mark.parametrize("into", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("said", SAID, ids=["frame", "os-error", "json-frame"])
def test_a_host_path_across_a_long_lines_16_kib_cut_is_named(said, into, ended, monkeypatch):
    """A run's line longer than MAX_LINE (16 KiB) is stored in pieces, each named alone (LogWriter.add). They were cut
    at 16 KiB whatever stood there: a traceback's file or an OSError's across the cut was named in neither piece and
    its host path showed (session 42's review). Now a piece ends before a file the cut would split: by _emit for a
    line read whole, by _pump's own cut for one whose end has not come yet (read up to 10 bytes past the mark first,
    then the rest: the cut waits for what may follow it). `into`: how much of `said` stands before the 16-KiB mark."""
    async def sink(lines):
        pass

    async def pumped(*parts: bytes) -> runner.LogWriter:
        reader = asyncio.StreamReader()
        writer = runner.LogWriter(sink=sink, max_bytes=1 << 20, roots=(ROOT,))
        pump = asyncio.create_task(runner._pump(reader, "stderr", writer))
        for part in parts:
            reader.feed_data(part)
            for _ in range(3):
                await asyncio.sleep(0)  # the pump reads what came
        reader.feed_eof()
        await pump
        return writer

    monkeypatch.setattr(runner, "FLUSH_SECONDS", 60.0)  # a loaded machine's pause between the two reads cuts no piece
    line = "x" * (runner.MAX_LINE - int(len(said) * into)) + said + "y" * (runner.FILE_ROOM + 100)
    data = line.encode()
    writer = asyncio.run(pumped(data + b"\nnext") if ended else pumped(data[:runner.MAX_LINE + 10],
                                                                       data[runner.MAX_LINE + 10:]))
    pieces = [(partial, text) for _, _, partial, text in writer.pending][:-1 if ended else None]
    assert not [text for _, text in pieces if "/srv/data" in text], pieces  # before: the piece after the cut
    assert "".join(text for _, text in pieces) == named_files(line, (ROOT,))
    assert all(len(text.encode()) <= runner.MAX_LINE for _, text in pieces)
    assert [partial for partial, _ in pieces] == [True] * (len(pieces) - 1) + [False]


@pytest.mark.parametrize("after", ["sleeping", "trickling"])
def test_a_long_lines_piece_comes_within_a_flush_while_its_rest_does_not(after):
    """A run that prints over 16 KiB of a line and then sleeps (or goes on a few bytes at a time: a progress bar's
    '\\r' updates) gets its first piece within FLUSH_SECONDS of passing 16 KiB, as before 3e4fbc32. Since it, _pump
    cut a line not ended only once FILE_ROOM (6 KiB) more had come: 16-22 KiB and a sleep stayed unread until the
    run printed more or ended."""
    async def sink(lines):
        pass

    async def first_piece_after() -> float:
        reader = asyncio.StreamReader()
        writer = runner.LogWriter(sink=sink, max_bytes=1 << 20)
        pump = asyncio.create_task(runner._pump(reader, "stdout", writer))
        reader.feed_data(b"\r" + b"x" * (runner.MAX_LINE + 100))
        start = asyncio.get_running_loop().time()
        while not writer.pending and asyncio.get_running_loop().time() - start < 4 * runner.FLUSH_SECONDS:
            await asyncio.sleep(runner.FLUSH_SECONDS / 8)
            if after == "trickling":
                reader.feed_data(b"\r 42%|####")
        took = asyncio.get_running_loop().time() - start
        assert [partial for _, _, partial, _ in writer.pending] == [True]
        reader.feed_eof()
        await pump
        return took

    assert asyncio.run(first_piece_after()) <= 2 * runner.FLUSH_SECONDS


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_long_lines_pieces_end_between_two_characters(char):
    """A line over 16 KiB is cut into pieces of at most MAX_LINE bytes, each decoded alone: a cut inside a character
    of two to four bytes (UTF-8) stored it as two or three U+FFFD, one at the end of a piece and one at the start of
    the next. The cut is moved back to the character's first byte (at most 3 bytes)."""
    async def sink(lines):
        pass

    writer = runner.LogWriter(sink=sink, max_bytes=1 << 20)
    line = "x" + char * (3 * runner.MAX_LINE // len(char.encode()))
    runner._emit(writer, "stdout", line.encode())
    pieces = [text for _, _, _, text in writer.pending]
    assert len(pieces) > 3 and "\ufffd" not in "".join(pieces)  # before: one (or two) at each cut
    assert "".join(pieces) == line and all(len(piece.encode()) <= runner.MAX_LINE for piece in pieces)
