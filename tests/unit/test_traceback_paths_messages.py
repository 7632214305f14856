"""A path in an exception's own message, where Python writes one (an OSError's file, an ImportError's module file),
is named as a traceback's files are (shared/traceback_paths.py): in a request's error, which quotes the exception's
text, in the traceback's last line of the worker's stderr and in a task run's log lines. f4c57130 and its followers
renamed the frames only, and a model opening a file it did not ship answered "it raised FileNotFoundError: [Errno 2]
No such file or directory: '<data dir>/engine-work/<deployment>/<replica>/<sha>.byop/...'" to any caller."""

from __future__ import annotations

import pyarrow as pa
import pytest

from services.engine.runtimes import PythonStepRuntime
from services.task_scheduler import runner
from shared.errors import InvalidRequest
from shared.traceback_paths import named_files


def _failed_step(tmp_path, body: str, capsys) -> tuple[str, str]:
    script = tmp_path / "cache" / "step.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"def wallaroo_json(data):\n    {body}\n")
    step = PythonStepRuntime(script)
    step.load()
    capsys.readouterr()
    with pytest.raises(InvalidRequest) as failed:
        step.predict(pa.table({"x": [1]}))
    return failed.value.msg, capsys.readouterr().err


def test_an_os_errors_file_in_a_requests_error_and_its_traceback_shows_no_host_path(tmp_path, capsys):
    missing = tmp_path / "engine-work" / "d-1" / "r-0" / "abc.byop" / "backend" / "missing.bin"
    said, written = _failed_step(tmp_path, f"open({str(missing)!r})", capsys)
    for text in (said, written):
        assert str(tmp_path) not in text, text  # before: the whole path, in both
        assert "No such file or directory: 'backend/missing.bin'" in text, text
    assert said.startswith("the Python step failed: it raised FileNotFoundError: [Errno 2]"), said


def test_an_import_errors_module_file_shows_no_host_path(tmp_path, capsys):
    said, written = _failed_step(tmp_path, "from pandas import nothing_here", capsys)
    for text in (said, written):
        assert "site-packages" not in text and "/pandas/" not in text, text
        assert "cannot import name 'nothing_here' from 'pandas' (pandas/__init__.py)" in text, text


def test_a_task_runs_error_line_names_its_file_from_the_orchestration():
    async def sink(lines):
        pass

    writer = runner.LogWriter(sink=sink, max_bytes=100_000, roots=("/srv/data/.railyard/tasks/runs/r1",))
    writer.add("stderr", False, "FileNotFoundError: [Errno 2] No such file or directory: "
                                "'/srv/data/.railyard/tasks/runs/r1/data/in.csv'")
    writer.add("stderr", False, "OSError: [Errno 18] Invalid cross-device link: '/srv/data/.railyard/tasks/runs/r1/a'"
                                " -> '/srv/data/.railyard/task-envs/ab/lib/python3.11/site-packages/p/b'")
    assert [line for _, _, _, line in writer.pending] == [
        "FileNotFoundError: [Errno 2] No such file or directory: 'data/in.csv'",
        "OSError: [Errno 18] Invalid cross-device link: 'a' -> 'p/b'"]


@pytest.mark.parametrize("text", ["wrote '/data/out/model.onnx' (3 MB)", "[Errno 2] as a word: no file named",
                                  "cannot import name 'x' from 'y' (unknown location)", "Load model from /srv/m.onnx"])
def test_other_text_is_kept_as_printed(text):
    assert named_files(text) == text


def test_a_circular_imports_module_file_shows_no_host_path():
    """Python's other wording of the ImportError (a module half-initialised when it is imported from) is named too."""
    text = ("ImportError: cannot import name 'x' from partially initialized module 'pkg' (most likely due to a circular"
            " import) (/srv/data/engine-work/d-1/r-0/abc.byop/pkg/__init__.py)")
    assert named_files(text) == text.replace("/srv/data/engine-work/d-1/r-0/abc.byop/", "")


@pytest.mark.parametrize("piece", ["[Errno 1] ", "[Errno 1] a: ", "cannot import name 'x' from (",
                                   "cannot import name 'x' from 'y' ("])
def test_a_long_line_of_message_starts_is_named_in_linear_time(piece):
    """Each start of an OSError's or ImportError's message searched to the line's end for its file: quadratic in the
    line. A task run printing 16-KiB lines of '[Errno 1] ' held the task scheduler's event loop ~0.5 s a line (its log
    pump names each line's files), a tenant's exception text of 1 MB of them the engine's worker for some 20 minutes:
    these 256 KiB took 15-68 s of CPU each at load 10 (the two OSError cases the longest), now 0.1 s or less."""
    import time

    text = (piece * (256 * 1024 // len(piece) + 1))[:256 * 1024]
    started = time.process_time()
    assert named_files(text) == text
    assert time.process_time() - started < 2.0
