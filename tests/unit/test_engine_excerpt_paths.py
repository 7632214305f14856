"""The stderr excerpt a request's error ends with names a traceback's files as the worker's own handler does
(services/engine/runtimes.py `shown_file`), whoever wrote the traceback: f4c57130 rewrote only the traceback
users_code_failed writes, so one a thread of the user's code printed, one a crash left (faulthandler's) or one the
user's code printed itself still showed the data directory, the deployment's work folder and the installation in a
crash's, a time limit's or a failed load's error (docs/security.md)."""

from __future__ import annotations

from types import SimpleNamespace

from services.engine.sandboxed import EXCERPT, SandboxedRuntime

WORK = "/srv/data/.railyard/engine-work/fraud-4/92dc8035-0/abc.byop"
THREADS = (
    'Exception in thread Thread-1 (work):\nTraceback (most recent call last):\n'
    '  File "/usr/lib/python3.11/threading.py", line 1045, in _bootstrap_inner\n    self.run()\n'
    f'  File "{WORK}/backend/model.py", line 12, in work\n    raise ValueError("no")\nValueError: no\n'
    'Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n'
    '  File "/opt/venv/lib/python3.11/site-packages/sklearn/base.py", line 3 in predict\n')


def excerpt(stderr: str, since: int = 0) -> str:
    return SandboxedRuntime._with_excerpt(SimpleNamespace(stderr=bytearray(stderr.encode())), "the model crashed",
                                        since)


def test_a_traceback_the_worker_did_not_write_shows_no_host_path():
    said = excerpt(THREADS)
    assert "/srv/" not in said and "/usr/lib" not in said and "/opt/venv" not in said, said
    assert 'File "backend/model.py", line 12, in work' in said, said
    assert 'File "threading.py", line 1045' in said and 'File "sklearn/base.py", line 3 in predict' in said, said
    assert said.startswith("the model crashed; its stderr ends with: Exception in thread"), said


def test_a_path_begun_before_the_excerpt_is_named_as_a_file_too():
    frame = f'  File "{WORK}/m.py", line 3, in f\n'
    rest = frame[frame.index("/srv/") + 10:]  # the excerpt's 600 characters begin inside the host's path
    said = excerpt("Traceback (most recent call last):\n" + frame + "y" * (EXCERPT - len(rest)))
    assert "engine-work" not in said and "abc.byop" not in said, said
    assert 'File "m.py", line 3, in f' in said, said


def test_what_came_before_the_request_is_left_out_and_nothing_said_is_no_excerpt():
    assert excerpt("old\n", since=4) == "the model crashed"
    assert excerpt("  \n") == "the model crashed"
